"""The random draws of one training micro-batch, the same at any number of processes.

A global batch of ``B`` samples split over ``W`` processes gives each process ``B / W`` of them. If every process
drew its own noise from its own seed, a run on 2 GPUs would train on other numbers than the same run on 1 GPU,
and the two could not be compared. Instead every process seeds the same generator, draws the numbers of the
whole global micro-batch, and keeps the rows of its own slice (rank ``r`` keeps rows ``r B/W .. (r+1) B/W``, as
``ShardDataset.batch`` does for the sample indices). The extra draws cost nothing next to a model forward.
With one process the draws are exactly those of a plain ``torch.Generator``.
"""

from __future__ import annotations

import torch

from ladd import flow


class Draws:
    def __init__(self, generator: torch.Generator | None = None, rank: int = 0, world: int = 1):
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in [0, {world})")
        self.generator, self.rank, self.world = generator, rank, world

    def _device(self, fallback=None):
        return self.generator.device if self.generator is not None else fallback

    def _mine(self, t: torch.Tensor) -> torch.Tensor:
        n = t.shape[0] // self.world
        return t[self.rank * n:(self.rank + 1) * n]

    def randn(self, like: torch.Tensor) -> torch.Tensor:
        """Standard normal noise shaped like ``like`` (this process's rows), on its device and dtype."""
        shape = (like.shape[0] * self.world, *like.shape[1:])
        noise = torch.randn(shape, generator=self.generator, device=self._device(like.device))
        return self._mine(noise).to(like)

    def choice(self, probs: torch.Tensor, n: int) -> torch.Tensor:
        """``n`` indices drawn with replacement with probabilities ``probs``."""
        probs = probs.to(self._device(probs.device), torch.float32)
        return self._mine(torch.multinomial(probs, n * self.world, replacement=True, generator=self.generator))

    def logit_normal(self, n: int, m: float | list[float], s: float, device=None) -> torch.Tensor:
        """``n`` times ``sigmoid(m + s N(0, 1))``; with a list of centres ``m``, each sample's centre is drawn from
        it with equal probability (a mixture)."""
        device = self._device(device)
        if isinstance(m, (list, tuple)):
            pick = torch.randint(len(m), (n * self.world,), generator=self.generator, device=device)
            m = torch.tensor(m, dtype=torch.float32, device=device)[pick]
        return self._mine(flow.logit_normal(n * self.world, m, s, generator=self.generator, device=device))

    def uniform(self, n: int, low: float, high: float, device=None) -> torch.Tensor:
        """``n`` numbers from ``U(low, high)``."""
        u = torch.rand(n * self.world, generator=self.generator, device=self._device(device))
        return low + (high - low) * self._mine(u)

    def integer(self, low: int, high: int) -> int:
        """One integer in ``[low, high)``, the same on every process."""
        return int(torch.randint(low, high, (1,), generator=self.generator, device=self._device()))


def as_draws(generator: torch.Generator | Draws | None) -> Draws:
    """``Draws`` from a plain generator (one process) or ``None`` (torch's global RNG)."""
    return generator if isinstance(generator, Draws) else Draws(generator)
