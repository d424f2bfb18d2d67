"""Latent Adversarial Diffusion Distillation (shared/LADD.md): config, discriminator heads, losses, steps."""

from ladd.distill.config import DistillConfig, load_distill_config
from ladd.distill.discriminator import Discriminator, DiscriminatorHead, build_discriminator
from ladd.distill.steps import (FakeBatch, GeneratorOut, build_optimizers, discriminator_step, freeze,
                                generator_step, init_student)

__all__ = ["DistillConfig", "load_distill_config", "Discriminator", "DiscriminatorHead", "build_discriminator",
           "FakeBatch", "GeneratorOut", "build_optimizers", "discriminator_step", "freeze", "generator_step",
           "init_student"]
