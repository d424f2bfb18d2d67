"""One LADD iteration as plain functions: the generator (student) step and the discriminator (heads) step.

shared/LADD.md, "One training iteration". Neither function calls ``backward`` or steps an optimizer: each returns
its loss and a dict of detached metrics, so an accelerate loop does ``accelerator.backward(loss)``, clipping and
``opt.step()`` itself, and a test can call them without a loop. Order per iteration:

    g = generator_step(student, teacher, unwrap(disc), x0, cond, cfg, gen, step)  # backward, step opt_g
    loss, m = discriminator_step(teacher, disc, x0, cond, g.fake, cfg, gen)      # backward, step opt_d

Speed: the G step's teacher forward on the re-noised fake (with grad, into the student) also serves the D step:
its features, detached, are the D step's fakes (``FakeBatch``), so the D step needs only one no-grad teacher
forward, for the real branch. Deviation from a textbook alternation: D judges fakes from the student *before*
this iteration's G update (one update stale); this saves a student and a teacher forward per iteration.
What remains is student forward+backward (= one teacher training step), teacher forward + input-backward on the
fake, a no-grad teacher forward on the real, and the heads: ~2.2x a teacher training step on the nano teacher
(CPU, batch 16), of which the heads are ~0.2x.

Randomness goes through an explicit ``torch.Generator`` or ``ladd.distill.draws.Draws`` (the loop's: the same
numbers at any process count; CPU generators work for any device: the draws are made on the generator's device
and moved). The teacher is always called through ``__call__`` (``teacher(x, t, cond, blocks)`` for features), so
an FSDP-wrapped teacher gathers its shards.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ladd import flow
from ladd.distill import losses
from ladd.distill.config import DistillConfig, OptimConfig, StudentConfig
from ladd.distill.lora import add_lora
from ladd.distill.draws import Draws, as_draws
from ladd.models.text_encoder import TextEmbeddings


def _unwrap(model):
    """The module inside DDP / FSDP / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None)
        inner = getattr(model, "_orig_mod", None) if inner is None else inner
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def _velocity(model, x: torch.Tensor, t: torch.Tensor, cond: TextEmbeddings) -> torch.Tensor:
    """The model's velocity through ``__call__``: a DDP/FSDP wrapper syncs gradients and gathers shards only
    there (and FSDP's wrapper forwards attribute lookups such as ``.velocity`` past itself)."""
    return model(x, t, cond)


@contextmanager
def _param_grads_off(module: torch.nn.Module):
    """Build graphs without parameter grads for ``module`` (grads still flow through it to its inputs).
    ``requires_grad`` is read when the graph is built, so restoring it before ``backward`` is safe."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(module.parameters(), flags):
            p.requires_grad_(f)


def _heads_for_generator(disc: torch.nn.Module) -> torch.nn.Module:
    """The heads as the generator step uses them: without their DDP wrapper (they take no part in that step's
    gradient sync); FSDP-sharded heads, whose flags cannot be switched inside a wrapped forward, as a gathered
    frozen copy (the heads are small: ~1M parameters)."""
    from ladd.training.checkpoint import is_sharded

    if not is_sharded(disc):
        return _unwrap(disc)
    from torch.distributed.fsdp import FullyShardedDataParallel

    with FullyShardedDataParallel.summon_full_params(disc, writeback=False):
        return copy.deepcopy(_unwrap(disc)).requires_grad_(False)


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """Frozen teacher: eval mode, no parameter grads (it is still differentiable w.r.t. its inputs)."""
    return model.eval().requires_grad_(False)


def init_student(teacher: torch.nn.Module, cfg: StudentConfig | None = None) -> torch.nn.Module:
    """The student G: a copy of the teacher's weights (LADD.md, Components), all trainable, or with
    ``cfg.lora_rank > 0`` frozen under trainable LoRA adapters (ladd.distill.lora)."""
    student = copy.deepcopy(_unwrap(teacher)).train().requires_grad_(True)
    if cfg is not None and cfg.lora_rank > 0:
        add_lora(student, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets)
    return student


def build_optimizers(student: torch.nn.Module, disc: torch.nn.Module, cfg: OptimConfig):
    """``(opt_g, opt_d)``: separate AdamW optimizers and learning rates for the student and the heads."""
    opt_g = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=cfg.lr_student,
                              betas=tuple(cfg.betas_student), weight_decay=cfg.weight_decay)
    opt_d = torch.optim.AdamW(disc.parameters(), lr=cfg.lr_heads, betas=tuple(cfg.betas_heads),
                              weight_decay=cfg.weight_decay)
    return opt_g, opt_d


def student_forward(student, x0: torch.Tensor, cond: TextEmbeddings, grid: torch.Tensor, probs: torch.Tensor,
                    generator: torch.Generator | Draws | None = None):
    """``(x0_hat [B, C, h, w], t_s [B])``: ``t_s ~ probs`` over ``grid`` (e.g. ``[1, .75, .5, .25]``),
    ``x_t = (1 - t_s) x0 + t_s eps``, ``x0_hat = x_t - t_s G(x_t, t_s)`` (LADD.md, step 2). At ``t_s = 1``
    ``x_t`` is pure noise; below, it is the noised *data* latent, as in training with the sampler's inputs."""
    draws = as_draws(generator)
    idx = draws.choice(probs, x0.shape[0])
    t_s = grid.to(idx.device)[idx].to(x0.device, x0.dtype)
    x_t = flow.add_noise(x0, draws.randn(x0), t_s)
    return flow.x0_from_v(x_t, _velocity(student, x_t, t_s, cond), t_s), t_s


def renoise(x: torch.Tensor, m: float, s: float, generator: torch.Generator | Draws | None = None,
            t: torch.Tensor | None = None):
    """``(x_noisy, t_hat)``: ``t_hat ~ LogitNormal(m, s)`` ``[B]`` (or the given ``t``),
    ``x_noisy = (1 - t_hat) x + t_hat eps`` (LADD.md, steps 3-4). Differentiable w.r.t. ``x``."""
    draws = as_draws(generator)
    if t is None:
        t = draws.logit_normal(x.shape[0], m, s, device=x.device)
    t = t.to(x.device, x.dtype)
    return flow.add_noise(x, draws.randn(x), t), t


@dataclass
class FakeBatch:
    """What the D step needs of the G step's fakes, all detached."""
    features: list[torch.Tensor]  # teacher features of the re-noised fake, one [B, C, h, w] per tapped block
    t_hat: torch.Tensor           # [B] the fakes' discriminator noise levels
    x0_hat: torch.Tensor          # [B, C, h, w] the student's predictions (previews, diagnostics)


@dataclass
class GeneratorOut:
    loss: torch.Tensor            # scalar, to backpropagate into the student
    metrics: dict[str, torch.Tensor]
    fake: FakeBatch


def _teacher_x0(teacher, x_noisy: torch.Tensor, t: torch.Tensor, cond: TextEmbeddings) -> torch.Tensor:
    """The teacher's x0 prediction, no grad (a regression target)."""
    with torch.no_grad():
        x_noisy = x_noisy.detach()
        return flow.x0_from_v(x_noisy, teacher(x_noisy, t, cond), t)


def _check_frozen(teacher) -> None:
    if any(p.requires_grad for p in teacher.parameters()):
        raise ValueError("the teacher has trainable parameters; pass ladd.distill.steps.freeze(teacher)")


def generator_step(student, teacher, disc, x0: torch.Tensor, cond: TextEmbeddings, cfg: DistillConfig,
                   generator: torch.Generator | Draws | None = None, step: int = 0) -> GeneratorOut:
    """The student's loss on data latents ``x0`` ``[B, C, h, w]`` with their prompts ``cond``.

    The teacher is frozen but not under ``no_grad``: the adversarial gradient flows through its features into
    ``x0_hat`` and the student. The heads' parameters get no gradient here (pass ``disc`` unwrapped from DDP,
    since it takes no part in this step's gradient sync). ``step`` selects the warm-up grid probabilities."""
    _check_frozen(teacher)
    disc = _heads_for_generator(disc)
    grid = flow.student_grid(cfg.student.steps, cfg.student.shift)
    probs = torch.tensor(cfg.student.probs_at(step))
    x0_hat, t_s = student_forward(student, x0, cond, grid, probs, generator)
    fake, t_hat = renoise(x0_hat, cfg.disc.noise_m, cfg.disc.noise_s, generator)
    feats = teacher(fake, t_hat, cond, disc.blocks)
    with _param_grads_off(disc):
        logits = disc(feats, t_hat, cond.pooled)
    adv = losses.g_loss(cfg.loss.kind, logits)
    loss, metrics = adv, {"g_adv": adv.detach()}
    if cfg.loss.distill_weight > 0:
        # ADD-style term, unweighted MSE at the same t_hat (ADD weights it by a c(t); an ablation knob at most).
        # Costs one more no-grad teacher forward; off by default (LADD.md: unnecessary with synthetic data).
        distill = F.mse_loss(x0_hat.float(), _teacher_x0(teacher, fake, t_hat, cond).float())
        loss = loss + cfg.loss.distill_weight * distill
        metrics["g_distill"] = distill.detach()
    metrics.update(g_loss=loss.detach(), t_s=t_s.float().mean(), t_hat_fake=t_hat.float().mean(),
                   g_fake_score=losses.sample_scores(logits).mean())
    out = FakeBatch([f.detach() for f in feats], t_hat.detach(), x0_hat.detach())
    return GeneratorOut(loss, metrics, out)


def shuffled_prompts(cond: TextEmbeddings, shift: int = 1) -> TextEmbeddings:
    """Prompts rolled by ``shift``: for 0 < shift < B every sample gets another sample's prompt."""
    return TextEmbeddings(cond.tokens.roll(shift, 0), cond.pooled.roll(shift, 0))


def _shuffled(cond: TextEmbeddings, generator: torch.Generator | Draws | None) -> TextEmbeddings:
    """Prompts rolled by a random shift in [1, B - 1] (within this process's micro-batch)."""
    b = len(cond)
    return shuffled_prompts(cond, as_draws(generator).integer(1, b) if b > 1 else 0)


def _real_features(teacher, real, t_real, cond, blocks, mis_cond):
    """No-grad teacher features of the real batch, and of the same noisy reals with misaligned prompts when
    ``mis_cond`` is given (one batched forward). Returns (real feats, misaligned feats or None)."""
    with torch.no_grad():
        if mis_cond is None:
            return teacher(real, t_real, cond, blocks), None
        both = teacher(torch.cat([real, real]), torch.cat([t_real, t_real]),
                                TextEmbeddings.cat([cond, mis_cond]), blocks)
    b = real.shape[0]
    return [f[:b] for f in both], [f[b:] for f in both]


def _judge(disc, groups):
    """The heads on several ``(features, t_hat, pooled)`` groups in one batched call (one forward for DDP's
    gradient sync, better device use; GroupNorm is per sample, so batching changes no logit).
    Returns one list of logit maps per group."""
    feats = [torch.cat(fs) for fs in zip(*(g[0] for g in groups))]
    logits = disc(feats, torch.cat([g[1] for g in groups]), torch.cat([g[2] for g in groups]))
    split = [lg.split([g[1].shape[0] for g in groups]) for lg in logits]  # per head: one chunk per group
    return [[chunks[i] for chunks in split] for i in range(len(groups))]


def discriminator_step(teacher, disc, x0: torch.Tensor, cond: TextEmbeddings, fake: FakeBatch, cfg: DistillConfig,
                       generator: torch.Generator | Draws | None = None):
    """``(loss, metrics)`` of the heads on real latents ``x0`` vs the G step's cached ``fake`` (same prompts).

    Only the real branch runs the teacher (under ``no_grad``); the student gets no gradient from this loss."""
    _check_frozen(teacher)
    blocks = _unwrap(disc).blocks
    t_real = fake.t_hat if cfg.disc.shared_t else None
    real, t_real = renoise(x0, cfg.disc.noise_m, cfg.disc.noise_s, generator, t=t_real)
    mis_cond = _shuffled(cond, generator) if cfg.loss.misaligned_weight > 0 else None
    real_feats, mis_feats = _real_features(teacher, real, t_real, cond, blocks, mis_cond)
    if cfg.loss.r1_weight > 0:
        real_feats = [f.detach().requires_grad_(True) for f in real_feats]
    groups = [(real_feats, t_real, cond.pooled), (fake.features, fake.t_hat, cond.pooled)]
    if mis_feats is not None:
        groups.append((mis_feats, t_real, mis_cond.pooled))
    real_logits, fake_logits, *mis_logits = _judge(disc, groups)
    d_real = losses.d_loss(cfg.loss.kind, real_logits, [])
    d_fake = losses.d_loss(cfg.loss.kind, [], fake_logits)
    w = cfg.loss.misaligned_weight  # 0 exactly when there are no misaligned features
    # Misaligned reals take a share w of the fake side instead of adding to it: with more weight on fakes than
    # on reals, a discriminator that cannot yet separate them is pushed to call everything fake (seen: all
    # scores at -1 within 40 iterations at an added weight of 1).
    loss = d_real + (1 - w) * d_fake
    metrics = {"d_real": d_real.detach(), "d_fake": d_fake.detach(),
               "d_acc": losses.disc_accuracy(real_logits, fake_logits),
               "real_score": losses.sample_scores(real_logits).mean(),
               "fake_score": losses.sample_scores(fake_logits).mean()}
    if mis_feats is not None:
        d_mis = losses.d_loss(cfg.loss.kind, [], mis_logits[0])
        loss = loss + w * d_mis
        metrics["d_misaligned"] = d_mis.detach()
    if cfg.loss.r1_weight > 0:
        r1 = losses.r1_penalty(real_logits, real_feats)
        loss = loss + cfg.loss.r1_weight * r1
        metrics["r1"] = r1.detach()
    metrics["d_loss"] = loss.detach()
    return loss, metrics
