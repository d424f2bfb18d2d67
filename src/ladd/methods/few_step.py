"""The teacher with few steps: no training. The baseline every distilled student must beat (docs/method.md).

It ships the teacher itself, set to sample with ``student.steps`` steps of its own sampler and guidance (CFG
costs two network evaluations per step), so that ``ladd distill method=few_step`` evaluates and exports it
exactly as it would a student. It has no trainable modules, so the trainer runs no iteration.
"""

from __future__ import annotations

from dataclasses import dataclass

from ladd.config import fail, number
from ladd.methods.base import Method, sample_shifts

SAMPLERS = ("euler", "renoise")


@dataclass
class FewStepConfig:
    """The ``few_step:`` section of a preset; null = the teacher's recommended setting (its config.json)."""
    guidance: float | None = None
    sampler: str | None = None

    def __post_init__(self):
        if self.guidance is not None:
            self.guidance = number("few_step.guidance", self.guidance)
            if self.guidance < 1:
                fail("few_step.guidance", f"got {self.guidance}", "use 1 (no guidance) or more, or null")
        if self.sampler is not None and self.sampler not in SAMPLERS:
            fail("few_step.sampler", f"got {self.sampler!r}", f"use one of {SAMPLERS} or null")


class FewStep(Method):
    Config = FewStepConfig
    trains = False

    def shipped(self, modules: dict, ema):
        return self.teacher

    @classmethod
    def recommended(cls, cfg, student_cfg, teacher_recommended: dict) -> dict:
        return {"steps": student_cfg.steps,
                "guidance": teacher_recommended["guidance"] if cfg.guidance is None else cfg.guidance,
                "sampler": cfg.sampler or teacher_recommended["sampler"],
                "shift": teacher_recommended.get("shift", 1.0), **sample_shifts(student_cfg)}
