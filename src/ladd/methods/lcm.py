"""Latent consistency distillation (LCM; Luo et al. 2023, arXiv 2310.04378, after consistency distillation, Song
et al. 2023) for flow-matching teachers. docs/method.md, "Baselines".

With ``x_t = (1 - t) x0 + t eps`` and a velocity model ``v``, the consistency function is the x0 prediction
``f(x, t) = x - t v(x, t)``: ``f(x, 0) = x`` holds by construction (the boundary condition). One iteration:

1. draw ``n`` uniformly from ``{k, ..., N}`` on the solver grid ``t_n = shift(n / N)`` (the teacher's schedule) and
   noise the data latent to ``x_n = (1 - t_n) x0 + t_n eps``;
2. one Euler step of the classifier-free guided teacher from ``t_n`` to ``t_{n-k}`` (skipping-step ``k``):
   ``x_hat = x_n + (t_{n-k} - t_n) v_cfg(x_n, t_n)``;
3. loss: pseudo-Huber ``sqrt((f_G(x_n, t_n) - f_T(x_hat, t_{n-k}))^2 + c^2) - c``, elementwise, averaged; the
   target ``f_T`` is the student itself under ``no_grad`` (the stop-gradient target of improved consistency
   training, Song & Dhariwal 2023; LCM uses an EMA of the student with decay 0.95).

Sampling is LCM's multistep sampler: ``x0 = f(x_t, t)``, re-noised with fresh noise to the next time, i.e.
ladd's re-noising sampler on the student grid (ladd.sampling.renoise), so every student row of ``ladd distill``'s
table applies unchanged. Guidance is fixed at ``lcm.guidance`` (LCM's guidance-scale embedding is not built).
Cost per iteration: the teacher's guided forward (two batches, no grad), the target's forward (no grad) and the
student's forward and backward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ladd import flow
from ladd.config import fail, number
from ladd.draws import Draws, as_draws
from ladd.methods.base import Context, Method, PhaseOut, Update, teacher_guidance
from ladd.methods.components.student import init_student, teacher_x0
from ladd.models.text_encoder import TextEmbeddings
from ladd.training.config import OptimizerConfig


@dataclass
class LCMConfig:
    """The ``lcm:`` section of a preset."""
    solver_steps: int = 48          # N: the teacher's solver grid (48: holds the 4-step student grid's times)
    skip: int = 1                   # k: grid points per teacher step (LCM: 20 of 1000 DDPM steps = 1 of 50)
    guidance: float | None = None   # the teacher's CFG scale in the target; None = its recommended scale
    shift: float | None = None      # the solver grid's time shift; None = the teacher's (its config.json)
    huber_c: float = 1.0e-3         # pseudo-Huber c (LCM's default)

    def __post_init__(self):
        for name in ("solver_steps", "skip"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                fail(f"lcm.{name}", f"got {value!r}", "use a positive integer")
        if self.skip > self.solver_steps:
            fail("lcm.skip", f"got {self.skip} > lcm.solver_steps={self.solver_steps}", "use a smaller skip")
        if self.guidance is not None:
            self.guidance = number("lcm.guidance", self.guidance)
            if self.guidance < 1:
                fail("lcm.guidance", f"got {self.guidance}", "use 1 (no guidance) or more, or null")
        if self.shift is not None:
            self.shift = number("lcm.shift", self.shift)
            if not self.shift > 0:
                fail("lcm.shift", f"got {self.shift}", "use a positive shift, or null (the teacher's)")
        self.huber_c = number("lcm.huber_c", self.huber_c)
        if not self.huber_c > 0:
            fail("lcm.huber_c", f"got {self.huber_c}", "use a small positive number, e.g. 1e-3")


def solver_grid(n: int, shift: float = 1.0) -> torch.Tensor:
    """``[n + 1]`` times ``t_0 = 0 < t_1 < ... < t_n = 1`` (uniform, then shifted like the teacher's schedule)."""
    return flow.shift_times(torch.linspace(0.0, 1.0, n + 1), shift)


def consistency_step(student, teacher, x0: torch.Tensor, cond: TextEmbeddings, uncond: TextEmbeddings | None,
                     cfg: LCMConfig, generator: torch.Generator | Draws | None = None) -> PhaseOut:
    """The consistency-distillation loss of a batch of data latents ``x0`` ``[B, C, h, w]`` (see the module
    docstring; ``cfg.guidance`` and ``cfg.shift`` resolved: None counts as 1). The student gets gradients through
    ``f_G`` only."""
    draws = as_draws(generator)
    grid = solver_grid(cfg.solver_steps, cfg.shift or 1.0).to(x0.device, x0.dtype)
    allowed = torch.zeros(cfg.solver_steps + 1)
    allowed[cfg.skip:] = 1.0
    n = draws.choice(allowed / allowed.sum(), x0.shape[0]).to(x0.device)
    t_n, t_prev = grid[n], grid[n - cfg.skip]
    x_n = flow.add_noise(x0, draws.randn(x0), t_n)
    teacher_x0_n = teacher_x0(teacher, x_n, t_n, cond, uncond, cfg.guidance or 1.0)
    # Euler from t_n to t_{n-k} along the guided velocity v = (x_n - x0_hat) / t_n
    x_prev = x_n + (t_prev - t_n).view(-1, 1, 1, 1) * (x_n - teacher_x0_n) / t_n.view(-1, 1, 1, 1)
    with torch.no_grad():  # the stop-gradient target f(x_prev, t_prev); f(x, 0) = x
        target = flow.x0_from_v(x_prev, student(x_prev, t_prev, cond), t_prev)
    pred = flow.x0_from_v(x_n, student(x_n, t_n, cond), t_n)
    c = cfg.huber_c
    loss = (torch.sqrt((pred.float() - target.float()) ** 2 + c * c) - c).mean()
    return PhaseOut(loss, {"lcm_loss": loss.detach(), "t_n": t_n.float().mean()})


class LCM(Method):
    """The student (a copy of the teacher, or LoRA on it), one optimizer, one phase per iteration."""
    Config = LCMConfig
    progress = ("lcm_loss",)


    @classmethod
    def optimizer_defaults(cls) -> dict:
        return {"student": OptimizerConfig(lr=1.0e-5)}

    @classmethod
    def needs_uncond(cls, cfg: LCMConfig) -> bool:
        return cfg.guidance != 1.0  # None: the teacher's recommended scale, resolved in check()

    @classmethod
    def check(cls, cfg: LCMConfig, teacher_config: dict) -> None:
        cfg.guidance = teacher_guidance(cfg.guidance, teacher_config)
        if cfg.shift is None:
            cfg.shift = float(teacher_config.get("ladd_recommended", {}).get("shift", 1.0))

    def modules(self, device) -> dict:
        if self._modules is None:
            self.teacher = self.teacher.to(device)
            self._modules = {"student": init_student(self.teacher, self.student_cfg)}
        return self._modules

    def optimizers(self) -> dict:
        return {"student": ["student"]}

    def attach(self, modules: dict, frozen: dict) -> None:
        self.student, self.teacher = modules["student"], frozen["teacher"]
        self.place_uncond(self.student)

    def updates(self, step: int) -> list[Update]:
        return [Update(("consistency",), ("student",))]

    def loss(self, phase: str, batch, ctx: Context) -> PhaseOut:
        if phase != "consistency":
            return super().loss(phase, batch, ctx)
        x0, cond = batch.x0, batch.cond
        return consistency_step(self.student, self.teacher, x0, cond, self.uncond, self.cfg, ctx.draws)
