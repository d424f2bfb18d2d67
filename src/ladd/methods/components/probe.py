"""Discriminator probe: train the heads alone on the frozen teacher to tell two sets of latents apart.

A discriminator that cannot separate teacher latents from visibly degraded copies cannot teach a student, so
this is the sanity check to run before a long LADD run (tests/test_distill_probe.py, benchmarks/disc_probe.py):

    real = (latents, cond)                      e.g. teacher samples and their prompts
    fake = (blur_latents(latents), cond)        or (latents, shuffled prompts): text alignment
    result = train_probe(teacher, disc, real, fake, m=-1.0, s=1.0, steps=500)

Both sides are re-noised with ``t_hat ~ LogitNormal(m, s)`` exactly as in the D step (ladd.methods.ladd), the
heads are trained with the D step's loss, and the accuracy is measured on held-out pairs (the last quarter of
the latents), each re-noised with fresh noise.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ladd.methods.components import gan_losses as losses
from ladd.methods.components.student import renoise, shuffled_prompts  # noqa: F401  (re-exported: the probe's second task)
from ladd.models.text_encoder import TextEmbeddings

Side = tuple[torch.Tensor, TextEmbeddings]  # latents [N, C, h, w] and their text embeddings (N prompts)


def blur_latents(x: torch.Tensor, size: int = 3) -> torch.Tensor:
    """``size`` x ``size`` box blur of latents ``[B, C, h, w]`` (borders average the pixels inside)."""
    return F.avg_pool2d(x, size, stride=1, padding=size // 2, count_include_pad=False)


@dataclass
class ProbeResult:
    accuracy: float                       # held-out accuracy at the end (or when ``target`` was reached)
    steps: int                            # training steps done
    history: list[tuple[int, float]] = field(default_factory=list)  # (step, held-out accuracy)


def _scores(teacher, disc, x: torch.Tensor, cond: TextEmbeddings, m: float, s: float, gen: torch.Generator):
    noisy, t_hat = renoise(x, m, s, gen)
    feats = teacher.features(noisy, t_hat, cond, disc.blocks)
    return disc(feats, t_hat, cond.pooled)


@torch.no_grad()
def probe_accuracy(teacher, disc, real: Side, fake: Side, m: float, s: float, gen: torch.Generator,
                   batch_size: int = 64) -> float:
    """Fraction of ``real`` scored > 0 and of ``fake`` scored < 0 (losses.disc_accuracy), in batches."""
    right, total = 0.0, 0
    for i in range(0, len(real[0]), batch_size):
        r = _scores(teacher, disc, real[0][i:i + batch_size], real[1][i:i + batch_size], m, s, gen)
        f = _scores(teacher, disc, fake[0][i:i + batch_size], fake[1][i:i + batch_size], m, s, gen)
        n = 2 * r[0].shape[0]
        right += float(losses.disc_accuracy(r, f)) * n
        total += n
    return right / total


def train_probe(teacher, disc, real: Side, fake: Side, *, m: float = -1.0, s: float = 1.0, steps: int = 500,
                batch_size: int = 16, lr: float = 2e-4, loss: str = "hinge", eval_every: int = 50,
                target: float | None = None, seed: int = 0) -> ProbeResult:
    """Train ``disc`` (the heads; ``teacher`` is frozen) on ``real`` vs ``fake`` for ``steps`` steps of
    ``batch_size`` pairs; stops early once the held-out accuracy reaches ``target``. The last quarter of the
    samples (at least one) is held out for the accuracy."""
    n = len(real[0])
    if len(fake[0]) != n or n < 2:
        raise ValueError(f"real and fake need the same number (>= 2) of latents, got {n} and {len(fake[0])}")
    n_eval = max(1, n // 4)
    split = lambda side, sl: (side[0][sl], side[1][sl])  # noqa: E731
    train_real, train_fake = split(real, slice(0, n - n_eval)), split(fake, slice(0, n - n_eval))
    eval_real, eval_fake = split(real, slice(n - n_eval, n)), split(fake, slice(n - n_eval, n))
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(disc.parameters(), lr=lr, betas=(0.0, 0.99), weight_decay=0.0)
    history: list[tuple[int, float]] = []

    def evaluate(step: int) -> float:
        disc.eval()
        acc = probe_accuracy(teacher, disc, eval_real, eval_fake, m, s, torch.Generator().manual_seed(seed + 1))
        disc.train()
        history.append((step, acc))
        return acc

    step = 0
    for step in range(1, steps + 1):
        idx = torch.randint(0, n - n_eval, (batch_size,), generator=gen)
        with torch.no_grad():  # the heads learn; the teacher is only a feature network here
            r_noisy, r_t = renoise(train_real[0][idx], m, s, gen)
            f_noisy, f_t = renoise(train_fake[0][idx], m, s, gen)
            feats = teacher.features(torch.cat([r_noisy, f_noisy]), torch.cat([r_t, f_t]),
                                     TextEmbeddings.cat([train_real[1][idx], train_fake[1][idx]]), disc.blocks)
        pooled = torch.cat([train_real[1].pooled[idx], train_fake[1].pooled[idx]])
        logits = disc(feats, torch.cat([r_t, f_t]), pooled)
        real_logits = [lg[:batch_size] for lg in logits]
        fake_logits = [lg[batch_size:] for lg in logits]
        d = losses.d_loss(loss, real_logits, fake_logits)
        opt.zero_grad(set_to_none=True)
        d.backward()
        opt.step()
        if step % eval_every == 0 and evaluate(step) >= (target if target is not None else 2.0):
            return ProbeResult(history[-1][1], step, history)
    if not history or history[-1][0] != step:
        evaluate(step)
    return ProbeResult(history[-1][1], step, history)
