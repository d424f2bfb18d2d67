"""The VAE adapter: diffusers ``AutoencoderKL`` with its scaling and shift factors kept inside.

``encode`` maps images in [-1, 1] ``[B, 3, H, W]`` to model latents ``(z - shift) * scale``, ``[B, C, H/8, W/8]``;
``decode`` inverts it. The same class serves the nano VAE and SD3's 16-channel VAE.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL

from ladd.models.io import from_pretrained, load_state, read_config

NANO_VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[16, 32, 64, 64],
    layers_per_block=1,
    latent_channels=16,  # as SD3's VAE; 8 channels lost the shape of small objects
    norm_num_groups=8,
    sample_size=64,
    scaling_factor=1.0,
    shift_factor=0.0,
)


class VAE(torch.nn.Module):
    def __init__(self, model: AutoencoderKL):
        super().__init__()
        self.model = model

    @property
    def latent_channels(self) -> int:
        return self.model.config.latent_channels

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.model.config.block_out_channels) - 1)

    def encode(self, images: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None):
        dist = self.model.encode(images).latent_dist
        z = dist.sample(generator) if sample else dist.mean
        cfg = self.model.config
        return (z - (cfg.shift_factor or 0.0)) * cfg.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        cfg = self.model.config
        z = latents / cfg.scaling_factor + (cfg.shift_factor or 0.0)
        return self.model.decode(z).sample


def load_vae(path: str | Path) -> VAE:
    """A VAE from a ladd asset folder (config.json + model.safetensors) or a diffusers folder."""
    path = Path(path)
    if (path / "diffusion_pytorch_model.safetensors").exists():
        return VAE(from_pretrained(AutoencoderKL, path, "VAE"))
    config = read_config(path)
    model = AutoencoderKL.from_config(config)
    return VAE(load_state(model, path).eval().requires_grad_(False))
