"""Configs for ``ladd distill``: one dataclass per concern, grouped under ``DistillConfig``.

Every choice that shared/LADD.md marks *(unconfirmed)* is a field here with the LADD.md default, so that an
ablation can settle it. Validation runs in ``__post_init__`` (i.e. while the YAML preset and the overrides are
parsed, before any model is loaded); messages name the field and say how to fix it. The two checks that need
the outside world have their own methods: ``DiscriminatorConfig.resolve_blocks(num_blocks)`` (needs the teacher's
depth, which the teacher's config.json gives without loading weights) and ``TrainConfig.micro_batch(processes)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ladd.config import ConfigError, load

# P(t_s = grid[k]) for the student grid {1, (n-1)/n, ..., 1/n} (ladd.flow.student_grid).
# 4 steps: LADD.md (unconfirmed). 2 steps: our choice, the same 0.7 on pure noise as the 4-step default and the
# rest on t = 0.5. 1 step: the only time there is.
DEFAULT_PROBS = {1: [1.0], 2: [0.7, 0.3], 4: [0.7, 0.1, 0.1, 0.1]}

# LoRA targets of diffusers' SD3 DreamBooth-LoRA script: q, k, v and output projections of the image (to_*) and
# text (add_*_proj, to_add_out) streams of every JointTransformerBlock's attention.
LORA_TARGETS = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
                "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out")


def _fail(name: str, problem: str, fix: str) -> None:
    raise ConfigError(f"{name}: {problem}; {fix}")


def _number(name: str, value) -> float:
    """A float from an int, a float or a numeric string: PyYAML reads ``5e-5`` (no dot) as a string."""
    if isinstance(value, bool):
        _fail(name, f"got {value!r}", "give a number")
    try:
        return float(value)
    except (TypeError, ValueError):
        _fail(name, f"got {value!r}", "give a number, e.g. 1.0e-4")


def _check_probs(name: str, probs: list, steps: int) -> list[float]:
    if len(probs) == 0:
        _fail(name, "is empty", f"give {steps} probabilities, one per student grid time")
    probs = [_number(name, p) for p in probs]
    if len(probs) != steps:
        _fail(name, f"has {len(probs)} entries but the grid has student.steps={steps} times",
              f"give exactly {steps} probabilities (or set student.steps={len(probs)})")
    if any(p < 0 for p in probs) or abs(sum(probs) - 1.0) > 1e-6:
        _fail(name, f"{probs} must be >= 0 and sum to 1 (sum {sum(probs):.6g})", "rescale them")
    return probs


@dataclass
class StudentConfig:
    steps: int = 4                           # size of the student grid {1, .75, .5, .25} for 4
    probs: list[float] | None = None         # P(t_s = grid[k]); None = DEFAULT_PROBS[steps]
    warmup_probs: list[float] | None = None  # LADD.md's optional warm-up grid, e.g. [0, 0, .5, .5]
    warmup_steps: int = 0                    # iterations that use warmup_probs (0 = no warm-up)
    shift: float = 1.0                       # time shift of the grid (ladd.flow.shift_times); SD3.5-Large-Turbo: 3
    # LoRA on the copy of the teacher (ladd.distill.lora; LADD.md, Components): only the adapters train.
    lora_rank: int = 0                       # 0 = full fine-tuning of every weight
    lora_alpha: float | None = None          # LoRA scale alpha / rank; None = rank (scale 1)
    # module names or name suffixes; default: the joint blocks' attention projections (diffusers' SD3 LoRA script)
    lora_targets: list[str] = field(default_factory=lambda: list(LORA_TARGETS))

    def __post_init__(self):
        self._check_lora()
        if self.steps < 1:
            _fail("student.steps", f"got {self.steps}, the student grid would be empty", "use 1, 2 or 4")
        self.shift = _number("student.shift", self.shift)
        if not self.shift > 0:
            _fail("student.shift", f"got {self.shift}", "use a positive shift: 1 (none) or e.g. 3 (SD3.5-Large-Turbo)")
        if self.probs is None:
            if self.steps not in DEFAULT_PROBS:
                _fail("student.probs", f"has no default for student.steps={self.steps}",
                      f"give {self.steps} probabilities or use steps 1, 2 or 4")
            self.probs = list(DEFAULT_PROBS[self.steps])
        self.probs = _check_probs("student.probs", self.probs, self.steps)
        if self.warmup_probs is not None:
            self.warmup_probs = _check_probs("student.warmup_probs", self.warmup_probs, self.steps)
        if self.warmup_steps < 0 or (self.warmup_steps > 0 and self.warmup_probs is None):
            _fail("student.warmup_steps", f"got {self.warmup_steps}",
                  "use 0, or a positive count together with student.warmup_probs")

    def probs_at(self, step: int) -> list[float]:
        """The grid probabilities used at training iteration ``step``."""
        return self.warmup_probs if step < self.warmup_steps else self.probs

    def _check_lora(self) -> None:
        if isinstance(self.lora_rank, bool) or not isinstance(self.lora_rank, int) or self.lora_rank < 0:
            _fail("student.lora_rank", f"got {self.lora_rank!r}", "use 0 (full fine-tuning) or a rank >= 1, e.g. 16")
        if self.lora_alpha is not None:
            self.lora_alpha = _number("student.lora_alpha", self.lora_alpha)
            if not self.lora_alpha > 0:
                _fail("student.lora_alpha", f"got {self.lora_alpha}", "use a positive number or null (= lora_rank)")
        if isinstance(self.lora_targets, str) or not self.lora_targets:
            _fail("student.lora_targets", f"got {self.lora_targets!r}",
                  "give a non-empty list of module names, e.g. '[attn.to_q,attn.to_v]'")
        bad = [t for t in self.lora_targets if not isinstance(t, str) or not t.strip(". ")]
        if bad:
            _fail("student.lora_targets", f"{bad} are not module names", "give names like attn.to_q")


@dataclass
class DiscriminatorConfig:
    # Tapped teacher blocks: "all" (LADD.md's default for small teachers), "spaced:K" (K evenly spaced blocks
    # ending with the last, LADD.md's choice for large teachers; SANA uses 4 of 20) or a list of block indices.
    # Typed Any because ladd.config coerces only one branch of a Union; checked here instead.
    blocks: Any = "all"
    # Heads: width 64, two residual 3x3 blocks (StyleGAN-T has one; a previous attempt's heads were too weak).
    # Measured on the nano teacher (CPU, batch 16): 6 such heads add ~0.2x of a teacher training step per
    # iteration; width 128 / depth 1 adds ~0.35x. The teacher passes alone already cost ~2x (see steps.py).
    head_width: int = 64
    head_depth: int = 2        # residual 3x3 conv blocks per head
    norm: str = "group"        # "group" (GroupNorm) or "spectral" (spectral norm on the convs)
    t_embed_dim: int = 128     # sinusoidal embedding of t_hat, concatenated with the pooled text embedding
    noise_m: float = 1.0       # t_hat ~ LogitNormal(m, s) (LADD.md: m = 1, s = 1; median t_hat 0.73)
    noise_s: float = 1.0
    shared_t: bool = False     # real and fake share t_hat (LADD.md unconfirmed; default: independent draws)

    def __post_init__(self):
        self._check_blocks()
        for name in ("head_width", "head_depth", "t_embed_dim"):
            if getattr(self, name) < 1:
                _fail(f"disc.{name}", f"got {getattr(self, name)}", "give a positive integer")
        if self.norm not in ("group", "spectral"):
            _fail("disc.norm", f"got {self.norm!r}", "use 'group' or 'spectral'")
        self.noise_m, self.noise_s = _number("disc.noise_m", self.noise_m), _number("disc.noise_s", self.noise_s)
        if not abs(self.noise_m) <= 5:
            _fail("disc.noise_m", f"got {self.noise_m}, t_hat would be almost always 0 or 1",
                  "use -5 <= m <= 5 (LADD.md default 1)")
        if not 0 < self.noise_s <= 5:
            _fail("disc.noise_s", f"got {self.noise_s}", "use 0 < s <= 5 (LADD.md default 1)")

    def _check_blocks(self) -> None:
        b = self.blocks
        if isinstance(b, str):
            if b == "all":
                return
            if b.startswith("spaced:") and b[7:].isdigit() and int(b[7:]) >= 1:
                return
            _fail("disc.blocks", f"got {b!r}", "use 'all', 'spaced:K' (K >= 1) or a list of block indices")
        if not isinstance(b, (list, tuple)) or len(b) == 0:
            _fail("disc.blocks", f"got {b!r}", "use 'all', 'spaced:K' or a non-empty list of block indices")
        bad = [i for i in b if isinstance(i, bool) or not isinstance(i, int) or i < 0]
        if bad:
            _fail("disc.blocks", f"{bad} are not block indices", "give integers >= 0 (block 0 is the first)")
        if len(set(b)) != len(b):
            _fail("disc.blocks", f"{list(b)} has duplicates", "list each block once")
        self.blocks = list(b)

    def resolve_blocks(self, num_blocks: int) -> list[int]:
        """The tapped block indices for a teacher with ``num_blocks`` transformer blocks."""
        if self.blocks == "all":
            return list(range(num_blocks))
        if isinstance(self.blocks, str):  # "spaced:K"
            k = int(self.blocks[7:])
            if k > num_blocks:
                _fail("disc.blocks", f"asks for {k} blocks but the teacher has {num_blocks}",
                      f"use spaced:K with K <= {num_blocks}")
            return [round((i + 1) * num_blocks / k) - 1 for i in range(k)]
        unknown = [i for i in self.blocks if i >= num_blocks]
        if unknown:
            _fail("disc.blocks", f"unknown block index {unknown}: the teacher has {num_blocks} blocks "
                  f"(0..{num_blocks - 1})", "remove them or use 'all'")
        return list(self.blocks)


@dataclass
class LossConfig:
    kind: str = "hinge"              # "hinge" (LADD.md) or "non_saturating" (softplus)
    r1_weight: float = 0.0           # R1 on the real head inputs; LADD.md suggests about 1e-5 when on
    misaligned_weight: float = 0.0   # share w of D's fake side given to real latents with shuffled prompts (0 = off)
    distill_weight: float = 0.0      # ADD-style MSE to the teacher's x0 at the re-noised fake (0 = off)

    def __post_init__(self):
        if self.kind not in ("hinge", "non_saturating"):
            _fail("loss.kind", f"got {self.kind!r}", "use 'hinge' or 'non_saturating'")
        for name in ("r1_weight", "misaligned_weight", "distill_weight"):
            value = _number(f"loss.{name}", getattr(self, name))
            if value < 0:
                _fail(f"loss.{name}", f"got {value}", "use 0 (off) or a positive weight")
            setattr(self, name, value)
        if self.misaligned_weight >= 1:
            _fail("loss.misaligned_weight", f"got {self.misaligned_weight}, the student's fakes would get no weight",
                  "use a share in [0, 1), e.g. 0.25")


@dataclass
class OptimConfig:
    lr_student: float = 1.0e-5
    lr_heads: float = 1.0e-4
    # beta1 = 0 for both, as StyleGAN-T (on which ADD/LADD build): momentum lags a moving adversarial target.
    betas_student: list[float] = field(default_factory=lambda: [0.0, 0.99])
    betas_heads: list[float] = field(default_factory=lambda: [0.0, 0.99])
    weight_decay: float = 0.0
    grad_clip: float = 1.0           # max grad norm, for student and heads each; 0 = no clipping

    def __post_init__(self):
        for name in ("lr_student", "lr_heads"):
            value = _number(f"optim.{name}", getattr(self, name))
            if not value > 0:
                _fail(f"optim.{name}", f"got {value}", "give a learning rate > 0, e.g. 1.0e-5")
            setattr(self, name, value)
        for name in ("betas_student", "betas_heads"):
            betas = [_number(f"optim.{name}", b) for b in getattr(self, name)]
            if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
                _fail(f"optim.{name}", f"got {betas}", "give two values in [0, 1), e.g. [0.0, 0.99]")
            setattr(self, name, betas)
        self.weight_decay, self.grad_clip = _number("optim.weight_decay", self.weight_decay), \
            _number("optim.grad_clip", self.grad_clip)
        if self.weight_decay < 0 or self.grad_clip < 0:
            _fail("optim.weight_decay/grad_clip", "must be >= 0", "use 0 to switch them off")


FSDP_EMA = ("train.ema_decay: the EMA keeps a full copy of the student on every process, which FSDP is there to "
            "avoid (an EMA of a sharded student is not implemented); use train.ema_decay=0 with FSDP, or DDP "
            "(e.g. with a LoRA student)")


@dataclass
class TrainConfig:
    steps: int = 2000             # LADD iterations (one G step + one D step each)
    batch_size: int = 32          # global batch: over all processes and accumulation micro-steps
    grad_accum: int = 1
    mixed_precision: str = "no"   # accelerate's: "no" or "bf16" (fp16 is refused, see __post_init__)
    gradient_checkpointing: bool = False  # recompute student and teacher block activations in backward (large models)
    ema_decay: float = 0.999      # EMA of the student; 0 = off
    ckpt_every: int = 500
    sample_every: int = 250       # 0 = never
    log_every: int = 10
    seed: int = 0
    keep_checkpoints: int = 2     # newest checkpoints kept in <run>/checkpoints (older ones are deleted)

    def __post_init__(self):
        for name in ("steps", "batch_size", "grad_accum", "ckpt_every", "log_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                _fail(f"train.{name}", f"got {getattr(self, name)}", "give a positive integer")
        if self.sample_every < 0:
            _fail("train.sample_every", f"got {self.sample_every}", "use 0 (never) or a positive interval")
        if self.batch_size % self.grad_accum:
            _fail("train.batch_size", f"{self.batch_size} is not divisible by train.grad_accum={self.grad_accum}",
                  "make batch_size a multiple of grad_accum")
        if self.mixed_precision == "fp16":
            # accelerate gives all optimizers one GradScaler and updates it inside every optimizer.step(): the
            # second of our two optimizers would be unscaled with a changed scale
            _fail("train.mixed_precision", "fp16 is not supported (one loss scaler cannot serve the student's and "
                  "the heads' optimizers)", "use 'bf16' (no loss scaling needed) or 'no'")
        if self.mixed_precision not in ("no", "bf16"):
            _fail("train.mixed_precision", f"got {self.mixed_precision!r}", "use 'no' or 'bf16'")
        self.ema_decay = _number("train.ema_decay", self.ema_decay)
        if not 0 <= self.ema_decay < 1:
            _fail("train.ema_decay", f"got {self.ema_decay}", "use 0 (off) or a decay in (0, 1), e.g. 0.999")

    def micro_batch(self, num_processes: int = 1) -> int:
        """Samples per process per accumulation micro-step; call once the process count is known."""
        n = self.grad_accum * num_processes
        if self.batch_size % n:
            _fail("train.batch_size", f"{self.batch_size} is not divisible by grad_accum x processes = "
                  f"{self.grad_accum} x {num_processes}", f"use a multiple of {n}")
        return self.batch_size // n


SAMPLERS = ("euler", "renoise")


def _check_size(name: str, value: int) -> None:
    if value < 32 or value % 16:
        _fail(name, f"got {value}", "use a multiple of 16 that is at least 32 (e.g. 64)")


@dataclass
class DataConfig:
    """The training latents (``ladd synth``; shared/LADD.md, Synthetic data). Unset teacher settings come from
    the teacher's ``config.json`` ``ladd_recommended`` (its many-step CFG setting)."""
    source: str = "synthetic"        # "synthetic" (teacher samples, the paper's choice) or "real" (ShapeWorld via VAE)
    num_samples: int = 8192
    shard_size: int = 1024           # samples per shard file; shard k is written by process k % world_size
    seed: int = 2                    # ShapeWorld scenes/captions and sample noise (the nano teacher saw seed 1)
    guidance: float | None = None    # teacher CFG scale (None: the teacher's recommended)
    steps: int | None = None         # teacher sampling steps (None: recommended)
    sampler: str | None = None       # "euler" or "renoise" (None: recommended)
    batch_size: int = 128            # teacher batch while sampling (CFG doubles it)
    height: int = 64
    width: int = 64
    prompts: str | None = None       # prompt file (.txt, one per line, or .jsonl) replacing the ShapeWorld captions
    precision: str = "fp32"          # the teacher while sampling: "fp32", or "bf16" (bf16 weights + autocast: GPUs)

    def __post_init__(self):
        if self.source not in ("synthetic", "real"):
            _fail("data.source", f"got {self.source!r}", "use 'synthetic' (teacher samples) or 'real' (VAE-encoded)")
        if self.precision not in ("fp32", "bf16"):
            _fail("data.precision", f"got {self.precision!r}", "use 'fp32' or 'bf16' (bf16 halves the teacher's "
                  "memory and is several times faster on GPUs)")
        if self.source == "real" and self.prompts is not None:
            _fail("data.prompts", "replaces the captions of teacher samples; real data are ShapeWorld images with "
                  "their own captions", "use data.source=synthetic or data.prompts=null")
        for name in ("num_samples", "shard_size", "batch_size"):
            if getattr(self, name) < 1:
                _fail(f"data.{name}", f"got {getattr(self, name)}", "give a positive integer")
        if self.guidance is not None:
            self.guidance = _number("data.guidance", self.guidance)
            if self.guidance < 0:
                _fail("data.guidance", f"got {self.guidance}", "use 1 (no guidance) or more, or null for the default")
        if self.steps is not None and self.steps < 1:
            _fail("data.steps", f"got {self.steps}", "give a positive step count or null for the default")
        if self.sampler is not None and self.sampler not in SAMPLERS:
            _fail("data.sampler", f"got {self.sampler!r}", f"use one of {SAMPLERS} or null for the default")
        _check_size("data.height", self.height)
        _check_size("data.width", self.width)

    @property
    def num_shards(self) -> int:
        return -(-self.num_samples // self.shard_size)


@dataclass
class EvalSettings:
    """What ``ladd distill`` evaluates after training (ladd.evaluation.evaluate on ``prompts``): the student at
    each of ``student_steps`` without guidance, the teacher at each of ``teacher_steps`` and at its recommended
    setting (both with the teacher's recommended guidance and sampler)."""
    enabled: bool = True
    prompts: str = "prompts/nano-eval.jsonl"
    max_prompts: int | None = None   # evenly spaced subset of the prompt file (keeps every category); None = all
    per_prompt: int = 4
    student_steps: list[int] = field(default_factory=lambda: [1, 2, 4])
    sampler: str = "renoise"         # the student's sampler (LADD.md, Inference)
    teacher_steps: list[int] = field(default_factory=lambda: [4])
    seed: int = 0
    batch_size: int = 64
    grid_prompts: int = 8            # rows of the side-by-side comparison grid
    evaluator: str = "nano-evaluator"
    cache_dir: str = "cache/eval"

    def __post_init__(self):
        for name in ("per_prompt", "batch_size", "grid_prompts"):
            if getattr(self, name) < 1:
                _fail(f"eval.{name}", f"got {getattr(self, name)}", "give a positive integer")
        if self.max_prompts is not None and self.max_prompts < 1:
            _fail("eval.max_prompts", f"got {self.max_prompts}", "give a positive count or null for all prompts")
        for name in ("student_steps", "teacher_steps"):
            bad = [s for s in getattr(self, name) if s < 1]
            if bad:
                _fail(f"eval.{name}", f"{bad} are not step counts", "give positive integers, e.g. [1, 2, 4]")
        if not self.student_steps:
            _fail("eval.student_steps", "is empty", "give at least one step count, e.g. [4]")
        if self.sampler not in SAMPLERS:
            _fail("eval.sampler", f"got {self.sampler!r}", f"use one of {SAMPLERS}")


@dataclass
class PathsConfig:
    teacher: str = "assets/nano/teacher"
    vae: str = "assets/nano/vae"          # only to decode preview samples
    data: str = "runs/nano-synth"         # synthetic shards (latents + prompt embeddings)
    run_dir: str = "runs/nano-ladd"
    text_cache: str | None = None         # on-disk cache of prompt embeddings (SD3 encoders); None = in memory only


@dataclass
class DistillConfig:
    student: StudentConfig = field(default_factory=StudentConfig)
    disc: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalSettings = field(default_factory=EvalSettings)
    paths: PathsConfig = field(default_factory=PathsConfig)

    def __post_init__(self):
        if self.student.warmup_steps > self.train.steps:
            _fail("student.warmup_steps", f"{self.student.warmup_steps} > train.steps={self.train.steps}",
                  "shorten the warm-up")


def load_distill_config(preset: str | Path | None = None, overrides=()) -> DistillConfig:
    """Defaults, then the YAML ``preset`` (e.g. configs/nano.yaml), then dotted ``overrides``
    (``["optim.lr_heads=3e-4", "disc.blocks=[0,5]"]``); raises ``ConfigError`` before anything is loaded."""
    return load(DistillConfig, preset, overrides)
