"""Rectified-flow conventions, written once (as in SD3; see docs/method.md).

``x_t = (1 - t) x0 + t eps`` with t in [0, 1] and t = 1 pure noise; the network predicts the velocity
``v = eps - x0``; so ``x0 = x_t - t v``. Times are float tensors broadcast over the batch dimension.
Model-specific scales (diffusers' ``timestep = 1000 t``, VAE factors) live in the adapters, never here.
"""

from __future__ import annotations

import torch


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


def logit_normal(n: int, m: float = 0.0, s: float = 1.0, generator: torch.Generator | None = None,
                 device=None) -> torch.Tensor:
    """``t = sigmoid(m + s * N(0, 1))``: SD3's training density, and LADD's discriminator noise density."""
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


def student_grid(steps: int, shift: float = 1.0) -> torch.Tensor:
    """The student's ``steps`` input times ``{1, 1 - 1/n, ..., 1/n}``, e.g. 4 steps: ``[1, .75, .5, .25]``, then
    shifted (SD3.5-Large-Turbo: 4 steps, shift 3: ``[1, .9, .75, .5]``)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return shift_times(torch.arange(steps, 0, -1, dtype=torch.float32) / steps, shift)


def sampling_times(sampler: str, steps: int, shift: float = 1.0) -> torch.Tensor:
    """The ``steps + 1`` times a sampler (ladd.sampling) runs over, ending at 0: the Euler grid for ``euler``, the
    student grid plus 0 for ``renoise``; both shifted by ``shift``."""
    if sampler == "euler":
        return euler_grid(steps, shift)
    return torch.cat([student_grid(steps, shift), torch.zeros(1)])
