"""ladd: Latent Adversarial Diffusion Distillation."""

__version__ = "0.1.0"
