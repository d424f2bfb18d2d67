"""Samplers, k-diffusion style: plain functions with one signature

    sampler(model, noise, times, cond, uncond=None, guidance=1.0, generator=None) -> x0

``model`` has ``velocity(x, t, cond)``; ``times`` runs from 1 down (``times[-1]`` is the end time, usually 0);
``guidance`` is the classifier-free guidance scale, 1 meaning no guidance (one network evaluation per step).
"""

from __future__ import annotations

import torch

from ladd import flow
from ladd.models.text_encoder import TextEmbeddings


def randn_like(x: torch.Tensor, generator=None) -> torch.Tensor:
    """Gaussian noise shaped like ``x``; ``generator`` may be a list with one generator per sample, so that
    sample k gets the same noise at any batch size."""
    if isinstance(generator, (list, tuple)):
        return torch.stack([torch.randn(x.shape[1:], generator=g, dtype=x.dtype) for g in generator]).to(x.device)
    return torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)


def guided_velocity(model, x: torch.Tensor, t: torch.Tensor, cond: TextEmbeddings,
                    uncond: TextEmbeddings | None, guidance: float) -> torch.Tensor:
    """CFG velocity ``v_u + s (v_c - v_u)``, cond and uncond in one batch; plain ``v_c`` when guidance is 1."""
    t = t.expand(x.shape[0])
    if guidance == 1.0 or uncond is None:
        return model.velocity(x, t, cond)
    both = TextEmbeddings.cat([cond, uncond.to(cond.tokens.device)])
    v_c, v_u = model.velocity(torch.cat([x, x]), torch.cat([t, t]), both).chunk(2)
    return v_u + guidance * (v_c - v_u)


def step(sampler: str, x: torch.Tensor, v: torch.Tensor, t, t_next, noise: torch.Tensor | None = None):
    """One step of ``sampler`` from time ``t`` to ``t_next`` given the velocity ``v`` at ``x``: ``euler`` moves
    along it (``x + (t_next - t) v``, i.e. ``(1 - t_next) x0 + t_next eps`` with the predicted ``x0`` and ``eps``:
    DDIM); ``renoise`` keeps the predicted ``x0`` and draws the noise afresh (``noise``):
    ``(1 - t_next) x0 + t_next noise``. Both give ``x0`` at ``t_next = 0``."""
    if sampler == "euler":
        return x + (t_next - t) * v
    if sampler == "renoise":
        return flow.add_noise(flow.x0_from_v(x, v, t), noise, t_next)
    raise ValueError(f"unknown sampler {sampler!r}; choose one of {sorted(SAMPLERS)}")


@torch.no_grad()
def euler(model, noise, times, cond, uncond=None, guidance=1.0, generator=None):
    """Deterministic Euler on the probability-flow ODE: ``x <- x + (t_next - t) v`` (diffusers'
    ``FlowMatchEulerDiscreteScheduler.step``). Returns the final latent."""
    x = noise
    times = times.to(noise.device, noise.dtype)
    for t, t_next in zip(times[:-1], times[1:]):
        x = step("euler", x, guided_velocity(model, x, t, cond, uncond, guidance), t, t_next)
    return x


@torch.no_grad()
def renoise(model, noise, times, cond, uncond=None, guidance=1.0, generator=None):
    """LADD's few-step sampler: predict ``x0`` at each time, re-noise it with fresh noise to the next time, and
    return the last ``x0`` prediction (docs/method.md, Inference)."""
    x = noise
    times = times.to(noise.device, noise.dtype)
    x0 = x
    for k, t in enumerate(times[:-1]):
        v = guided_velocity(model, x, t, cond, uncond, guidance)
        x0 = flow.x0_from_v(x, v, t)
        t_next = times[k + 1]
        if t_next > 0:
            x = flow.add_noise(x0, randn_like(x, generator), t_next)  # step("renoise", ...) with x0 at hand
    return x0


SAMPLERS = {"euler": euler, "renoise": renoise}


def get_sampler(name: str):
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}")
    return SAMPLERS[name]
