"""Rectified-flow conventions, written once (as in SD3; see docs/method.md).

``x_t = (1 - t) x0 + t eps`` with t in [0, 1] and t = 1 pure noise; the network predicts the velocity
``v = eps - x0``; so ``x0 = x_t - t v``. Times are float tensors broadcast over the batch dimension.
Model-specific scales (diffusers' ``timestep = 1000 t``, VAE factors) live in the adapters, never here.
"""

from __future__ import annotations

import functools

import torch

# The student grids (``student.grid``): "uniform" is {1, (n-1)/n, ..., 1/n} then shifted (the paper's, docs/method.md);
# "diffusers" is what stock FlowMatchEulerDiscreteScheduler samples for n steps with nothing passed (as
# SD3.5-Large-Turbo trains on its scheduler's own default grid), so that an exported pipeline's default call is the
# trained grid for any shift. The two are the same for shift 1 and for 1 and 2 steps.
GRIDS = ("uniform", "diffusers")


def _bcast(t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    return t.reshape(-1, *([1] * (x.ndim - 1))) if t.ndim else t


def add_noise(x0: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
    """``x_t = (1 - t) x0 + t noise``."""
    t = _bcast(t, x0)
    return (1 - t) * x0 + t * noise


def velocity(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The regression target ``v = noise - x0``."""
    return noise - x0


def x0_from_v(xt: torch.Tensor, v: torch.Tensor, t) -> torch.Tensor:
    """``x0 = x_t - t v``."""
    return xt - _bcast(t, xt) * v


def noise_from_v(xt: torch.Tensor, v: torch.Tensor, t) -> torch.Tensor:
    """``eps = x_t + (1 - t) v``."""
    return xt + (1 - _bcast(t, xt)) * v


def logit_normal(n: int, m: float | torch.Tensor = 0.0, s: float = 1.0, generator: torch.Generator | None = None,
                 device=None) -> torch.Tensor:
    """``t = sigmoid(m + s * N(0, 1))``: SD3's training density, and LADD's discriminator noise density (``m`` a
    number or one centre per sample, ``[n]``)."""
    return torch.sigmoid(m + s * torch.randn(n, generator=generator, device=device))


def shift_times(t: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3's time shift ``shift t / (1 + (shift - 1) t)`` (diffusers' ``FlowMatchEulerDiscreteScheduler``, static
    shift): more of the grid at high noise for shift > 1; keeps 0 and 1; shift 1 is the identity."""
    return shift * t / (1 + (shift - 1) * t)


def euler_grid(steps: int, shift: float = 1.0) -> torch.Tensor:
    """``steps + 1`` times from 1 down to 0 (uniform, then shifted)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return shift_times(torch.linspace(1.0, 0.0, steps + 1), shift)


def student_grid(steps: int, shift: float = 1.0, grid: str = "uniform", start: float = 1.0) -> torch.Tensor:
    """The student's ``steps`` input times. ``uniform``: ``{1, 1 - 1/n, ..., 1/n}`` then shifted, e.g. 4 steps:
    ``[1, .75, .5, .25]``, shift 3 ``[1, .9, .75, .5]``; ``diffusers``: the stock scheduler's default
    (``diffusers_grid``), e.g. 4 steps shift 3 ``[1, .928, .799, .5]``. ``start`` replaces the first time: the
    time at which the student reads its starting noise (``student.start_time``; the input there is pure noise
    whatever the time, read at ``start < 1`` as a noised latent, as SiD's generator does)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if grid == "diffusers":
        times = torch.tensor(diffusers_grid(steps, float(shift)))
    elif grid == "uniform":
        times = shift_times(torch.arange(steps, 0, -1, dtype=torch.float32) / steps, shift)
    else:
        raise ValueError(f"grid must be one of {GRIDS}, got {grid!r}")
    if start != 1.0:
        if not (times[1] if steps > 1 else 0.0) < start <= 1:
            raise ValueError(f"start must lie in ({float(times[1]) if steps > 1 else 0.0:g}, 1], above the grid's "
                             f"second time, got {start}")
        times[0] = start
    return times


def grid_terminal(steps: int, shift: float = 1.0) -> float | None:
    """The last time of the uniform student grid, ``shift(1/n)``: the ``shift_terminal`` of a scheduler whose default
    ``steps``-step call ends where the student grid does (None for one step: the grid is ``[1]``)."""
    return None if steps == 1 else float(shift_times(torch.tensor(1.0 / steps), shift))


@functools.lru_cache(maxsize=None)
def diffusers_grid(steps: int, shift: float = 1.0) -> tuple[float, ...]:
    """The sigmas ``FlowMatchEulerDiscreteScheduler(shift=shift, shift_terminal=grid_terminal(steps, shift))``
    samples for ``set_timesteps(steps)`` with nothing else passed (final 0 dropped): ``linspace(1, 1/1000, n)``,
    shifted, stretched to end at ``shift(1/n)``. Taken from diffusers itself, so it is whatever its version does."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift, shift_terminal=grid_terminal(steps, shift))
    scheduler.set_timesteps(steps)
    return tuple(float(t) for t in scheduler.sigmas[:-1])


def sampling_times(sampler: str, steps: int, shift: float = 1.0, grid: str = "uniform",
                   start: float = 1.0) -> torch.Tensor:
    """The ``steps + 1`` times a sampler (ladd.sampling) runs over, ending at 0: the Euler grid for ``euler``, the
    student grid plus 0 for ``renoise``; both shifted by ``shift``. ``grid="diffusers"``: the stock scheduler's
    default times (``student_grid``) plus 0, for either sampler. ``start``: the first time (``student_grid``)."""
    if sampler == "euler" and grid == "uniform" and start == 1.0:
        return euler_grid(steps, shift)
    return torch.cat([student_grid(steps, shift, grid, start), torch.zeros(1)])
