"""A pre-rendered pool of ShapeWorld images, cached on disk, for training the nano assets.

Rendering on the fly would cost more CPU than the tiny networks' steps; a pool is rendered once (in parallel) and
reused by `train-vae`, `train-evaluator` and `train-teacher`. The cache is written atomically.
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from ladd.nano import shapeworld

log = logging.getLogger(__name__)


def _render_range(args):
    seed, start, stop, height, width = args
    images, scenes = [], []
    for i in range(start, stop):
        img, scene = shapeworld.sample(seed, i, height, width)
        images.append(img)
        scenes.append(scene)
    return np.stack(images), scenes


def render_pool(seed: int, n: int, height: int = 64, width: int = 64, workers: int | None = None):
    """``(images uint8 [n, H, W, 3], scenes)`` for indices ``0..n-1`` of ShapeWorld ``seed``."""
    workers = workers or max(os.cpu_count() or 1, 1)
    chunk = max(256, n // (workers * 4) + 1)
    jobs = [(seed, s, min(s + chunk, n), height, width) for s in range(0, n, chunk)]
    if workers == 1 or len(jobs) == 1:
        parts = [_render_range(j) for j in jobs]
    else:
        with ProcessPoolExecutor(workers) as ex:
            parts = list(ex.map(_render_range, jobs))
    return np.concatenate([p[0] for p in parts]), [s for p in parts for s in p[1]]


def pool_key(seed: int, n: int) -> str:
    """Names a pool in cache files: the world's version, its seed and size."""
    return f"w{shapeworld.WORLD_VERSION}-s{seed}-n{n}"


def load_pool(cache_dir: str | Path, seed: int, n: int, height: int = 64, width: int = 64):
    """The pool from ``cache_dir``, rendering and caching it first if needed."""
    path = Path(cache_dir) / f"pool-{pool_key(seed, n)}-{height}x{width}.npz"
    if path.exists():
        data = np.load(path)
        return data["images"], json.loads(str(data["scenes"]))
    log.info("rendering %d ShapeWorld images (seed %d) into %s", n, seed, path)
    images, scenes = render_pool(seed, n, height, width)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, images=images, scenes=np.asarray(json.dumps(scenes)))
    os.replace(tmp, path)
    return images, scenes
