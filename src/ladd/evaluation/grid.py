"""Image grids (PNG) for run folders and evaluation reports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


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
