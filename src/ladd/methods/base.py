"""The method interface: what the one trainer (ladd.training.trainer) knows of a distillation method.

A method is one file under ``ladd/methods/`` holding a config dataclass (its section of the preset, selected by
``method: <name>``) and a ``Method`` subclass registered in ``ladd.methods.METHODS``. The trainer asks it for

    modules()        the trainable modules by name ({"student": G, "heads": D} for LADD), built from the teacher
    optimizers()     optimizer name -> the modules it steps ({"student": ["student"], "heads": ["heads"]});
                     their settings come from ``optim.<name>`` over ``optimizer_defaults()``
    attach(...)      the same modules as prepared by accelerate (DDP / FSDP wrappers), and the frozen teacher
    updates(step)    the updates of one iteration, each a list of phases backpropagated over every micro-batch
                     and then the optimizers it steps: LADD [Update(("generator", "discriminator"), ("student",
                     "heads"))]; DMD2 would list k critic updates and then a generator update
    loss(phase, batch, ctx)  one phase's scalar loss and detached metrics; ``ctx.store`` carries what a phase
                     hands to the next of the same micro-batch (LADD: the fakes' teacher features)

and ships ``modules()[export]`` (the EMA of it when ``train.ema_decay > 0``). A method without trainable modules
(``few_step``: the teacher itself at a few steps) returns ``{}`` and the trainer runs no iteration. Shared pieces
(GAN losses, feature heads, noising, the student forward) live in ``ladd.methods.components``. See
docs/architecture.md, "Adding a method".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ladd import flow
from ladd.config import fail, number
from ladd.models.lora import LORA_TARGETS
from ladd.methods.components.student import freeze
from ladd.training.contract import Context, PhaseOut, Update


__all__ = ["Context", "Method", "PhaseOut", "StudentConfig", "Update", "teacher_guidance"]

# P(t_s = grid[k]) for the student grid {1, (n-1)/n, ..., 1/n} (ladd.flow.student_grid).
# 4 steps: docs/method.md (the paper's, unconfirmed). 2 steps: our choice, the same 0.7 on pure noise as the 4-step
# default and the rest on t = 0.5. 1 step: the only time there is.
DEFAULT_PROBS = {1: [1.0], 2: [0.7, 0.3], 4: [0.7, 0.1, 0.1, 0.1]}


def _check_probs(name: str, probs: list, steps: int) -> list[float]:
    if len(probs) == 0:
        fail(name, "is empty", f"give {steps} probabilities, one per student grid time")
    probs = [number(name, p) for p in probs]
    if len(probs) != steps:
        fail(name, f"has {len(probs)} entries but the grid has student.steps={steps} times",
             f"give exactly {steps} probabilities (or set student.steps={len(probs)})")
    if any(p < 0 for p in probs) or abs(sum(probs) - 1.0) > 1e-6:
        fail(name, f"{probs} must be >= 0 and sum to 1 (sum {sum(probs):.6g})", "rescale them")
    return probs


def _check_shifts(shifts) -> dict[int, float]:
    """``student.sample_shifts`` as {step count: shift}: positive integer step counts, positive shifts."""
    example = "e.g. {2: 3} (the 2-step sampler at times {1, .75}), or {} for none"
    if not isinstance(shifts, dict):
        fail("student.sample_shifts", f"got {shifts!r}", f"give a mapping of step count to shift, {example}")
    out = {}
    for k, v in shifts.items():
        steps = int(k) if isinstance(k, str) and k.isdigit() else k
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            fail("student.sample_shifts", f"has the step count {k!r}", f"use positive integers as keys, {example}")
        shift = number(f"student.sample_shifts[{steps}]", v)
        if not shift > 0:
            fail(f"student.sample_shifts[{steps}]", f"got {v!r}", "use a positive shift: 1 (none), > 1 later times")
        out[steps] = shift
    return out


@dataclass
class StudentConfig:
    """The few-step student every method trains: its grid, how training picks its input times, LoRA."""
    steps: int = 4                           # size of the student grid {1, .75, .5, .25} for 4
    probs: list[float] | None = None         # P(t_s = grid[k]); None = DEFAULT_PROBS[steps]
    warmup_probs: list[float] | None = None  # docs/method.md's optional warm-up grid, e.g. [0, 0, .5, .5]
    warmup_steps: int = 0                    # iterations that use warmup_probs (0 = no warm-up)
    shift: float = 1.0                       # time shift of the grid (ladd.flow.shift_times); SD3.5-Large-Turbo: 3
    # which grid (ladd.flow.GRIDS): "uniform" {1, .75, .5, .25} then shifted; "diffusers" the stock scheduler's
    # default for student.steps (the same for shift 1; for another shift the exported pipeline's default call is
    # then the trained grid, docs/real-models.md)
    grid: str = "uniform"
    # The time the student reads its starting noise at: the first grid time, whose input is pure noise (1: the
    # paper's). Below 1 the (unit) noise is read as a noised latent at that time, so that the copy of the teacher
    # starts from a prediction that depends on the noise (at t = 1 the teacher's x0 is the prompt's mean image):
    # SiD's sigma_init (Zhou et al. 2024, arXiv 2404.04057). Sampling at every step count starts there
    # (docs/method.md, "The student's start time"; docs/experiments/student-gap.md, session 52).
    start_time: float = 1.0
    # The sampler the student is distilled for and ships with (ladd.sampling): its backward-simulation rollouts and
    # its card's recommended sampler. "renoise": fresh noise at each step (docs/method.md, Inference); "euler": the
    # predicted noise kept (deterministic; stock diffusers' FlowMatchEulerDiscreteScheduler).
    sampler: str = "renoise"
    # The time-grid shift the exported card recommends at other step counts than student.steps (step count ->
    # shift, ladd.flow.shift_times), e.g. {2: 3}: the 4-step student's 2-step sampler at times {1, .75} instead of
    # {1, .5}. A sampling choice made after training on validation prompts (docs/experiments/student-gap.md,
    # session 36); training never reads it.
    sample_shifts: dict[int, float] = field(default_factory=dict)
    # LoRA on the copy of the teacher (ladd.models.lora; docs/method.md, Components): only the adapters train.
    lora_rank: int = 0                       # 0 = full fine-tuning of every weight
    lora_alpha: float | None = None          # LoRA scale alpha / rank; None = rank (scale 1)
    # module names or name suffixes; default: the joint blocks' attention projections (diffusers' SD3 LoRA script)
    lora_targets: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    # Parameters kept at their starting values: those whose name (in the transformer, e.g.
    # transformer_blocks.0.ff_context.net.2.weight) contains one of these parts, e.g. [context, attn.add_,
    # to_add_out, norm_added, text_embedder] for the text stream; only the rest trains, as with LoRA's base.
    # Checked against the teacher's architecture before any work starts (docs/method.md). Empty: every weight trains.
    frozen: list[str] = field(default_factory=list)
    # The weights the student starts from: null = the teacher's (docs/method.md, Components); a folder holding a
    # model of the teacher's architecture (an exported student such as assets/nano/student, a diffusers transformer
    # or pipeline folder) to go on distilling it, or to start a student of fewer steps from one of more
    # (progressive distillation). Read once, when the run starts; a resumed run takes its checkpoint's weights.
    init: str | None = None
    # Copies of this many of the teacher's blocks, each inserted after its original with its gates at zero (ladd.models.grow;
    # docs/method.md, "A deeper student"): a deeper student that starts as the teacher's function. Its forward
    # costs (num_layers + extra_blocks) / num_layers of the teacher's. 0 = the teacher's architecture.
    extra_blocks: int = 0
    # The inserted blocks' gates as a fraction of their originals' (0: the teacher's function exactly; e.g. 0.1:
    # open from the start, a student within ~10-20% of the teacher's velocity).
    extra_gate: float = 0.0

    def __post_init__(self):
        self._check_lora()
        if isinstance(self.frozen, str) or any(not isinstance(p, str) or not p.strip() for p in self.frozen):
            fail("student.frozen", f"got {self.frozen!r}",
                 "give a list of parts of parameter names, e.g. [ff_context], or []")
        if self.frozen and self.lora_rank > 0:
            fail("student.frozen", "with student.lora_rank > 0 only the adapters train already",
                 "use one of the two: student.frozen=[] or student.lora_rank=0")
        if self.init is not None and (not isinstance(self.init, str) or not self.init.strip()):
            fail("student.init", f"got {self.init!r}", "give a model folder, e.g. assets/nano/student, or null")
        if isinstance(self.extra_blocks, bool) or not isinstance(self.extra_blocks, int) or self.extra_blocks < 0:
            fail("student.extra_blocks", f"got {self.extra_blocks!r}", "use 0 (the teacher's depth) or a count of "
                 "blocks to add, e.g. 2")
        if self.extra_blocks and self.lora_rank > 0:
            fail("student.extra_blocks", "with student.lora_rank > 0 the inserted blocks' own weights would stay "
                 "frozen (only adapters train)", "use one of the two: student.extra_blocks=0 or student.lora_rank=0")
        self.extra_gate = number("student.extra_gate", self.extra_gate)
        if not 0 <= self.extra_gate <= 1:
            fail("student.extra_gate", f"got {self.extra_gate}", "use a fraction in [0, 1], e.g. 0 or 0.1")
        if self.sampler not in ("renoise", "euler"):
            fail("student.sampler", f"got {self.sampler!r}", "use renoise or euler")
        if isinstance(self.steps, bool) or self.steps < 1:
            fail("student.steps", f"got {self.steps}, the student grid would be empty", "use 1, 2 or 4")
        self.shift = number("student.shift", self.shift)
        if not self.shift > 0:
            fail("student.shift", f"got {self.shift}", "use a positive shift: 1 (none) or e.g. 3 (SD3.5-Large-Turbo)")
        self.sample_shifts = _check_shifts(self.sample_shifts)
        if self.grid not in flow.GRIDS:
            fail("student.grid", f"got {self.grid!r}", f"use one of {', '.join(flow.GRIDS)}")
        self.start_time = number("student.start_time", self.start_time)
        # the start is the first time of the training grid and of every sampling grid: each says which it takes
        self._check_start("student.start_time", self.steps, self.shift, f"got {self.start_time}",
                          "use 1 (the paper's) or just below, e.g. 0.9")
        for steps, shift in self.sample_shifts.items():
            self._check_start(f"student.sample_shifts[{steps}]", steps, shift,
                              f"got {shift:g} with student.start_time={self.start_time:g}",
                              f"use a smaller shift for {steps} steps or a start time above its second time")
        if self.probs is None:
            if self.steps not in DEFAULT_PROBS:
                fail("student.probs", f"has no default for student.steps={self.steps}",
                     f"give {self.steps} probabilities or use steps 1, 2 or 4")
            self.probs = list(DEFAULT_PROBS[self.steps])
        self.probs = _check_probs("student.probs", self.probs, self.steps)
        if self.warmup_probs is not None:
            self.warmup_probs = _check_probs("student.warmup_probs", self.warmup_probs, self.steps)
        if self.warmup_steps < 0 or (self.warmup_steps > 0 and self.warmup_probs is None):
            fail("student.warmup_steps", f"got {self.warmup_steps}",
                 "use 0, or a positive count together with student.warmup_probs")

    def _check_start(self, name: str, steps: int, shift: float, got: str, hint: str) -> None:
        """Fail on ``name`` when the ``steps``-step grid at ``shift`` does not take ``start_time``
        (ladd.flow.student_grid)."""
        try:
            flow.student_grid(steps, shift, self.grid, self.start_time)
        except ValueError as e:
            fail(name, f"{got}: {e}", hint)

    def times(self) -> torch.Tensor:
        """The student's ``steps`` input times (ladd.flow.student_grid)."""
        return flow.student_grid(self.steps, self.shift, self.grid, self.start_time)

    def probs_at(self, step: int) -> list[float]:
        """The grid probabilities used at training iteration ``step``."""
        return self.warmup_probs if step < self.warmup_steps else self.probs

    def _check_lora(self) -> None:
        if isinstance(self.lora_rank, bool) or not isinstance(self.lora_rank, int) or self.lora_rank < 0:
            fail("student.lora_rank", f"got {self.lora_rank!r}", "use 0 (full fine-tuning) or a rank >= 1, e.g. 16")
        if self.lora_alpha is not None:
            self.lora_alpha = number("student.lora_alpha", self.lora_alpha)
            if not self.lora_alpha > 0:
                fail("student.lora_alpha", f"got {self.lora_alpha}", "use a positive number or null (= lora_rank)")
        if isinstance(self.lora_targets, str) or not self.lora_targets:
            fail("student.lora_targets", f"got {self.lora_targets!r}",
                 "give a non-empty list of module names, e.g. '[attn.to_q,attn.to_v]'")
        bad = [t for t in self.lora_targets if not isinstance(t, str) or not t.strip(". ")]
        if bad:
            fail("student.lora_targets", f"{bad} are not module names", "give names like attn.to_q")


def teacher_guidance(guidance: float | None, teacher_config: dict) -> float:
    """A method's CFG scale for its teacher target: ``guidance``, or with None the teacher's recommended scale
    (its config's ``ladd_recommended``; 1 when it has none)."""
    if guidance is not None:
        return float(guidance)
    return float(teacher_config.get("ladd_recommended", {}).get("guidance", 1.0))


class Method:
    """Base class; see the module docstring. ``cfg`` is the method's own section, ``student`` the StudentConfig,
    ``teacher`` the loaded teacher adapter (frozen by the method), ``seed`` train.seed (for seeded inits)."""
    Config: ClassVar[type]             # the dataclass of the method's preset section
    export: ClassVar[str] = "student"  # the module to ship
    trains: ClassVar[bool] = True      # False: no modules, no data, no iteration (e.g. few_step)
    progress: ClassVar[tuple[str, ...]] = ()  # metrics shown on the progress bar

    def __init__(self, cfg, student: StudentConfig, teacher: torch.nn.Module, seed: int = 0, uncond=None,
                 vae=None):
        self.cfg, self.student_cfg, self.seed = cfg, student, seed
        self.teacher = freeze(teacher)  # eval mode, no parameter grads; still differentiable w.r.t. its inputs
        if self.needs_uncond(cfg) and uncond is None:
            raise ValueError(f"{type(self).__name__}'s guided target needs the empty prompt's embedding (uncond)")
        if self.needs_vae(cfg) and vae is None:
            raise ValueError(f"{type(self).__name__} decodes latents: pass the teacher's VAE (vae=)")
        self._modules: dict | None = None  # built once by modules()
        self.uncond = uncond  # the empty prompt's TextEmbeddings, when needs_uncond(cfg) (guided targets)
        self.vae = freeze(vae) if vae is not None else None  # ladd.models.vae.VAE, when needs_vae(cfg)

    @classmethod
    def optimizer_defaults(cls) -> dict:
        """Optimizer name -> its default ``OptimizerConfig`` (the preset's ``optim.<name>`` overrides fields)."""
        return {}

    @classmethod
    def needs_uncond(cls, cfg) -> bool:
        """Whether the method needs the empty prompt's embedding (``uncond``), e.g. for a CFG teacher target."""
        return False

    @classmethod
    def needs_vae(cls, cfg) -> bool:
        """Whether the method decodes latents to pixels (a pixel-space discriminator: ADD); ``ladd distill``
        then hands it its own instance of the VAE (``vae``), which the trainer places as a frozen module."""
        return False

    @classmethod
    def needs_pairs(cls, cfg) -> bool:
        """Whether the method needs each data latent's starting noise (``batch.noise``: teacher samples by a
        deterministic sampler, ``ladd.data.shards.ShardDataset.paired``)."""
        return False

    @classmethod
    def takes_reals(cls, cfg) -> bool:
        """Whether the method has a discriminator whose reals may come from another data folder than the
        student's data (``paths.reals``: batches carry them as ``batch.reals``, ladd.data.reals)."""
        return False

    @classmethod
    def check(cls, cfg, teacher_config: dict) -> None:
        """Checks of the method's section against the teacher's config.json, before any weight loads."""

    def modules(self, device) -> dict[str, torch.nn.Module]:
        """Build (once) and return the trainable modules on ``device`` (``None``: where the teacher is, for FSDP
        to place)."""
        return {}

    def optimizers(self) -> dict[str, list[str]]:
        return {}

    def frozen(self) -> dict[str, torch.nn.Module]:
        """Frozen modules the trainer places for the run (bf16 under bf16 mixed precision, FSDP-wrapped)."""
        return {"teacher": self.teacher}

    def attach(self, modules: dict[str, torch.nn.Module], frozen: dict[str, torch.nn.Module]) -> None:
        """The modules as the trainer prepared them; ``loss`` calls these."""

    def place_uncond(self, module: torch.nn.Module) -> None:
        """Move ``uncond`` (if any) to the device of ``module``'s parameters (``attach`` calls this)."""
        if self.uncond is not None:
            self.uncond = self.uncond.to(next(module.parameters()).device)

    def updates(self, step: int) -> list[Update]:
        return []

    def loss(self, phase: str, batch, ctx: Context) -> PhaseOut:
        raise NotImplementedError(f"{type(self).__name__} has no phase {phase!r}")

    def shipped(self, modules: dict[str, torch.nn.Module], ema) -> torch.nn.Module:
        """What to export after training: the EMA of ``modules[export]`` when EMA is on (docs/method.md, step
        8), else the module itself (unwrapped by the trainer)."""
        return ema.shadow if ema is not None else modules[self.export]

    @classmethod
    def recommended(cls, cfg, student_cfg: StudentConfig, teacher_recommended: dict) -> dict:
        """How the exported model samples by default (its ``ladd_recommended``), from the method's settings
        ``cfg`` alone (``ladd export`` of a run folder builds no method): a distilled student takes its grid with
        no guidance and the sampler it was distilled for (``student.sampler``; docs/method.md, Inference)."""
        return {"steps": student_cfg.steps, "guidance": 1.0, "sampler": student_cfg.sampler,
                "shift": student_cfg.shift, "grid": student_cfg.grid, **start_time(student_cfg),
                **sample_shifts(student_cfg)}


def start_time(student_cfg: StudentConfig) -> dict:
    """``student.start_time`` as a card's ``ladd_recommended`` entry (``{"start": 0.9}``; empty at 1): the time every
    sampler of the model reads its starting noise at."""
    return {} if student_cfg.start_time == 1.0 else {"start": student_cfg.start_time}


def sample_shifts(student_cfg: StudentConfig) -> dict:
    """``student.sample_shifts`` as a card's ``ladd_recommended`` entry (``{"shifts": {"2": 3.0}}``; empty when
    unset): the grid shift ``ladd eval`` / ``ladd sample`` take at each of those step counts. Training never reads
    it."""
    if not student_cfg.sample_shifts:
        return {}
    return {"shifts": {str(k): v for k, v in sorted(student_cfg.sample_shifts.items())}}
