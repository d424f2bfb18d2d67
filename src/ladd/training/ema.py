"""Exponential moving average of a model's parameters (used for the nano teacher and the LADD student)."""

from __future__ import annotations

import copy

import torch


WARMUP = 9  # the decay at update u (from 1) is capped at u / (u + WARMUP): early averages forget the init


class EMA(torch.nn.Module):
    """Keeps ``shadow = decay * shadow + (1 - decay) * param`` with ``decay`` warmed up as
    ``min(decay, (1 + n) / (1 + warmup + n))`` so early averages are not dominated by the random init: while the
    cap holds, the shadow averages roughly the last ``n / warmup`` updates (a smaller ``warmup``, a longer
    average; 0, no warm-up). Only parameters that require grad in the live model are averaged: frozen ones stay
    equal to their copy in the shadow. (For a LoRA student A and B are averaged apart, which is not the average of
    the product B A.)"""

    def __init__(self, model: torch.nn.Module, decay: float = 0.999, warmup: float = WARMUP):
        super().__init__()
        self.decay, self.warmup = decay, warmup
        self.shadow = copy.deepcopy(model).eval().requires_grad_(False)
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        # the warm-up weight is computed on the counter's device: no host sync inside a training iteration
        n = self.updates.float()
        weight = 1 - torch.clamp((1 + n) / (1 + self.warmup + n), max=self.decay)  # = warmed_decay(.., n + 1, ..)
        weights = {}  # one cast per parameter dtype, not per parameter
        for s, p in zip(self.shadow.parameters(), model.parameters()):
            if p.requires_grad:  # frozen ones (a LoRA student's base weights) never move: nothing to average
                s.lerp_(p.detach(), weights.setdefault(s.dtype, weight.to(s.dtype)))
        for s, b in zip(self.shadow.buffers(), model.buffers()):
            s.copy_(b)
        self.updates += 1


def ema_name(decay: float, warmup: float) -> str:
    """The checkpoint name of an extra EMA (``train.extra_emas``), e.g. ``ema-0.999-3``."""
    return f"ema-{decay:g}-{warmup:g}"


def warmed_decay(decay: float, updates: int, warmup: float = WARMUP) -> float:
    """The decay :class:`EMA` applies at its ``updates``-th update (counting from 1): the warm-up caps it at
    ``updates / (updates + warmup)``, so a decay ``d`` takes effect only after ``updates_to_reach(d)`` updates."""
    return min(decay, updates / (updates + warmup))


def updates_to_reach(decay: float, warmup: float = WARMUP) -> int:
    """The first update at which the warm-up no longer caps ``decay`` (warm-up 9: 0.995 at 1,791; 0.999 at 8,991)."""
    n = max(1, int(warmup * decay / (1 - decay)))  # n / (n + warmup) >= d  <=>  n >= warmup d / (1 - d)
    while warmed_decay(decay, n, warmup) < decay:  # the float estimate may fall one short
        n += 1
    return n
