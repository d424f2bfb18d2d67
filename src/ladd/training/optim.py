"""Optimizers by name: one AdamW per name over the modules a method lists for it, each with its learning-rate
schedule (diffusers' ``get_scheduler``: constant, or linear warm-up then constant / linear / cosine decay)."""

from __future__ import annotations

import torch

from ladd.training.config import OptimizerConfig


def build_optimizer(modules: list[torch.nn.Module], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """AdamW over the parameters of ``modules`` that require grad (a LoRA student: its adapters)."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


def build_schedule(opt: torch.optim.Optimizer, cfg: OptimizerConfig, total_steps: int):
    """The learning-rate schedule of ``opt``, stepped once per optimizer step. "constant" multiplies the
    learning rate by exactly 1, so a run without a schedule computes what it did before schedules existed."""
    from diffusers.optimization import get_scheduler

    return get_scheduler(cfg.schedule, opt, num_warmup_steps=cfg.warmup_steps, num_training_steps=total_steps)
