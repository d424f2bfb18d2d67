"""Image degradations (Gaussian blur, additive noise) used to teach the evaluator's texture net, and by the test
that shows FD sees them. Images are float ``[B, 3, H, W]`` in [-1, 1]."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor | float, radius: int = 3) -> torch.Tensor:
    """Blur each image with its own ``sigma`` (pixels; 0 leaves it unchanged). Reflect padding."""
    b = images.shape[0]
    sigma = torch.as_tensor(sigma, dtype=images.dtype).expand(b).clamp_min(1e-3)
    r = torch.arange(-radius, radius + 1, dtype=images.dtype)
    k = torch.exp(-0.5 * (r[None] / sigma[:, None]) ** 2)
    k = k / k.sum(1, keepdim=True)  # [B, 2r+1]
    c = images.shape[1]
    x = F.pad(images, (radius,) * 4, mode="reflect").reshape(1, b * c, *[s + 2 * radius for s in images.shape[2:]])
    kx = k.repeat_interleave(c, 0)[:, None, None, :]
    ky = k.repeat_interleave(c, 0)[:, None, :, None]
    x = F.conv2d(F.conv2d(x, kx, groups=b * c), ky, groups=b * c)
    return x.reshape(images.shape)


def add_noise(images: torch.Tensor, std: torch.Tensor | float, generator: torch.Generator | None = None):
    std = torch.as_tensor(std, dtype=images.dtype).expand(images.shape[0])
    noise = torch.randn(images.shape, generator=generator, dtype=images.dtype)
    return images + std[:, None, None, None] * noise


def random_degradation(images: torch.Tensor, generator: torch.Generator | None = None):
    """Degrade a random subset: 40% clean, 25% blur, 25% noise, 10% both.
    Returns (images, targets ``[B, 2]`` = (blur sigma, 10 * noise std))."""
    b = images.shape[0]
    u = torch.rand(b, generator=generator)
    blur = torch.where((u >= 0.4) & (u < 0.65) | (u >= 0.9), 0.3 + 1.4 * torch.rand(b, generator=generator), 0.0)
    noise = torch.where(u >= 0.65, 0.02 + 0.18 * torch.rand(b, generator=generator), 0.0)
    out = torch.where((blur > 0)[:, None, None, None], gaussian_blur(images, blur), images)
    out = add_noise(out, noise, generator)
    return out, torch.stack([blur, 10 * noise], dim=1)
