"""The ``ladd distill`` pipeline (top layer): config, data, training through the selected method, export,
evaluation against the teacher. Methods live in ladd.methods, the trainer in ladd.training."""

from ladd.distill.config import DistillConfig, load_distill_config

__all__ = ["DistillConfig", "load_distill_config"]
