"""What the trainer exchanges with a method within one iteration (the interface is ladd.methods.base.Method;
these types live here so that the trainer needs nothing from ladd.methods)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class Update:
    """Phases whose losses are backpropagated (over every micro-batch) before ``optimizers`` step."""
    phases: tuple[str, ...]
    optimizers: tuple[str, ...]


@dataclass
class Context:
    """What the trainer hands a phase: the iteration, the micro-batch's random draws (ladd.draws.Draws), the
    EMA of the exported module (or None), and ``store``, shared by the phases of one micro-batch."""
    step: int
    draws: Any
    ema: Any = None
    store: dict = field(default_factory=dict)


@dataclass
class PhaseOut:
    loss: torch.Tensor                 # scalar to backpropagate; must be finite (the trainer stops otherwise)
    metrics: dict[str, torch.Tensor]   # detached scalars, averaged over micro-batches and logged
