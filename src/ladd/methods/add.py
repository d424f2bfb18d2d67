"""ADD (Sauer et al. 2023, arXiv 2311.17042; SDXL-Turbo): an adversarial loss in *pixel* space plus score
distillation from the CFG teacher. docs/methods/add.md.

Modules: the student G (a copy of the teacher) and StyleGAN-T-style heads (``ladd.methods.components.heads``) on
several layers of a frozen pixel feature network (``ladd.models.feature_net``: DINOv2 for real models, the nano
feature network in the nano world), conditioned by projection on the pooled text embedding and, as an option, on
an image embedding of the clean source. Frozen: the teacher, the VAE (its decoder runs with gradients into the
student) and the feature network. One iteration, two phases over every micro-batch:

    generator      x0_G = G(x_s, s) at a student grid time s (the data latent noised, as LADD); images
                   D = decode(x0_G) through the VAE (with grad); hinge G loss of the heads on F(D); plus
                   lambda * c(t) || x0_G - x0_teacher_cfg(x_t, t) ||^2 with x_t = (1 - t) sg(x0_G) + t eps,
                   t ~ U(t_min, t_max), c(t) = 1 - t (ADD's exponential weighting alpha_t, in flow terms)
    discriminator  hinge D loss of the heads on F(decode(x0)) (real, no grad) vs the G phase's fakes, plus
                   R1 on the heads' real inputs

As in ``ladd.methods.ladd``, the D phase judges the features the G phase computed (detached): one update stale,
one decode and one feature forward saved per iteration.
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
from ladd.methods.components.heads import Discriminator, DiscriminatorConfig
from ladd.methods.components.student import init_student, param_grads_off, student_forward, teacher_x0
from ladd.models.text_encoder import TextEmbeddings
from ladd.models.wrap import is_sharded, unwrap
from ladd.training.config import OptimizerConfig


@dataclass
class ADDConfig:
    """The ``add:`` section of a preset."""
    feature_net: str | None = None  # folder of the frozen feature network (ladd.models.feature_net); required
    layers: Any = "all"             # its taps that carry heads: "all", "spaced:K" or a list of indices
    head_width: int = 64
    head_depth: int = 1             # residual 3x3 blocks per head (StyleGAN-T's DiscHead: one)
    image_conditioning: bool = False  # heads also conditioned on the clean source's embedding (ADD: an option)
    r1_weight: float = 1.0e-5       # R1 on the heads' real inputs (ADD: 1e-5)
    distill_weight: float = 2.5     # lambda (ADD: 2.5)
    guidance: float | None = None   # the teacher target's CFG scale; None = the teacher's recommended scale
    t_min: float = 0.02             # noise levels of the distillation term, U(t_min, t_max)
    t_max: float = 0.98
    weighting: str = "exponential"  # c(t): "exponential" (1 - t, ADD's choice) or "uniform" (1)

    def __post_init__(self):
        self.heads()  # checks layers, width and depth
        self.r1_weight, self.distill_weight = number("add.r1_weight", self.r1_weight), number(
            "add.distill_weight", self.distill_weight)
        for name in ("r1_weight", "distill_weight"):
            if getattr(self, name) < 0:
                fail(f"add.{name}", f"got {getattr(self, name)}", "use 0 (off) or a positive weight")
        if self.guidance is not None:
            self.guidance = number("add.guidance", self.guidance)
            if self.guidance < 1:
                fail("add.guidance", f"got {self.guidance}", "use 1 (no guidance) or more, or null")
        self.t_min, self.t_max = number("add.t_min", self.t_min), number("add.t_max", self.t_max)
        if not 0 < self.t_min < self.t_max < 1:
            fail("add.t_min", f"got t_min={self.t_min}, t_max={self.t_max}", "use 0 < t_min < t_max < 1")
        if self.weighting not in ("exponential", "uniform"):
            fail("add.weighting", f"got {self.weighting!r}", "use 'exponential' (c(t) = 1 - t) or 'uniform'")
        if not isinstance(self.image_conditioning, bool):
            fail("add.image_conditioning", f"got {self.image_conditioning!r}", "use true or false")

    def heads(self) -> DiscriminatorConfig:
        """The head settings in LADD's head config (its checks name ``ladd.disc`` fields: the same settings)."""
        return DiscriminatorConfig(blocks=self.layers, head_width=self.head_width, head_depth=self.head_depth)


def build_heads(feature_net, pooled_dim: int, cfg: ADDConfig) -> Discriminator:
    """Heads on ``cfg.layers`` of ``feature_net``; conditioned on the pooled text embedding and, with
    ``image_conditioning``, on the clean source's embedding (the pooled last tap of the feature network)."""
    layers = cfg.heads().resolve_blocks(len(feature_net.channels))
    extra = feature_net.channels[-1] if cfg.image_conditioning else 0
    h = cfg.heads()
    return Discriminator([feature_net.channels[k] for k in layers], pooled_dim + extra, layers, h.head_width,
                         h.head_depth, h.norm, h.t_embed_dim)


def _condition(pooled: torch.Tensor, source: torch.Tensor | None) -> torch.Tensor:
    """The heads' condition vector: the pooled text embedding, with the source's image embedding appended."""
    return pooled if source is None else torch.cat([pooled, source.to(pooled)], dim=1)


def real_features(feature_net, vae, x0: torch.Tensor) -> list[torch.Tensor]:
    """The feature maps of the decoded data latents ``x0`` (no grad): the heads' real inputs and, pooled from the
    last tap, the clean source's image embedding. Decoded as the fakes are (no clamp), so that the range of the
    decoder's output cannot tell them apart."""
    with torch.no_grad():
        return feature_net(vae.decode(x0))


def image_embedding(real: list[torch.Tensor]) -> torch.Tensor:
    """``[B, C]``: the clean source's embedding, the spatial mean of the feature network's last tap."""
    return real[-1].mean(dim=(2, 3))


def _zeros(x: torch.Tensor) -> torch.Tensor:
    return torch.zeros(x.shape[0], device=x.device)  # the heads' t input: ADD's discriminator has no noise level


@dataclass
class FakeBatch:
    features: list[torch.Tensor]      # detached feature maps of the decoded fakes
    source: torch.Tensor | None       # the clean sources' embeddings (image conditioning), or None
    real: list[torch.Tensor] | None   # the reals' feature maps when the G step needed them (image conditioning)
    pooled: torch.Tensor              # the fakes' prompts' pooled embeddings: the heads judge fakes by their own


def generator_step(student, teacher, vae, feature_net, heads, x0: torch.Tensor, cond: TextEmbeddings,
                   uncond: TextEmbeddings | None, cfg: ADDConfig, student_cfg: StudentConfig, step: int = 0,
                   generator: torch.Generator | Draws | None = None) -> tuple[PhaseOut, FakeBatch]:
    """The student's ADD loss; the heads get no gradient, the frozen networks pass it through to the student."""
    draws = as_draws(generator)
    grid = student_cfg.times()
    x0_g, t_s = student_forward(student, x0, cond, grid, torch.tensor(student_cfg.probs_at(step)), draws)
    feats = feature_net(vae.decode(x0_g))
    real = real_features(feature_net, vae, x0) if cfg.image_conditioning else None
    source = image_embedding(real) if real is not None else None
    with param_grads_off(heads):
        logits = heads(feats, _zeros(x0), _condition(cond.pooled, source))
    adv = losses.g_loss("hinge", logits)
    loss, metrics = adv, {"g_adv": adv.detach(), "t_s": t_s.float().mean()}
    if cfg.distill_weight > 0:
        t = draws.uniform(x0.shape[0], cfg.t_min, cfg.t_max, device=x0.device).to(x0_g.dtype)
        x_t = flow.add_noise(x0_g.detach(), draws.randn(x0_g), t)
        target = teacher_x0(teacher, x_t, t, cond, uncond, cfg.guidance or 1.0)
        c = (1 - t) if cfg.weighting == "exponential" else torch.ones_like(t)
        distill = (c * (x0_g.float() - target.float()).pow(2).flatten(1).mean(1)).mean()
        loss = loss + cfg.distill_weight * distill
        metrics["g_distill"] = distill.detach()
    metrics["g_loss"] = loss.detach()
    return PhaseOut(loss, metrics), FakeBatch([f.detach() for f in feats], source, real, cond.pooled.detach())


def discriminator_step(vae, feature_net, heads, x0: torch.Tensor, cond: TextEmbeddings, fake: FakeBatch,
                       cfg: ADDConfig) -> PhaseOut:
    """The heads' hinge loss on decoded data latents ``x0`` with their prompts ``cond`` (real) vs the generator
    phase's fakes with theirs, plus R1."""
    real = fake.real if fake.real is not None else real_features(feature_net, vae, x0)  # each decoded once
    if cfg.r1_weight > 0:
        real = [f.requires_grad_(True) for f in real]
    c = torch.cat([_condition(cond.pooled, fake.source), _condition(fake.pooled, fake.source)])
    b = x0.shape[0]
    both = heads([torch.cat([r, f]) for r, f in zip(real, fake.features)], torch.cat([_zeros(x0), _zeros(x0)]), c)
    real_logits, fake_logits = [lg[:b] for lg in both], [lg[b:] for lg in both]
    loss = losses.d_loss("hinge", real_logits, fake_logits)
    metrics = {"d_adv": loss.detach(), "d_acc": losses.disc_accuracy(real_logits, fake_logits)}
    if cfg.r1_weight > 0:
        r1 = losses.r1_penalty(real_logits, real)
        loss = loss + cfg.r1_weight * r1
        metrics["r1"] = r1.detach()
    metrics["d_loss"] = loss.detach()
    return PhaseOut(loss, metrics)


class ADD(Method):
    """The student and the heads, two optimizers, one update of two phases per iteration (as LADD)."""
    Config = ADDConfig
    progress = ("g_adv", "g_distill", "d_acc")

    def __init__(self, cfg: ADDConfig, student: StudentConfig, teacher: torch.nn.Module, seed: int = 0,
                 uncond=None, vae=None):
        super().__init__(cfg, student, teacher, seed, uncond, vae)
        from ladd.models.feature_net import load_feature_net

        self.feature_net = load_feature_net(cfg.feature_net)

    @classmethod
    def optimizer_defaults(cls) -> dict:
        # ADD (SDXL): student 1e-5, discriminator 1e-5 with Adam betas (0, 0.99); the nano preset sets its own
        return {"student": OptimizerConfig(lr=1.0e-5, betas=[0.0, 0.99]),
                "heads": OptimizerConfig(lr=1.0e-5, betas=[0.0, 0.99])}

    @classmethod
    def needs_uncond(cls, cfg: ADDConfig) -> bool:
        return cfg.distill_weight > 0 and cfg.guidance != 1.0  # None: the teacher's scale, resolved in check()

    @classmethod
    def needs_vae(cls, cfg: ADDConfig) -> bool:
        return True

    @classmethod
    def takes_reals(cls, cfg: ADDConfig) -> bool:
        return not cfg.image_conditioning  # its heads see each fake's own clean source, a data latent

    @classmethod
    def check(cls, cfg: ADDConfig, teacher_config: dict) -> None:
        from ladd.models.feature_net import DINO_TAPS
        from ladd.models.io import read_config

        if cfg.feature_net is None:
            fail("add.feature_net", "is not set", "give the frozen feature network's folder: assets/nano/featnet "
                 "(nano world) or a local DINOv2 ViT-S folder (transformers)")
        cfg.guidance = teacher_guidance(cfg.guidance, teacher_config)
        config = read_config(cfg.feature_net)  # a missing or non-JSON folder: AssetError naming it, before loading
        cfg.heads().resolve_blocks(len(config["channels"]) if config.get("ladd_feature_net") else DINO_TAPS)

    def modules(self, device) -> dict:
        if self._modules is None:
            self.teacher = self.teacher.to(device)
            student = init_student(self.teacher, self.student_cfg)
            with torch.random.fork_rng(devices=[]):  # seeded heads' init, the caller's global RNG untouched
                torch.manual_seed(self.seed)
                heads = build_heads(self.feature_net, self.teacher.config.pooled_projection_dim, self.cfg).to(device)
            self._modules = {"student": student, "heads": heads}
        return self._modules

    def optimizers(self) -> dict:
        return {"student": ["student"], "heads": ["heads"]}

    def frozen(self) -> dict:
        return {"teacher": self.teacher, "vae": self.vae, "feature_net": self.feature_net}

    def attach(self, modules: dict, frozen: dict) -> None:
        if any(is_sharded(m) for m in modules.values()):
            raise NotImplementedError("ADD under FSDP is not supported yet; use DDP (or one process)")
        self.student, self.heads = modules["student"], modules["heads"]
        self.teacher, self.vae, self.feature_net = frozen["teacher"], frozen["vae"], frozen["feature_net"]
        self.place_uncond(self.student)

    def updates(self, step: int) -> list[Update]:
        return [Update(("generator", "discriminator"), ("student", "heads"))]

    def loss(self, phase: str, batch, ctx: Context) -> PhaseOut:
        x0, cond = batch.x0, batch.cond
        if phase == "generator":  # the heads take no part in this update's gradient sync: unwrapped
            out, ctx.store["fake"] = generator_step(self.student, self.teacher, self.vae, self.feature_net,
                                                    unwrap(self.heads), x0, cond, self.uncond, self.cfg,
                                                    self.student_cfg, ctx.step, ctx.draws)
            return out
        if phase == "discriminator":
            real = batch.reals or batch  # paths.reals, or the data themselves
            return discriminator_step(self.vae, self.feature_net, self.heads, real.x0, real.cond, ctx.store["fake"],
                                      self.cfg)
        return super().loss(phase, batch, ctx)
