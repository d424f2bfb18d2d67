"""The config of ``ladd distill`` / ``ladd synth``: generic sections plus the selected method's own section.

    method: ladd            which method (ladd.methods.METHODS); its section is named after it:
    ladd: {disc: ..., loss: ...}
    student: ...            the student grid, how training picks its input times, LoRA (ladd.methods.base)
    optim: {student: {lr: ...}, heads: {...}}   one entry per optimizer the method names (ladd.training.config)
    train: ...              the trainer (ladd.training.config)
    data / eval / paths     below

Validation runs while the YAML preset and the dotted overrides are parsed, before any model is loaded; messages
name the field and say how to fix it. Checks that need the teacher's config.json (e.g. the tapped blocks) run in
ladd.distill.run.check_config, still before any weight loads.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ladd.config import apply_override, fail, from_dict, number, read_preset
from ladd.methods import METHODS, method_class
from ladd.methods.base import StudentConfig
from ladd.training.config import FSDP_EMA, OptimizerConfig, TrainConfig

__all__ = ["FSDP_EMA", "DistillConfig", "load_distill_config"]

SAMPLERS = ("euler", "renoise")


def _check_size(name: str, value: int) -> None:
    if value < 32 or value % 16:
        fail(name, f"got {value}", "use a multiple of 16 that is at least 32 (e.g. 64)")


@dataclass
class DataConfig:
    """The training latents (``ladd synth``; docs/method.md, Synthetic data). Unset teacher settings come from
    the teacher's ``config.json`` ``ladd_recommended`` (its many-step CFG setting)."""
    source: str = "synthetic"        # "synthetic" (teacher samples, the paper's choice) or "real" (ShapeWorld via VAE)
    num_samples: int = 8192
    shard_size: int = 1024           # samples per shard file; shard k is written by process k % world_size
    seed: int = 2                    # ShapeWorld scenes/captions and sample noise (the nano teacher saw seed 1)
    guidance: float | None = None    # teacher CFG scale (None: the teacher's recommended)
    steps: int | None = None         # teacher sampling steps (None: recommended)
    sampler: str | None = None       # "euler" or "renoise" (None: recommended)
    batch_size: int = 128            # teacher batch while sampling (CFG doubles it)
    height: int = 64                 # the size previews and validation sample
    width: int = 64
    # aspect buckets, [[height, width], ...] (e.g. [[64, 64], [64, 96], [96, 64]]): shard k holds bucket
    # k % len(buckets), each training batch one bucket (by its share of the samples); null: data.height x width only
    buckets: list | None = None
    prompts: str | None = None       # prompt file (.txt, one per line, or .jsonl) replacing the ShapeWorld captions
    precision: str = "fp32"          # the teacher while sampling: "fp32", or "bf16" (bf16 weights + autocast: GPUs)
    # training reads each batch from the shard files (ladd.data.stream) instead of holding the whole set in host
    # and GPU memory: for sets larger than memory (100k+ SD3 samples at 3.7 MB each)
    stream: bool = False

    def __post_init__(self):
        if self.source not in ("synthetic", "real"):
            fail("data.source", f"got {self.source!r}", "use 'synthetic' (teacher samples) or 'real' (VAE-encoded)")
        if self.precision not in ("fp32", "bf16"):
            fail("data.precision", f"got {self.precision!r}", "use 'fp32' or 'bf16' (bf16 halves the teacher's "
                  "memory and is several times faster on GPUs)")
        if self.source == "real" and self.prompts is not None:
            fail("data.prompts", "replaces the captions of teacher samples; real data are ShapeWorld images with "
                  "their own captions", "use data.source=synthetic or data.prompts=null")
        if not isinstance(self.stream, bool):
            fail("data.stream", f"got {self.stream!r}", "use true (read batches from the files) or false")
        for name in ("num_samples", "shard_size", "batch_size"):
            if getattr(self, name) < 1:
                fail(f"data.{name}", f"got {getattr(self, name)}", "give a positive integer")
        if self.guidance is not None:
            self.guidance = number("data.guidance", self.guidance)
            if self.guidance < 0:
                fail("data.guidance", f"got {self.guidance}", "use 1 (no guidance) or more, or null for the default")
        if self.steps is not None and self.steps < 1:
            fail("data.steps", f"got {self.steps}", "give a positive step count or null for the default")
        if self.sampler is not None and self.sampler not in SAMPLERS:
            fail("data.sampler", f"got {self.sampler!r}", f"use one of {SAMPLERS} or null for the default")
        _check_size("data.height", self.height)
        _check_size("data.width", self.width)
        if self.buckets is not None:
            self._check_buckets()

    def _check_buckets(self) -> None:
        how = "give [[height, width], ...], e.g. [[64, 64], [64, 96], [96, 64]], or null"
        if not isinstance(self.buckets, (list, tuple)) or not self.buckets or not all(
                isinstance(b, (list, tuple)) and len(b) == 2 and all(isinstance(v, int) for v in b)
                for b in self.buckets):
            fail("data.buckets", f"got {self.buckets!r}", how)
        for h, w in self.buckets:
            _check_size("data.buckets height", h)
            _check_size("data.buckets width", w)
        if len({tuple(b) for b in self.buckets}) != len(self.buckets):
            fail("data.buckets", f"{self.buckets} lists a size twice", "list each size once")
        self.buckets = [list(b) for b in self.buckets]
        if self.num_shards < len(self.buckets):
            fail("data.buckets", f"{len(self.buckets)} buckets but {self.num_shards} shard(s) (each shard holds one "
                  "bucket)", f"lower data.shard_size to at most {self.num_samples // len(self.buckets)}")

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
    sampler: str | None = None       # the student's sampler here; None: the one it ships with (student.sampler)
    teacher_steps: list[int] = field(default_factory=lambda: [4])
    seed: int = 0
    batch_size: int = 64
    grid_prompts: int = 8            # rows of the side-by-side comparison grid
    evaluator: str = "nano-evaluator"
    cache_dir: str = "cache/eval"
    # Validation during training (ladd.distill.validate), on a prompt file disjoint from the evaluation files:
    # the student at each of student_steps every val_every iterations -> val.jsonl, val.png; 0 = off.
    val_prompts: str = "prompts/nano-val.jsonl"
    val_every: int = 0
    val_per_prompt: int = 1
    select_best: bool = False        # export the validated state with the best alignment at student.steps
    # ... among the states whose FD is within this share of the lowest validated FD (null: alignment alone). A
    # session-17 run's alignment-only pick had FD 11.25 against the run's lowest 7.02 (student-gap.md).
    select_fd_slack: float | None = 0.1

    def __post_init__(self):
        for name in ("per_prompt", "batch_size", "grid_prompts"):
            if getattr(self, name) < 1:
                fail(f"eval.{name}", f"got {getattr(self, name)}", "give a positive integer")
        if isinstance(self.val_every, bool) or self.val_every < 0:
            fail("eval.val_every", f"got {self.val_every!r}", "use 0 (no validation) or an interval, e.g. 100")
        if self.val_per_prompt < 1:
            fail("eval.val_per_prompt", f"got {self.val_per_prompt}", "give a positive integer")
        if self.select_fd_slack is not None:
            self.select_fd_slack = number("eval.select_fd_slack", self.select_fd_slack)
            if self.select_fd_slack < 0:
                fail("eval.select_fd_slack", f"got {self.select_fd_slack}", "use a share >= 0, e.g. 0.1, or null")
        if self.select_best and not self.val_every:
            fail("eval.select_best", "needs validation to select from", "set eval.val_every, e.g. 100")
        if self.max_prompts is not None and self.max_prompts < 1:
            fail("eval.max_prompts", f"got {self.max_prompts}", "give a positive count or null for all prompts")
        for name in ("student_steps", "teacher_steps"):
            bad = [s for s in getattr(self, name) if s < 1]
            if bad:
                fail(f"eval.{name}", f"{bad} are not step counts", "give positive integers, e.g. [1, 2, 4]")
        if not self.student_steps:
            fail("eval.student_steps", "is empty", "give at least one step count, e.g. [4]")
        if self.sampler is not None and self.sampler not in SAMPLERS:
            fail("eval.sampler", f"got {self.sampler!r}", f"use one of {SAMPLERS} or null (the student's own)")


@dataclass
class PathsConfig:
    teacher: str = "assets/nano/teacher"
    vae: str = "assets/nano/vae"          # only to decode preview samples
    data: str = "runs/nano-synth"         # synthetic shards (latents + prompt embeddings)
    # the discriminator's reals from another data folder, while the student trains on paths.data; for the nano
    # world `ladd distill` makes it when missing (real ShapeWorld images of data.seed through the VAE, as
    # `ladd synth data.source=real`); with a prompt file, the user's own images made beforehand. null = paths.data.
    # Set aside (null) for a method whose discriminator takes no reals (ladd.methods.base.Method.takes_reals)
    reals: str | None = None
    run_dir: str = "runs/nano-ladd"
    text_cache: str | None = None         # on-disk cache of prompt embeddings (SD3 encoders); None = in memory only


@dataclass
class _Sections:
    """The sections every method shares (parsed by ladd.config.from_dict)."""
    student: StudentConfig = field(default_factory=StudentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalSettings = field(default_factory=EvalSettings)
    paths: PathsConfig = field(default_factory=PathsConfig)


@dataclass
class DistillConfig(_Sections):
    method: str = "ladd"
    section: Any = None                                  # the method's own config (e.g. LADDConfig)
    optim: dict[str, OptimizerConfig] = field(default_factory=dict)

    def __post_init__(self):
        cls = method_class(self.method)
        if self.section is None:
            self.section = cls.Config()
        if not self.optim:
            self.optim = {name: o.check(name) for name, o in cls.optimizer_defaults().items()}
        if self.student.warmup_steps > self.train.steps:
            fail("student.warmup_steps", f"{self.student.warmup_steps} > train.steps={self.train.steps}",
                 "shorten the warm-up")
        if self.student.start_time != 1.0 and self.method in ("lcm", "few_step"):
            fail("student.start_time", f"got {self.student.start_time} with method={self.method}, which samples "
                 "from t = 1", "leave it at 1 for this method (LADD, ADD and DMD2 read it)")

    def __getattr__(self, name: str):
        """``cfg.ladd`` (the section of the selected method, by its name)."""
        if name != "method" and name == self.__dict__.get("method"):
            return self.__dict__["section"]
        raise AttributeError(name)

    def to_dict(self) -> dict:
        """As a preset would write it: ``method``, its section under its name, then the shared sections."""
        out = {"method": self.method, self.method: dataclasses.asdict(self.section) if self.section else {}}
        out.update({f.name: dataclasses.asdict(getattr(self, f.name)) for f in dataclasses.fields(_Sections)})
        out["optim"] = {name: dataclasses.asdict(o) for name, o in self.optim.items()}
        return out


# sections and fields of earlier ladd versions, with where they went
_MOVED = {"disc": "ladd.disc", "loss": "ladd.loss"}


def config_from_dict(data: dict) -> DistillConfig:
    """A DistillConfig from a preset's mapping (after overrides); raises ConfigError naming the field."""
    data = dict(data)
    name = data.pop("method", None) or "ladd"
    cls = method_class(name)
    for old, new in _MOVED.items():
        if old in data:
            fail(old, f"is now the section {new}", f"move it under '{new.split('.')[0]}:' (see configs/nano.yaml)")
    for other in sorted(k for k in data if k in METHODS and k != name):
        # a preset may carry other methods' settings (e.g. a base shared by several): checked, then set aside
        from_dict(method_class(other).Config, data.pop(other) or {}, prefix=other + ".")
    section = from_dict(cls.Config, data.pop(name, None) or {}, prefix=name + ".")
    optim = _optimizers(name, cls.optimizer_defaults(), data.pop("optim", None) or {})
    shared = from_dict(_Sections, data)
    if shared.paths.reals is not None and not cls.takes_reals(section):
        # the heads' reals of a preset shared by several methods (configs/nano.yaml) are set aside, like the
        # other methods' sections: this method has no discriminator that takes them
        shared.paths.reals = None
    return DistillConfig(**{f.name: getattr(shared, f.name) for f in dataclasses.fields(_Sections)},
                         method=name, section=section, optim=optim)


def _optimizers(method: str, defaults: dict, given: dict) -> dict[str, OptimizerConfig]:
    if not isinstance(given, dict):
        fail("optim", f"got {given!r}", "give one mapping per optimizer, e.g. optim.student.lr=1e-5")
    flat = sorted(k for k, v in given.items() if not isinstance(v, dict))
    if flat:
        fail(f"optim.{flat[0]}", "optimizer settings are per optimizer now",
             f"use optim.<name>.<field> with <name> in {sorted(defaults)}, e.g. optim.student.lr "
             f"(was optim.lr_student)")
    # optimizers of other methods (a preset shared by several) are set aside, like their sections
    elsewhere = {o for m in METHODS for o in method_class(m).optimizer_defaults()}
    unknown = sorted(set(given) - set(defaults) - elsewhere)
    if unknown:
        fail(f"optim.{unknown[0]}", f"method {method} has no optimizer {unknown[0]!r}",
             f"use one of {sorted(defaults)}")
    return {name: from_dict(OptimizerConfig, {**dataclasses.asdict(d), **given.get(name, {})},
                            prefix=f"optim.{name}.").check(name) for name, d in defaults.items()}


def load_distill_config(preset: str | Path | None = None, overrides=()) -> DistillConfig:
    """Defaults, then the YAML ``preset`` (e.g. configs/nano.yaml), then dotted ``overrides``
    (``["optim.heads.lr=3e-4", "ladd.disc.blocks=[0,5]"]``); raises ``ConfigError`` before anything is loaded."""
    data = read_preset(preset) if preset is not None else {}
    for o in overrides:
        apply_override(data, o)
    return config_from_dict(data)
