"""A latent perceptual distance with the frozen teacher as its feature network (``ladd.loss.feature_weight``).

LPIPS (Zhang et al. 2018) without its learned channel weights: each block's feature map is normalised to unit
length over channels at every position, and the squared difference is summed over channels, averaged over
positions and then over blocks. Diffusion2GAN (Kang et al. 2024) regresses its one-step generator onto the
teacher's ODE pairs with such a distance in latent space (its E-LatentLPIPS, a network trained for it); here the
network is the teacher itself at the heads' noise level, whose block features the adversarial pass computes
anyway. docs/method.md, "One training iteration", item 7.
"""

from __future__ import annotations

import torch


def _unit(f: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """``f`` ``[B, C, ...]`` scaled to unit length over channels at every position."""
    return f / (f.pow(2).sum(1, keepdim=True) + eps).sqrt()


def feature_distance(feats: list[torch.Tensor], target: list[torch.Tensor]) -> torch.Tensor:
    """Per sample ``[B]``: the mean over blocks of the position-averaged squared distance between unit-normalised
    channel vectors (0 for equal features, at most 4). Differentiable w.r.t. ``feats``."""
    if len(feats) != len(target) or not feats:
        raise ValueError(f"feature_distance: got {len(feats)} blocks of features against {len(target)} of targets")
    per_block = [(_unit(f.float()) - _unit(g.float())).pow(2).sum(1).flatten(1).mean(1) for f, g in zip(feats, target)]
    return torch.stack(per_block).mean(0)
