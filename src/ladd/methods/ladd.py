"""LADD (Sauer et al. 2024, arXiv 2403.12015): the student against heads on the frozen teacher's features.

docs/method.md, "One training iteration". One iteration is one update of two phases (three with the DM term),
each backpropagated over every micro-batch before the student's and the heads' optimizers step:

    generator       the student's loss through the frozen teacher's features (``generator_step``)
    discriminator   heads on re-noised real latents vs the generator phase's fakes (``discriminator_step``)
    critic          only with ``ladd.loss.dm_weight``: the fake score's flow loss on the fakes (``critic_step``);
                    ``ladd.critic_updates`` - 1 updates of it alone come first, on fresh samples (DMD2's rule)

Both steps are plain functions a test can call without the trainer; neither calls ``backward``.

Speed: the G step's teacher forward on the re-noised fake (with grad, into the student) also serves the D step:
its features, detached, are the D step's fakes (``FakeBatch``, handed over in ``Context.store``), so the D step
needs only one no-grad teacher forward, for the real branch. Deviation from a textbook alternation: D judges
fakes from the student *before* this iteration's G update (one update stale); this saves a student and a teacher
forward per iteration. What remains is student forward+backward (= one teacher training step), teacher forward
+ input-backward on the fake, a no-grad teacher forward on the real (and on the misaligned reals), and the
heads: 2.9x a teacher training step on the nano teacher at batch 32 with configs/nano-ladd-plain.yaml, of which
the heads are ~0.3x; docs/experiments/speed.md measures the knobs that make the game cheaper (the default run,
configs/nano.yaml, plays it on part of the batch: 1.8x).

The teacher is always called through ``__call__`` (``teacher(x, t, cond, blocks)`` for features), so an
FSDP-wrapped teacher gathers its shards.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ladd.draws import Draws, as_draws
from ladd.methods.base import Context, Method, PhaseOut, StudentConfig, Update
from ladd.methods.components import gan_losses as losses
from ladd.methods.components.distribution_matching import dm_loss, fake_score_loss
from ladd.methods.components.heads import build_discriminator
from ladd.methods.components.perceptual import feature_distance
from ladd.methods.components.student import (check_frozen, init_student, jitter_text, param_grads_off, renoise,
                                             shuffled_prompts, student_forward, teacher_x0, teacher_x0_pair)
from ladd.methods.ladd_config import LADDConfig
from ladd.models.text_encoder import TextEmbeddings
from ladd.models.wrap import is_sharded, unwrap, without_ddp
from ladd.training.config import OptimizerConfig


def _heads_for_generator(disc: torch.nn.Module) -> torch.nn.Module:
    """The heads as the generator step uses them: without their DDP wrapper (they take no part in that step's
    gradient sync); FSDP-sharded heads, whose flags cannot be switched inside a wrapped forward, as a gathered
    frozen copy (the heads are small: ~1M parameters)."""
    if not is_sharded(disc):
        return unwrap(disc)
    from torch.distributed.fsdp import FullyShardedDataParallel

    with FullyShardedDataParallel.summon_full_params(disc, writeback=False):
        return copy.deepcopy(unwrap(disc)).requires_grad_(False)


def _share(fraction: float, b: int) -> int:
    """How many of a batch of ``b`` a ``*_fraction`` setting takes: the first ceil(fraction * b), at least one."""
    return max(1, math.ceil(fraction * b))


@dataclass
class FakeBatch:
    """What the D step needs of the G step's fakes, all detached."""
    # the fakes are the first n <= B of the student's outputs (ladd.loss.adversarial_fraction)
    features: list[torch.Tensor]  # teacher features of the re-noised fake, one [n, C, h, w] per tapped block
    t_hat: torch.Tensor           # [n] the fakes' discriminator noise levels
    pooled: torch.Tensor          # [n, P] their prompts' pooled embeddings: the heads judge fakes by their own
    x0_hat: torch.Tensor          # [B, C, h, w] the student's predictions (the fake score's data; rows that reach no
    #                               loss, outside the adversarial share below t_s = 1, hold their data latent)


@dataclass
class GeneratorOut:
    loss: torch.Tensor            # scalar, to backpropagate into the student
    metrics: dict[str, torch.Tensor]
    fake: FakeBatch


def generator_step(student, teacher, disc, x0: torch.Tensor, cond: TextEmbeddings, cfg: LADDConfig,
                   student_cfg: StudentConfig, generator: torch.Generator | Draws | None = None,
                   step: int = 0, uncond: TextEmbeddings | None = None,
                   noise: torch.Tensor | None = None, fake_score=None) -> GeneratorOut:
    """The student's loss on data latents ``x0`` ``[B, C, h, w]`` with their prompts ``cond``.

    The teacher is frozen but not under ``no_grad``: the adversarial gradient flows through its features into
    ``x0_hat`` and the student. The heads' parameters get no gradient here (pass ``disc`` unwrapped from DDP,
    since it takes no part in this step's gradient sync). ``step`` selects the warm-up grid probabilities;
    ``uncond`` (the empty prompt's embedding) is needed by a guided distillation target, ``noise`` (each
    latent's starting noise) by the regression term, ``fake_score`` (without its DDP wrapper; it gets no gradient
    here) by the distribution-matching term."""
    check_frozen(teacher)
    disc = _heads_for_generator(disc)
    grid = student_cfg.times()
    probs = torch.tensor(student_cfg.probs_at(step))
    paired_terms = cfg.loss.regression_weight > 0 or cfg.loss.feature_weight > 0
    if paired_terms and noise is None:
        raise ValueError("ladd.loss.regression_weight and feature_weight need each latent's starting noise "
                         "(paired data)")
    if cfg.loss.dm_weight > 0 and fake_score is None:
        raise ValueError("ladd.loss.dm_weight needs the fake score (the method's 'fake_score' module)")
    along = cfg.loss.regression_on == "rollout"
    n_adv = _share(cfg.loss.adversarial_fraction, len(cond))  # the whole batch by default
    seen = jitter_text(cond, cfg.text_noise, generator) if cfg.text_noise > 0 else cond  # the student's prompts
    x0_hat, t_s = student_forward(student, x0, seen, grid, probs, generator,
                                  noise if paired_terms else None, cfg.backward_simulation, along,
                                  student_cfg.sampler, cfg.rollout_paths, rows_below_one(cfg, len(cond)))
    x0_adv, cond_adv = x0_hat[:n_adv], cond[:n_adv]
    fake, t_hat = renoise(x0_adv, cfg.disc.noise_m, cfg.disc.noise_s, generator)
    feats = teacher(fake, t_hat, cond_adv, disc.blocks)
    with param_grads_off(disc):
        logits = disc(feats, t_hat, cond_adv.pooled)
    adv = losses.g_loss(cfg.loss.kind, logits)
    loss, metrics = adv, {"g_adv": adv.detach()}
    if cfg.loss.distill_weight > 0 or cfg.loss.dm_weight > 0:
        # one (batched) no-grad teacher forward for both terms
        x0_cond, x0_cfg = teacher_x0_pair(teacher, fake, t_hat, cond_adv, uncond, cfg.loss.distill_guidance,
                                         cfg.loss.distill_guidance_interval)
    if cfg.loss.dm_weight > 0:
        dm = dm_loss(x0_adv, x0_cfg, teacher_x0(fake_score, fake, t_hat, cond_adv))
        loss = loss + cfg.loss.dm_weight * dm
        metrics["g_dm"] = dm.detach()
    if cfg.loss.distill_weight > 0:
        # ADD-style term, unweighted MSE at the same t_hat (ADD weights it by a c(t); an ablation knob at most).
        # Costs one more no-grad teacher forward (two with guidance); off by default (docs/method.md: unnecessary
        # with synthetic data).
        if cfg.loss.distill_target == "guidance":
            # target x0_hat + (x0_cfg - x0_cond): the MSE's gradient is only the guidance direction
            x0_cfg = x0_adv.detach() + (x0_cfg - x0_cond)
        distill = F.mse_loss(x0_adv.float(), x0_cfg.float())
        loss = loss + cfg.loss.distill_weight * distill
        metrics["g_distill"] = distill.detach()
    if paired_terms:
        # the paired terms average over the samples whose chain started from their own noise (the first time, or
        # every rollout); the others add nothing
        paired = (torch.ones_like(t_s) if along else (t_s == grid[0])).to(x0_hat.dtype)
    if cfg.loss.regression_weight > 0:
        per_sample = regression_distance(x0_hat.float() - x0.float(), cfg.loss.regression_huber_c).flatten(1).mean(1)
        regression = _masked_mean(per_sample, paired)
        loss = loss + cfg.loss.regression_weight * regression
        metrics["g_regression"] = regression.detach()
    if cfg.loss.feature_weight > 0:
        # the teacher sample x0 re-noised with the fake's noise at its time: fake + (1 - t)(x0 - x0_hat)
        shift = (1 - t_hat).view(-1, *[1] * (x0_adv.dim() - 1)) * (x0[:n_adv] - x0_adv.detach())
        with torch.no_grad():
            target = teacher(fake.detach() + shift, t_hat, cond_adv, disc.blocks)
        feature = _masked_mean(feature_distance(feats, target), paired[:n_adv])
        loss = loss + cfg.loss.feature_weight * feature
        metrics["g_feature"] = feature.detach()
    metrics.update(g_loss=loss.detach(), t_s=t_s.float().mean(), t_hat_fake=t_hat.float().mean(),
                   g_fake_score=losses.sample_scores(logits).mean())
    out = FakeBatch([f.detach() for f in feats], t_hat.detach(), cond_adv.pooled.detach(), x0_hat.detach())
    return GeneratorOut(loss, metrics, out)


def rows_below_one(cfg: LADDConfig, b: int) -> torch.Tensor | None:
    """Which of a batch of ``b`` need the student's prediction when drawn below t_s = 1 (bool ``[b]``; None: all):
    with the game on part of the batch, the adversarial share's only, since the paired terms take t_s = 1 and the
    fake score (which reads every prediction) is off; the others' forward, backward and rollouts would be thrown
    away (ladd.methods.components.student.student_forward skips them)."""
    n_adv = _share(cfg.loss.adversarial_fraction, b)
    if cfg.loss.regression_on == "rollout" or cfg.loss.dm_weight > 0 or n_adv == b:
        return None
    return torch.arange(b) < n_adv


def regression_distance(d: torch.Tensor, huber_c: float) -> torch.Tensor:
    """The regression term's per-element distance of the difference ``d``: ``d^2``, or with ``huber_c > 0`` the
    pseudo-Huber ``sqrt(d^2 + c^2) - c`` (ladd.loss.regression_huber_c)."""
    if huber_c > 0:
        return torch.sqrt(d * d + huber_c * huber_c) - huber_c
    return d * d


def _masked_mean(per_sample: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of ``per_sample`` over the samples where ``mask`` is 1 (0 when there are none)."""
    return (per_sample * mask).sum() / mask.sum().clamp(min=1)


def _shuffled(cond: TextEmbeddings, generator: torch.Generator | Draws | None) -> TextEmbeddings:
    """Prompts rolled by a random shift in [1, B - 1] (within this process's micro-batch)."""
    b = len(cond)
    return shuffled_prompts(cond, as_draws(generator).integer(1, b) if b > 1 else 0)


def _real_features(teacher, real, t_real, cond, blocks, n_real, mis_cond):
    """No-grad teacher features of the first ``n_real`` noisy reals, and of the first ``len(mis_cond)`` with
    misaligned prompts when ``mis_cond`` is given (one batched forward). Returns (real feats, misaligned feats or
    None)."""
    with torch.no_grad():
        if mis_cond is None:
            return teacher(real[:n_real], t_real[:n_real], cond[:n_real], blocks), None
        m = len(mis_cond)
        both = teacher(torch.cat([real[:n_real], real[:m]]), torch.cat([t_real[:n_real], t_real[:m]]),
                       TextEmbeddings.cat([cond[:n_real], mis_cond]), blocks)
    return [f[:n_real] for f in both], [f[n_real:] for f in both]


def _judge(disc, groups):
    """The heads on several ``(features, t_hat, pooled)`` groups in one batched call (one forward for DDP's
    gradient sync, better device use; GroupNorm is per sample, so batching changes no logit).
    Returns one list of logit maps per group."""
    feats = [torch.cat(fs) for fs in zip(*(g[0] for g in groups))]
    logits = disc(feats, torch.cat([g[1] for g in groups]), torch.cat([g[2] for g in groups]))
    split = [lg.split([g[1].shape[0] for g in groups]) for lg in logits]  # per head: one chunk per group
    return [[chunks[i] for chunks in split] for i in range(len(groups))]


def discriminator_step(teacher, disc, x0: torch.Tensor, cond: TextEmbeddings, fake: FakeBatch, cfg: LADDConfig,
                       generator: torch.Generator | Draws | None = None):
    """``(loss, metrics)`` of the heads on real latents ``x0`` with their prompts ``cond`` vs the G step's cached
    ``fake`` with theirs (the same prompts unless the reals come from their own folder, ``paths.reals``).

    Only the real branch runs the teacher (under ``no_grad``); the student gets no gradient from this loss.
    ``metrics`` include the heads' accuracy on reals (score > 0) and on fakes (score < 0)."""
    check_frozen(teacher)
    blocks = unwrap(disc).blocks
    t_real = fake.t_hat if cfg.disc.shared_t else None
    real, t_real = renoise(x0, cfg.disc.noise_m, cfg.disc.noise_s, generator, t=t_real)
    mis_cond = None
    if cfg.loss.misaligned_weight > 0:
        mis_cond = _shuffled(cond, generator)[:_share(cfg.loss.misaligned_fraction, len(cond))]
    n_real = _share(cfg.loss.real_fraction, len(cond))
    real_feats, mis_feats = _real_features(teacher, real, t_real, cond, blocks, n_real, mis_cond)
    if cfg.loss.r1_weight > 0:
        real_feats = [f.detach().requires_grad_(True) for f in real_feats]
    groups = [(real_feats, t_real[:n_real], cond.pooled[:n_real]), (fake.features, fake.t_hat, fake.pooled)]
    if mis_feats is not None:
        groups.append((mis_feats, t_real[:len(mis_cond)], mis_cond.pooled))
    real_logits, fake_logits, *mis_logits = _judge(disc, groups)
    d_real = losses.d_loss(cfg.loss.kind, real_logits, [])
    d_fake = losses.d_loss(cfg.loss.kind, [], fake_logits)
    w = cfg.loss.misaligned_weight  # 0 exactly when there are no misaligned features
    # Misaligned reals take a share w of the fake side instead of adding to it: with more weight on fakes than
    # on reals, a discriminator that cannot yet separate them is pushed to call everything fake (seen: all
    # scores at -1 within 40 iterations at an added weight of 1).
    loss = d_real + (1 - w) * d_fake
    real_scores, fake_scores = losses.sample_scores(real_logits), losses.sample_scores(fake_logits)
    metrics = {"d_real": d_real.detach(), "d_fake": d_fake.detach(),
               "d_acc": losses.disc_accuracy(real_logits, fake_logits),
               "real_score": real_scores.mean(), "fake_score": fake_scores.mean(),
               "acc_real": (real_scores > 0).float().mean(), "acc_fake": (fake_scores < 0).float().mean()}
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


def critic_step(fake_score, cond: TextEmbeddings, x0_hat: torch.Tensor, cfg: LADDConfig,
                generator: torch.Generator | Draws | None = None):
    """``(loss, metrics)`` of the fake score (``ladd.loss.dm_weight``): its flow loss on student outputs
    ``x0_hat`` (detached: the G step's, or ``student_samples``), re-noised like the heads' fakes (t ~
    LogitNormal(noise_m, noise_s)), where the G step queries it."""
    draws = as_draws(generator)
    t = draws.logit_normal(x0_hat.shape[0], cfg.disc.noise_m, cfg.disc.noise_s, device=x0_hat.device)
    loss = fake_score_loss(fake_score, x0_hat, draws.randn(x0_hat), t.to(x0_hat.dtype), cond)
    return loss, {"critic_flow": loss.detach()}


def student_samples(student, x0: torch.Tensor, cond: TextEmbeddings, cfg: LADDConfig, student_cfg: StudentConfig,
                    generator: torch.Generator | Draws | None = None, step: int = 0) -> torch.Tensor:
    """The student's outputs as the G step draws them (its grid times, inputs by backward simulation or noised
    ``x0``), under no_grad: the data of a fake-score update that follows no G step (``ladd.critic_updates``)."""
    with torch.no_grad():
        x0_hat, _ = student_forward(student, x0, cond, student_cfg.times(), torch.tensor(student_cfg.probs_at(step)),
                                    generator, backward=cfg.backward_simulation, sampler=student_cfg.sampler,
                                    paths=cfg.rollout_paths)
    return x0_hat


class LADD(Method):
    """The student (a copy of the teacher, or LoRA on it) and the heads (and, with ``ladd.loss.dm_weight``, the
    fake score), an optimizer each, one update of their phases per iteration."""
    Config = LADDConfig
    progress = ("g_loss", "d_loss", "acc_real", "acc_fake")


    @classmethod
    def optimizer_defaults(cls) -> dict:
        # the heads at 10x the student (two time-scale rule); docs/method.md, step 8: separate optimizers
        # critic: the fake score of ladd.loss.dm_weight (DMD2 trains it at the student's rate)
        return {"student": OptimizerConfig(lr=1.0e-5), "heads": OptimizerConfig(lr=1.0e-4),
                "critic": OptimizerConfig(lr=1.0e-5)}

    @classmethod
    def needs_uncond(cls, cfg: LADDConfig) -> bool:
        return (cfg.loss.distill_weight > 0 or cfg.loss.dm_weight > 0) and cfg.loss.distill_guidance != 1.0

    @classmethod
    def needs_pairs(cls, cfg: LADDConfig) -> bool:
        return cfg.loss.regression_weight > 0 or cfg.loss.feature_weight > 0

    @classmethod
    def takes_reals(cls, cfg: LADDConfig) -> bool:
        return True

    @classmethod
    def check(cls, cfg: LADDConfig, teacher_config: dict) -> None:
        cfg.disc.resolve_blocks(teacher_config["num_layers"])

    def modules(self, device) -> dict:
        if self._modules is None:
            self.teacher = self.teacher.to(device)
            student = init_student(self.teacher, self.student_cfg)
            with torch.random.fork_rng(devices=[]):  # seeded heads' init, the caller's global RNG untouched
                torch.manual_seed(self.seed)
                heads = build_discriminator(self.teacher, self.cfg.disc).to(device)
            self._modules = {"student": student, "heads": heads}
            if self.cfg.loss.dm_weight > 0:
                self._modules["fake_score"] = init_student(self.teacher)  # a full copy: it follows the student
        return self._modules

    def optimizers(self) -> dict:
        critic = {"critic": ["fake_score"]} if self.cfg.loss.dm_weight > 0 else {}
        return {"student": ["student"], "heads": ["heads"], **critic}

    def attach(self, modules: dict, frozen: dict) -> None:
        self.student, self.heads, self.teacher = modules["student"], modules["heads"], frozen["teacher"]
        self.fake_score = modules.get("fake_score")
        # the G step's no-grad use takes no part in the gradient sync: DDP's wrapper off, FSDP's kept (it gathers)
        self.fake_score_g = None if self.fake_score is None else without_ddp(self.fake_score)
        self.student_g = without_ddp(self.student)  # the fake score's own updates sample it under no_grad
        self.place_uncond(self.student)

    def updates(self, step: int) -> list[Update]:
        if step % self.cfg.disc_every:  # ladd.disc_every: the heads (and the fake score) rest this iteration
            return [Update(("generator",), ("student",))]
        if self.cfg.loss.dm_weight > 0:  # ladd.critic_updates - 1 fake-score updates first, on fresh samples
            return [Update(("critic",), ("critic",))] * (self.cfg.critic_updates - 1) + [
                Update(("generator", "discriminator", "critic"), ("student", "heads", "critic"))]
        return [Update(("generator", "discriminator"), ("student", "heads"))]

    def loss(self, phase: str, batch, ctx: Context) -> PhaseOut:
        x0, cond = batch.x0, batch.cond
        if phase == "generator":
            g = generator_step(self.student, self.teacher, self.heads, x0, cond, self.cfg, self.student_cfg,
                               ctx.draws, ctx.step, self.uncond, batch.noise, self.fake_score_g)
            ctx.store["fake"] = g.fake
            return PhaseOut(g.loss, g.metrics)
        if phase == "discriminator":
            real = batch.reals or batch  # paths.reals (e.g. real images), or the data themselves
            loss, metrics = discriminator_step(self.teacher, self.heads, real.x0, real.cond, ctx.store["fake"],
                                               self.cfg, ctx.draws)
            return PhaseOut(loss, metrics)
        if phase == "critic":
            fake = ctx.store.get("fake")  # None: an update of the fake score alone, on samples drawn here
            x0_hat = fake.x0_hat if fake is not None else student_samples(
                self.student_g, x0, cond, self.cfg, self.student_cfg, ctx.draws, ctx.step)
            return PhaseOut(*critic_step(self.fake_score, cond, x0_hat, self.cfg, ctx.draws))
        return super().loss(phase, batch, ctx)
