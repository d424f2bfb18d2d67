"""DMD2 (Yin et al. 2024, arXiv 2405.14867): distribution matching with a learned fake score, a GAN head on the
fake score's features, two time-scale updates and backward simulation. docs/method.md, "Baselines".

Modules: the student G (a copy of the teacher), the *fake score* F (another trainable copy of the teacher, which
tracks the student's output distribution) and GAN heads on F's block features. One iteration is
``dmd2.critic_updates`` critic updates (F and the heads) and then one generator update:

    critic      F's flow-matching loss on the student's samples (detached): x_t = (1 - t) x0_G + t eps,
                || F(x_t, t) - (eps - x0_G) ||^2; plus the heads' non-saturating GAN loss on F's features of
                noised data latents (real) vs noised student samples (fake), weighted ``gan_weight_d``
    generator   the distribution-matching gradient at x_t = (1 - t) x0_G + t eps, t ~ U(t_min, t_max):
                g = ((x0_G - x0_real) - (x0_G - x0_fake)) / mean|x0_G - x0_real|, x0_real the CFG teacher's
                prediction, x0_fake F's; applied as 0.5 || x0_G - sg(x0_G - g) ||^2 (whose gradient is g); plus
                the non-saturating GAN loss of the heads on F's features of the noised sample (F frozen in this
                step), weighted ``gan_weight_g``. No regression loss.

The student's input (``backward_simulation``): at a grid time t_s drawn with ``student.probs``, the state its own
re-noising sampler reaches from pure noise (rolled out under ``no_grad``, DMD2's fix for the mismatch between
training on noised data and sampling from the student's own outputs); off: the noised data latent, as LADD.
Sampling: the re-noising sampler on the student grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ladd import flow
from ladd.config import fail, number
from ladd.draws import Draws, as_draws
from ladd.methods.base import Context, Method, PhaseOut, StudentConfig, Update, teacher_guidance
from ladd.methods.components import gan_losses as losses
from ladd.methods.components.distribution_matching import dm_loss, fake_score_loss
from ladd.methods.components.heads import DiscriminatorConfig, build_discriminator
from ladd.methods.components.student import (init_student, param_grads_off, student_forward, teacher_x0)
from ladd.models.text_encoder import TextEmbeddings
from ladd.models.wrap import is_sharded, unwrap
from ladd.training.config import OptimizerConfig


@dataclass
class DMD2Config:
    """The ``dmd2:`` section of a preset."""
    guidance: float | None = None   # the real score's CFG scale; None = the teacher's recommended scale
    critic_updates: int = 5         # fake-score updates per generator update (DMD2's two time-scale rule: 5)
    t_min: float = 0.02             # noise levels of the distribution-matching and GAN inputs, U(t_min, t_max)
    t_max: float = 0.98
    gan_weight_g: float = 5.0e-3    # DMD2's SDXL settings (gen_cls_loss_weight, guidance_cls_loss_weight)
    gan_weight_d: float = 1.0e-2
    gan_blocks: Any = "all"         # F's blocks that carry GAN heads ("all", "spaced:K" or a list)
    gan_head_width: int = 64
    backward_simulation: bool = True

    def __post_init__(self):
        if self.guidance is not None:
            self.guidance = number("dmd2.guidance", self.guidance)
            if self.guidance < 1:
                fail("dmd2.guidance", f"got {self.guidance}", "use 1 (no guidance) or more, or null")
        if isinstance(self.critic_updates, bool) or not isinstance(self.critic_updates, int) \
                or self.critic_updates < 1:
            fail("dmd2.critic_updates", f"got {self.critic_updates!r}", "use a positive integer (DMD2: 5)")
        self.t_min, self.t_max = number("dmd2.t_min", self.t_min), number("dmd2.t_max", self.t_max)
        if not 0 < self.t_min < self.t_max < 1:
            fail("dmd2.t_min", f"got t_min={self.t_min}, t_max={self.t_max}", "use 0 < t_min < t_max < 1")
        for name in ("gan_weight_g", "gan_weight_d"):
            value = number(f"dmd2.{name}", getattr(self, name))
            if value < 0:
                fail(f"dmd2.{name}", f"got {value}", "use 0 (off) or a positive weight")
            setattr(self, name, value)
        if not isinstance(self.backward_simulation, bool):
            fail("dmd2.backward_simulation", f"got {self.backward_simulation!r}", "use true or false")

    def heads(self) -> DiscriminatorConfig:
        """LADD's head architecture on F's blocks (its checks name ``ladd.disc`` fields: the same settings)."""
        return DiscriminatorConfig(blocks=self.gan_blocks, head_width=self.gan_head_width)


def student_sample(student, x0: torch.Tensor, cond: TextEmbeddings, cfg: DMD2Config, student_cfg: StudentConfig,
                   step: int, draws: Draws):
    """``(x0_G [B, C, h, w], t_s [B])``: the student's prediction at a grid time drawn with ``student.probs``, from
    its own rollout (``backward_simulation``) or from the noised data latent ``x0``."""
    grid = student_cfg.times().to(x0.device, x0.dtype)
    return student_forward(student, x0, cond, grid, torch.tensor(student_cfg.probs_at(step)), draws,
                           backward=cfg.backward_simulation, sampler=student_cfg.sampler)


def _uniform_t(cfg: DMD2Config, n: int, draws: Draws, like: torch.Tensor) -> torch.Tensor:
    return draws.uniform(n, cfg.t_min, cfg.t_max, device=like.device).to(like.dtype)


def _judge(fake_score, heads, x: torch.Tensor, t: torch.Tensor, cond: TextEmbeddings):
    """The heads' logit maps on F's features of ``x`` at ``t`` (one forward of each)."""
    return heads(fake_score(x, t, cond, heads.blocks), t, cond.pooled)


def generator_step(student, teacher, fake_score, heads, x0: torch.Tensor, cond: TextEmbeddings,
                   uncond: TextEmbeddings | None, cfg: DMD2Config, student_cfg: StudentConfig, step: int = 0,
                   generator: torch.Generator | Draws | None = None) -> PhaseOut:
    """The student's DMD2 loss (see the module docstring); the fake score and the heads get no gradient."""
    draws = as_draws(generator)
    x0_g, t_s = student_sample(student, x0, cond, cfg, student_cfg, step, draws)
    t = _uniform_t(cfg, x0.shape[0], draws, x0_g)
    x_t = flow.add_noise(x0_g, draws.randn(x0_g), t)
    real = teacher_x0(teacher, x_t, t, cond, uncond, cfg.guidance or 1.0)
    fake = teacher_x0(fake_score, x_t, t, cond)
    dm = dm_loss(x0_g, real, fake)
    loss, metrics = dm, {"g_dm": dm.detach(), "t_s": t_s.float().mean()}
    if cfg.gan_weight_g > 0:
        with param_grads_off(fake_score), param_grads_off(heads):
            gan = losses.g_loss("non_saturating", _judge(fake_score, heads, x_t, t, cond))
        loss = loss + cfg.gan_weight_g * gan
        metrics["g_gan"] = gan.detach()
    metrics["g_loss"] = loss.detach()
    return PhaseOut(loss, metrics)


def critic_step(student, fake_score, heads, x0: torch.Tensor, cond: TextEmbeddings, cfg: DMD2Config,
                student_cfg: StudentConfig, step: int = 0,
                generator: torch.Generator | Draws | None = None) -> PhaseOut:
    """The fake score's flow-matching loss on fresh student samples plus the heads' GAN loss (real: ``x0``)."""
    draws = as_draws(generator)
    with torch.no_grad():
        x0_g = student_sample(student, x0, cond, cfg, student_cfg, step, draws)[0]
    t = _uniform_t(cfg, x0.shape[0], draws, x0_g)
    eps = draws.randn(x0_g)
    x_t = flow.add_noise(x0_g, eps, t)  # also the GAN's fake input
    flow_loss = fake_score_loss(fake_score, x0_g, eps, t, cond)
    loss, metrics = flow_loss, {"critic_flow": flow_loss.detach()}
    if cfg.gan_weight_d > 0:
        t_real = _uniform_t(cfg, x0.shape[0], draws, x0)
        x_real = flow.add_noise(x0, draws.randn(x0), t_real)
        both = _judge(fake_score, heads, torch.cat([x_real, x_t]), torch.cat([t_real, t]),
                      TextEmbeddings.cat([cond, cond]))
        b = x0.shape[0]
        real_logits, fake_logits = [lg[:b] for lg in both], [lg[b:] for lg in both]
        gan = losses.d_loss("non_saturating", real_logits, fake_logits)
        loss = loss + cfg.gan_weight_d * gan
        metrics.update(critic_gan=gan.detach(), d_acc=losses.disc_accuracy(real_logits, fake_logits))
    metrics["critic_loss"] = loss.detach()
    return PhaseOut(loss, metrics)


class DMD2(Method):
    """The student, the fake score and its GAN heads; per iteration ``critic_updates`` critic updates, then one
    generator update."""
    Config = DMD2Config
    progress = ("g_dm", "critic_flow", "d_acc")


    @classmethod
    def optimizer_defaults(cls) -> dict:
        # DMD2 (SDXL): 5e-7 / 5e-7 with Adam betas (0, 0.999); the nano presets set their own
        return {"student": OptimizerConfig(lr=1.0e-5, betas=[0.0, 0.999]),
                "critic": OptimizerConfig(lr=1.0e-5, betas=[0.0, 0.999])}

    @classmethod
    def needs_uncond(cls, cfg: DMD2Config) -> bool:
        return cfg.guidance != 1.0  # None: the teacher's recommended scale, resolved in check()

    @classmethod
    def check(cls, cfg: DMD2Config, teacher_config: dict) -> None:
        cfg.guidance = teacher_guidance(cfg.guidance, teacher_config)
        cfg.heads().resolve_blocks(teacher_config["num_layers"])

    def modules(self, device) -> dict:
        if self._modules is None:
            self.teacher = self.teacher.to(device)
            student = init_student(self.teacher, self.student_cfg)
            fake_score = init_student(self.teacher)  # always a full copy: it must follow the student anywhere
            with torch.random.fork_rng(devices=[]):  # seeded heads' init, the caller's global RNG untouched
                torch.manual_seed(self.seed)
                heads = build_discriminator(self.teacher, self.cfg.heads()).to(device)
            self._modules = {"student": student, "fake_score": fake_score, "heads": heads}
        return self._modules

    def optimizers(self) -> dict:
        return {"student": ["student"], "critic": ["fake_score", "heads"]}

    def attach(self, modules: dict, frozen: dict) -> None:
        if any(is_sharded(m) for m in modules.values()):
            raise NotImplementedError("DMD2 under FSDP is not supported yet; use DDP (or one process)")
        self.student, self.teacher = modules["student"], frozen["teacher"]
        self.fake_score, self.heads = modules["fake_score"], modules["heads"]
        self.place_uncond(self.student)

    def updates(self, step: int) -> list[Update]:
        return [Update(("critic",), ("critic",))] * self.cfg.critic_updates + [Update(("generator",), ("student",))]

    def loss(self, phase: str, batch, ctx: Context) -> PhaseOut:
        x0, cond = batch.x0, batch.cond
        if phase == "generator":  # F and the heads take no part in this update's gradient sync: unwrapped
            return generator_step(self.student, self.teacher, unwrap(self.fake_score), unwrap(self.heads), x0,
                                  cond, self.uncond, self.cfg, self.student_cfg, ctx.step, ctx.draws)
        if phase == "critic":  # the student only samples, under no_grad
            return critic_step(unwrap(self.student), self.fake_score, self.heads, x0, cond, self.cfg,
                               self.student_cfg, ctx.step, ctx.draws)
        return super().loss(phase, batch, ctx)
