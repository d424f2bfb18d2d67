"""One micro-batch of training data, as every data reader returns it and every method reads it.

A method reads ``batch.x0`` (data latents: the student's inputs, noised, and with the regression term its
targets), ``batch.cond`` (their prompts), ``batch.noise`` (each latent's starting noise, on paired data) and
``batch.reals``: what a discriminator calls real when it is not the batch itself (``batch.reals or batch``).
Without ``paths.reals`` the batch is its own reals (the paper's setting: teacher samples are both); with it,
latents of another folder, e.g. real images through the VAE with their own captions, while the student still
trains on the teacher's samples and their pairs (ladd.data.reals).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ladd.models.text_encoder import TextEmbeddings


@dataclass
class Batch:
    x0: torch.Tensor                   # [B, C, h, w] float32 data latents
    cond: TextEmbeddings               # their prompts' text states (float32)
    noise: torch.Tensor | None = None  # [B, C, h, w] each latent's starting noise (paired data), else None
    reals: "Batch | None" = None       # a discriminator's reals from another folder (paths.reals), else None
