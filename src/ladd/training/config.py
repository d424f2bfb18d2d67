"""The trainer's config sections: ``train`` (the loop) and ``optim.<name>`` (one per optimizer a method names).

Validation runs in ``__post_init__`` (while the preset and the overrides are parsed, before any model loads);
messages name the field and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ladd.config import fail, number, positive_ints

# diffusers.optimization.get_scheduler's names that need no extra arguments
SCHEDULES = ("constant", "constant_with_warmup", "linear", "cosine")


@dataclass
class OptimizerConfig:
    """One AdamW optimizer and its learning-rate schedule (diffusers' ``get_scheduler``)."""
    lr: float = 1.0e-4
    # beta1 = 0 as StyleGAN-T (on which ADD / LADD build): momentum lags a moving adversarial target
    betas: list[float] = field(default_factory=lambda: [0.0, 0.99])
    weight_decay: float = 0.0
    grad_clip: float = 1.0           # max grad norm of this optimizer's parameters; 0 = no clipping
    schedule: str = "constant"       # constant | constant_with_warmup | linear | cosine (decay to 0 at train.steps)
    warmup_steps: int = 0            # linear warm-up from 0 (any schedule but "constant")

    def check(self, name: str) -> "OptimizerConfig":
        """Validate, naming fields ``optim.<name>.<field>``; returns self."""
        p = f"optim.{name}"
        self.lr = number(f"{p}.lr", self.lr)
        if not self.lr > 0:
            fail(f"{p}.lr", f"got {self.lr}", "give a learning rate > 0, e.g. 1.0e-5")
        betas = [number(f"{p}.betas", b) for b in self.betas]
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            fail(f"{p}.betas", f"got {betas}", "give two values in [0, 1), e.g. [0.0, 0.99]")
        self.betas = betas
        self.weight_decay, self.grad_clip = number(f"{p}.weight_decay", self.weight_decay), \
            number(f"{p}.grad_clip", self.grad_clip)
        if self.weight_decay < 0 or self.grad_clip < 0:
            fail(f"{p}.weight_decay/grad_clip", "must be >= 0", "use 0 to switch them off")
        if self.schedule not in SCHEDULES:
            fail(f"{p}.schedule", f"got {self.schedule!r}", f"use one of {SCHEDULES}")
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            fail(f"{p}.warmup_steps", f"got {self.warmup_steps!r}", "give 0 or a positive number of iterations")
        if self.warmup_steps and self.schedule == "constant":
            fail(f"{p}.warmup_steps", "is ignored by schedule 'constant'",
                 "use schedule=constant_with_warmup (or linear / cosine), or warmup_steps=0")
        return self


@dataclass
class TrainConfig:
    steps: int = 2000             # iterations (one update of every optimizer each)
    batch_size: int = 32          # global batch: over all processes and accumulation micro-steps
    grad_accum: int = 1
    mixed_precision: str = "no"   # accelerate's: "no" or "bf16" (fp16 is refused, see __post_init__)
    gradient_checkpointing: bool = False  # recompute student and teacher block activations in backward (large models)
    ema_decay: float = 0.999      # EMA of the exported module (the student); 0 = off
    # the EMA's warm-up: its decay at update u is capped at u / (u + ema_warmup), an average over about the last
    # u / ema_warmup updates until ema_decay takes over (ladd.training.ema); smaller = longer; 0 = no warm-up
    ema_warmup: float = 9.0
    # More EMAs of the same module beside the shipped one, each [decay, warmup] (e.g. [[0.999, 3]]): nothing in
    # training reads them, every checkpoint holds them (ema-<decay>-<warmup>), and `ladd export --ema DECAY:WARMUP`
    # ships one instead, so one run compares EMA horizons on validation (docs/method.md, item 8)
    extra_emas: list[list[float]] = field(default_factory=list)
    ckpt_every: int = 500
    sample_every: int = 250       # 0 = never
    log_every: int = 10
    seed: int = 0
    keep_checkpoints: int = 2     # newest checkpoints kept in <run>/checkpoints (older ones are deleted)

    def __post_init__(self):
        positive_ints("train", self, ("steps", "batch_size", "grad_accum", "ckpt_every", "log_every",
                                      "keep_checkpoints"))
        if isinstance(self.sample_every, bool) or self.sample_every < 0:
            fail("train.sample_every", f"got {self.sample_every}", "use 0 (never) or a positive interval")
        if self.batch_size % self.grad_accum:
            fail("train.batch_size", f"{self.batch_size} is not divisible by train.grad_accum={self.grad_accum}",
                 "make batch_size a multiple of grad_accum")
        if self.mixed_precision == "fp16":
            # accelerate gives all optimizers one GradScaler and updates it inside every optimizer.step(): the
            # second optimizer would be unscaled with a changed scale
            fail("train.mixed_precision", "fp16 is not supported (one loss scaler cannot serve several "
                 "optimizers)", "use 'bf16' (no loss scaling needed) or 'no'")
        if self.mixed_precision not in ("no", "bf16"):
            fail("train.mixed_precision", f"got {self.mixed_precision!r}", "use 'no' or 'bf16'")
        self.ema_decay = number("train.ema_decay", self.ema_decay)
        if not 0 <= self.ema_decay < 1:
            fail("train.ema_decay", f"got {self.ema_decay}", "use 0 (off) or a decay in (0, 1), e.g. 0.999")
        self.ema_warmup = number("train.ema_warmup", self.ema_warmup)
        if self.ema_warmup < 0:
            fail("train.ema_warmup", f"got {self.ema_warmup}", "use 0 (no warm-up) or a positive constant, e.g. 9")
        self._check_extra_emas()

    def _check_extra_emas(self) -> None:
        seen = {(self.ema_decay, self.ema_warmup)} if self.ema_decay > 0 else set()
        for i, pair in enumerate(self.extra_emas):
            name = f"train.extra_emas[{i}]"
            if len(pair) != 2:
                fail(name, f"got {pair!r}", "give [decay, warmup] pairs, e.g. [[0.999, 3]]")
            decay, warmup = (number(name, v) for v in pair)
            if not 0 < decay < 1 or warmup < 0:
                fail(name, f"got decay {decay}, warmup {warmup}", "use a decay in (0, 1) and a warm-up >= 0")
            if (decay, warmup) in seen:
                fail(name, f"[{decay:g}, {warmup:g}] is already kept (train.ema_decay / ema_warmup or an earlier "
                     "pair)", "drop it")
            seen.add((decay, warmup))
            self.extra_emas[i] = [decay, warmup]

    def keeps_ema(self) -> bool:
        """Whether the run keeps any EMA (``ema_decay`` or ``extra_emas``): a full copy of the student each."""
        return self.ema_decay > 0 or bool(self.extra_emas)

    def micro_batch(self, num_processes: int = 1) -> int:
        """Samples per process per accumulation micro-step; call once the process count is known."""
        n = self.grad_accum * num_processes
        if self.batch_size % n:
            fail("train.batch_size", f"{self.batch_size} is not divisible by grad_accum x processes = "
                 f"{self.grad_accum} x {num_processes}", f"use a multiple of {n}")
        return self.batch_size // n


FSDP_EMA = ("train.ema_decay / train.extra_emas: an EMA keeps a full copy of the student on every process, which "
            "FSDP is there to avoid (an EMA of a sharded student is not implemented); use train.ema_decay=0 and no "
            "train.extra_emas with FSDP, or DDP "
            "(e.g. with a LoRA student)")
