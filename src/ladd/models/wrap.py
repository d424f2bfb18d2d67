"""What a model looks like inside the wrappers of distributed training and compilation."""

from __future__ import annotations

import torch


def unwrap(model):
    """The module inside DDP / FSDP / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None)
        inner = getattr(model, "_orig_mod", None) if inner is None else inner
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def without_ddp(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` without its DDP / compile wrappers, but an FSDP-sharded one as it is: its wrapper is what
    gathers the shards (for a checkpoint, or a forward that takes no part in the gradient sync)."""
    return module if is_sharded(module) else unwrap(module)


def is_sharded(module: torch.nn.Module) -> bool:
    """Whether ``module`` holds FSDP-sharded parameters (its full state must then be gathered collectively)."""
    from torch.distributed import fsdp

    kinds = tuple(k for k in (getattr(fsdp, "FullyShardedDataParallel", None), getattr(fsdp, "FSDPModule", None)) if k)
    return any(isinstance(m, kinds) for m in module.modules())
