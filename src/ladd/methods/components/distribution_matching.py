"""Distribution matching (DMD / DMD2, Yin et al. 2023-2024, arXiv 2405.14867) as pure functions: the gradient that
moves the student's samples from where a *fake score* sees them (a trainable copy of the teacher that tracks the
student's outputs) towards where the guided teacher, the *real score*, does; and the fake score's own
flow-matching loss on the student's samples. Used by DMD2 (ladd.methods.dmd2) and by LADD's optional
distribution-matching term (ladd.methods.ladd, ``ladd.loss.dm_weight``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ladd import flow
from ladd.models.text_encoder import TextEmbeddings


def dm_loss(x0_g: torch.Tensor, x0_real: torch.Tensor, x0_fake: torch.Tensor) -> torch.Tensor:
    """``0.5 || x0_g - sg(x0_g - g) ||^2`` with ``g = (x0_fake - x0_real) / mean|x0_g - x0_real|`` per sample
    (DMD2's normalisation): its gradient w.r.t. ``x0_g`` is ``g`` (over the number of elements). ``x0_real`` and
    ``x0_fake`` are the real and fake scores' x0 predictions at the same noised copy of ``x0_g``, no grad."""
    scale = (x0_g.detach() - x0_real).abs().mean(dim=tuple(range(1, x0_g.dim())), keepdim=True)
    grad = (x0_fake - x0_real) / scale.clamp(min=1e-8)
    return 0.5 * F.mse_loss(x0_g.float(), (x0_g - grad).detach().float())


def fake_score_loss(fake_score, x0_g: torch.Tensor, eps: torch.Tensor, t: torch.Tensor,
                    cond: TextEmbeddings) -> torch.Tensor:
    """The fake score's flow-matching loss on the student's samples ``x0_g`` (detached by the caller):
    ``|| F((1 - t) x0_g + t eps, t) - (eps - x0_g) ||^2``."""
    x_t = flow.add_noise(x0_g, eps, t)
    return F.mse_loss(fake_score(x_t, t, cond).float(), flow.velocity(x0_g, eps).float())
