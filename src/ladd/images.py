"""Images as the library passes them around: uint8 ``[B, H, W, 3]`` arrays and float ``[B, 3, H, W]`` tensors
in [-1, 1], their conversion, PSNR, and PNG grids for run folders and evaluation reports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 ``[B, H, W, 3]`` -> float ``[B, 3, H, W]`` in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float ``[B, 3, H, W]`` in [-1, 1] -> uint8 ``[B, H, W, 3]``."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in [-1, 1]."""
    mse = ((a.clamp(-1, 1) - b) / 2).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


def make_grid(images: np.ndarray, ncols: int, pad: int = 2, scale: int = 2) -> np.ndarray:
    """uint8 ``[N, H, W, 3]`` -> one uint8 image, ``ncols`` wide, white padding, upscaled ``scale`` times."""
    n, h, w, _ = images.shape
    nrows = -(-n // ncols)
    grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, 3), 255, np.uint8)
    for k in range(n):
        r, c = divmod(k, ncols)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = images[k]
    return np.repeat(np.repeat(grid, scale, 0), scale, 1)


def save_grid(images: np.ndarray, path: str | Path, ncols: int = 8, scale: int = 2) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    Image.fromarray(make_grid(images, ncols, scale=scale)).save(tmp)
    tmp.replace(path)
    return path
