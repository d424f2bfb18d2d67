"""LADD's settings: the ``ladd:`` section of a preset (``LADDConfig``) and its ``loss:`` part (``LossConfig``);
the method that reads them is ladd.methods.ladd, docs/method.md says what each knob does."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ladd.config import fail, number, positive_ints
from ladd.methods.components.heads import DiscriminatorConfig


@dataclass
class LossConfig:
    kind: str = "hinge"              # "hinge" (docs/method.md) or "non_saturating" (softplus)
    r1_weight: float = 0.0           # R1 on the real head inputs; docs/method.md suggests about 1e-5 when on
    misaligned_weight: float = 0.0   # share w of D's fake side given to real latents with shuffled prompts (0 = off)
    # the misaligned reals are the first ceil(f * B) of the batch: the same expected loss from a smaller extra
    # teacher forward (f = 1: the whole batch, one more forward of B samples per D step)
    misaligned_fraction: float = 1.0
    # the D step's real branch on the first ceil(f * B) samples only: the same expected loss on reals from a smaller
    # no-grad teacher forward (the fakes' features are the G step's, free; the misaligned reals keep their own share)
    real_fraction: float = 1.0
    # the G step's adversarial pass (the re-noised fake through the teacher, with the backward to its input, and the
    # heads) on the first ceil(f * B) of the student's outputs only; the free regression term keeps every sample at
    # t_s = 1, the D step judges those fakes, and the student runs only the samples that reach a loss (the others
    # drawn below t_s = 1 would get no gradient). The distillation and DM terms, which read the re-noised fake,
    # follow it.
    adversarial_fraction: float = 1.0
    distill_weight: float = 0.0      # ADD-style MSE to the teacher's x0 at the re-noised fake (0 = off)
    # CFG scale of that target (ADD's distillation term uses the guided teacher): > 1 transfers guidance directly
    distill_guidance: float = 1.0
    # the times t_hat (inclusive) at which that guidance applies, elsewhere the conditional teacher's x0 (guidance in a
    # limited interval, Kynkaanniemi et al. 2024); read by the DM term's real score too. [0, 1]: everywhere
    distill_guidance_interval: Any = (0.0, 1.0)  # stored as a list [low, high]
    # "x0": || x0_hat - x0_teacher_cfg ||^2 (ADD). "guidance": only the guidance part of that gradient,
    # x0_teacher_cond - x0_teacher_cfg = -(w - 1)(x0_cond - x0_uncond), without the pull towards the teacher's
    # (blurry, at high t_hat) conditional mean: classifier score distillation (Yu et al. 2023, arXiv 2310.19415).
    distill_target: str = "x0"
    # Regression to the teacher's own sample: where the student starts from pure noise (t_s = 1) it gets the noise
    # the teacher started each data latent from, and || x0_hat - x0 ||^2 is added with this weight (a pair of the
    # teacher's ODE; Luhman & Luhman 2021, Diffusion2GAN's regression term, here in latent space). Free: no extra
    # forward. Needs teacher samples made by a deterministic sampler (data.sampler euler). 0 = off.
    regression_weight: float = 0.0
    # Where the regression term applies. "noise": only where the student starts from pure noise (t_s = 1).
    # "rollout" (needs ladd.backward_simulation): at every grid time, the student's backward-simulation rollout
    # starting from the teacher's own noise of that latent, so that later steps keep the first step's layout
    # (a chain from z should end at the teacher's sample of z).
    regression_on: str = "noise"
    # The regression's per-element distance. 0: squared error (its minimiser: the mean of the teacher's samples the
    # student cannot tell apart from its noise). c > 0: pseudo-Huber, sqrt(d^2 + c^2) - c (LCM's loss), absolute
    # error beyond c (their median). Measured in docs/experiments/student-gap.md, session 50: no 1-step gain.
    regression_huber_c: float = 0.0
    # The regression in the teacher's feature space (not in the paper; 0 = off): on the adversarial pass's samples
    # that started from their own noise (t_s = 1), the perceptual distance (ladd.methods.components.perceptual)
    # between the teacher's block features of the re-noised fake and of its teacher sample re-noised with the same
    # noise at the same time. Costs one no-grad teacher forward on the adversarial share; needs the pairs like
    # regression_weight.
    feature_weight: float = 0.0
    # DMD2's distribution-matching term (not in the paper; 0 = off): at the re-noised fake, the gradient
    # (x0_fake - x0_real) / mean|x0_hat - x0_real| with the teacher guided at distill_guidance as the real score and
    # a *fake score*, a trainable copy of the teacher (optimizer optim.critic), trained beside the heads with the
    # flow loss on the student's outputs re-noised like the fakes. Costs one fake-score forward in the G step
    # and one forward + backward in the D step (ladd.methods.components.distribution_matching).
    dm_weight: float = 0.0

    def __post_init__(self):
        if self.kind not in ("hinge", "non_saturating"):
            fail("ladd.loss.kind", f"got {self.kind!r}", "use 'hinge' or 'non_saturating'")
        self.distill_guidance = number("ladd.loss.distill_guidance", self.distill_guidance)
        if self.distill_guidance < 1:
            fail("ladd.loss.distill_guidance", f"got {self.distill_guidance}", "use 1 (no guidance) or more, e.g. 3")
        self.distill_guidance_interval = self._check_interval(self.distill_guidance_interval)
        if self.distill_guidance_interval != [0, 1] and self.distill_guidance == 1:
            fail("ladd.loss.distill_guidance_interval", "limits a guidance that is off (ladd.loss.distill_guidance=1)",
                 "set ladd.loss.distill_guidance above 1, e.g. 3, or leave the interval at [0, 1]")
        if self.regression_on not in ("noise", "rollout"):
            fail("ladd.loss.regression_on", f"got {self.regression_on!r}", "use 'noise' or 'rollout'")
        if self.distill_target not in ("x0", "guidance"):
            fail("ladd.loss.distill_target", f"got {self.distill_target!r}", "use 'x0' or 'guidance'")
        if self.distill_target == "guidance" and self.distill_guidance == 1:
            fail("ladd.loss.distill_target", "'guidance' with ladd.loss.distill_guidance=1 has no gradient",
                 "set ladd.loss.distill_guidance above 1, e.g. 3")
        for name in ("r1_weight", "misaligned_weight", "distill_weight", "regression_weight", "regression_huber_c",
                     "feature_weight", "dm_weight"):
            value = number(f"ladd.loss.{name}", getattr(self, name))
            if value < 0:
                fail(f"ladd.loss.{name}", f"got {value}", "use 0 (off) or a positive weight")
            setattr(self, name, value)
        for name in ("misaligned_fraction", "real_fraction", "adversarial_fraction"):
            value = number(f"ladd.loss.{name}", getattr(self, name))
            if not 0 < value <= 1:
                fail(f"ladd.loss.{name}", f"got {value}", "use a share in (0, 1], e.g. 0.25")
            setattr(self, name, value)
        if self.misaligned_weight >= 1:
            fail("ladd.loss.misaligned_weight", f"got {self.misaligned_weight}, the student's fakes would get "
                 "no weight", "use a share in [0, 1), e.g. 0.25")

    @staticmethod
    def _check_interval(interval) -> list[float]:
        name = "ladd.loss.distill_guidance_interval"
        if not isinstance(interval, (list, tuple)) or len(interval) != 2:
            fail(name, f"got {interval!r}", "give two times [low, high] in [0, 1], e.g. [0.5, 1]")
        lo, hi = (number(name, v) for v in interval)
        if not 0 <= lo <= hi <= 1:
            fail(name, f"got [{lo}, {hi}]", "give 0 <= low <= high <= 1, e.g. [0.5, 1]; [0, 1] guides at every time")
        return [lo, hi]


@dataclass
class LADDConfig:
    """The ``ladd:`` section of a preset."""
    disc: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    # Backward simulation (DMD2's): below t_s = 1 the student's input is the state its own re-noising sampler
    # reaches from noise (no grad), what it meets when sampling, instead of the noised data latent. Not in the
    # paper; costs up to steps - 1 no-grad student forwards for the samples drawn below t_s = 1.
    backward_simulation: bool = False
    # Which path a backward-simulation rollout takes to its time (ladd.methods.components.student.rollout):
    # "grid", through every grid time (the 4-step sampler's path); "samplers", the path of one of the samplers
    # that reach that time (1, 2 or 4 steps), drawn uniformly, so that the 2-step student's second step trains on
    # the state the 2-step sampler gives it. No extra cost: one more student call, fewer samples in the calls.
    rollout_paths: str = "grid"
    # the heads' update (the discriminator phase) every N iterations, the student's every iteration: D:G = 1:N
    disc_every: int = 1
    # Noise on the student's prompt embeddings in the G step (not in the paper; 0 = off): each token state and the
    # pooled vector plus Gaussian noise of this many times its RMS, the targets' and the heads' prompts left clean,
    # so that the student draws the same image for nearby embeddings (other phrasings; NEFTune's noisy embeddings).
    text_noise: float = 0.0
    # With ladd.loss.dm_weight: the fake score's updates per iteration (DMD2's two time-scale rule, its default 5).
    # The first is the D step's (on the G step's outputs); each other one comes before it, on samples the student
    # draws afresh under no_grad, as DMD2's critic updates do.
    critic_updates: int = 1

    def __post_init__(self):
        if not isinstance(self.backward_simulation, bool):
            fail("ladd.backward_simulation", f"got {self.backward_simulation!r}", "use true or false")
        if self.rollout_paths not in ("grid", "samplers"):
            fail("ladd.rollout_paths", f"got {self.rollout_paths!r}", "use 'grid' or 'samplers'")
        if self.rollout_paths != "grid" and not self.backward_simulation:
            fail("ladd.rollout_paths", "chooses the paths of backward-simulation rollouts",
                 "set ladd.backward_simulation=true, or leave ladd.rollout_paths=grid")
        if self.loss.regression_on == "rollout" and not self.backward_simulation:
            fail("ladd.loss.regression_on", "'rollout' regresses along the student's backward-simulation rollouts",
                 "set ladd.backward_simulation=true, or use ladd.loss.regression_on=noise")
        if self.disc.shared_t and self.loss.adversarial_fraction < 1:
            fail("ladd.disc.shared_t", "gives each real its fake's noise level, and ladd.loss.adversarial_fraction < 1 "
                 "leaves fewer fakes than reals", "set ladd.disc.shared_t=false or ladd.loss.adversarial_fraction=1")
        positive_ints("ladd", self, ("disc_every", "critic_updates"))
        self.text_noise = number("ladd.text_noise", self.text_noise)
        if self.text_noise < 0:
            fail("ladd.text_noise", f"got {self.text_noise}", "use 0 (off) or a scale such as 0.1")
        if self.critic_updates > 1 and self.loss.dm_weight == 0:
            fail("ladd.critic_updates", "updates the fake score of the distribution-matching term, which is off",
                 "set ladd.loss.dm_weight above 0, or leave ladd.critic_updates=1")
