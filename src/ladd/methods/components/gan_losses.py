"""LADD's adversarial losses as pure functions of the heads' logit maps (docs/method.md, step 7).

``logits`` arguments are lists with one tensor per head, each ``[B, 1, h, w]`` (any shape with the batch first
works). Every loss is applied to each head's logits *per position*, averaged over batch and positions, then
summed over heads. Applying the hinge to the sum of the heads' logits instead lets one confident head mask the
others, and a previous attempt's discriminator never separated real from fake that way.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

Logits = list[torch.Tensor]


def _per_head(fn: Callable[[torch.Tensor], torch.Tensor], logits: Logits) -> torch.Tensor:
    """``sum_k mean(fn(logits[k]))`` (0 for an empty list), in float32."""
    total = torch.zeros(())
    for lg in logits:
        total = total.to(lg.device) + fn(lg.float()).mean()
    return total


def d_hinge(real_logits: Logits, fake_logits: Logits) -> torch.Tensor:
    """``sum_k mean(relu(1 - D_k(real))) + mean(relu(1 + D_k(fake)))``, a scalar."""
    return _per_head(lambda x: F.relu(1 - x), real_logits) + _per_head(lambda x: F.relu(1 + x), fake_logits)


def g_hinge(fake_logits: Logits) -> torch.Tensor:
    """``-sum_k mean(D_k(fake))``, a scalar."""
    return -_per_head(lambda x: x, fake_logits)


def d_non_saturating(real_logits: Logits, fake_logits: Logits) -> torch.Tensor:
    """``sum_k mean(softplus(-D_k(real))) + mean(softplus(D_k(fake)))``: the logistic GAN loss."""
    return _per_head(lambda x: F.softplus(-x), real_logits) + _per_head(F.softplus, fake_logits)


def g_non_saturating(fake_logits: Logits) -> torch.Tensor:
    """``sum_k mean(softplus(-D_k(fake)))``."""
    return _per_head(lambda x: F.softplus(-x), fake_logits)


D_LOSSES = {"hinge": d_hinge, "non_saturating": d_non_saturating}
G_LOSSES = {"hinge": g_hinge, "non_saturating": g_non_saturating}


def d_loss(kind: str, real_logits: Logits, fake_logits: Logits) -> torch.Tensor:
    """The discriminator loss ``kind`` ("hinge" or "non_saturating"); pass ``[]`` for a side to drop it."""
    return D_LOSSES[kind](real_logits, fake_logits)


def g_loss(kind: str, fake_logits: Logits) -> torch.Tensor:
    return G_LOSSES[kind](fake_logits)


def r1_penalty(real_logits: Logits, real_inputs: list[torch.Tensor]) -> torch.Tensor:
    """R1 (Mescheder et al. 2018): ``mean_b sum_k ||d s_b / d real_inputs[k][b]||^2`` with the per-sample score
    ``s_b = sum_k mean_positions D_k(real)_b`` (the quantity the losses act on).

    ``real_inputs`` are the heads' inputs (teacher features ``[B, C, h, w]``) with ``requires_grad=True``, that
    ``real_logits`` were computed from. Differentiable (``create_graph``), so it can be added to the D loss."""
    score = sum(lg.float().flatten(1).mean(1) for lg in real_logits)  # [B]
    grads = torch.autograd.grad(score.sum(), real_inputs, create_graph=True)
    return sum(g.float().pow(2).flatten(1).sum(1) for g in grads).mean()


def sample_scores(logits: Logits) -> torch.Tensor:
    """Per-sample score ``[B]``: the mean over heads of each head's mean logit."""
    return torch.stack([lg.detach().float().flatten(1).mean(1) for lg in logits]).mean(0)


def disc_accuracy(real_logits: Logits, fake_logits: Logits) -> torch.Tensor:
    """Fraction of samples the discriminator gets right (real score > 0, fake score < 0), a scalar in [0, 1];
    0.5 means it cannot tell them apart. For the progress bar, not for gradients."""
    right = torch.cat([sample_scores(real_logits) > 0, sample_scores(fake_logits) < 0])
    return right.float().mean()
