"""`ladd nano train-evaluator`: the evaluator CNN trained on ShapeWorld with random blur and noise.

Attribute heads learn on clean and degraded images alike (so a slightly soft sample is still read correctly);
the texture net learns to regress the degradation and to name the background, which makes FD see blur, noise
and texture. Accuracy is reported on fresh images of a different ShapeWorld seed.
"""

from __future__ import annotations

import logging
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ladd import images as images_lib
from ladd.models.io import save_model
from ladd.nano import recipe
from ladd.nano.degrade import random_degradation
from ladd.nano.evaluator import EVALUATOR_CONFIG, Evaluator, cell_targets
from ladd.nano.pool import load_pool
from ladd.nano.vocab import BACKGROUNDS

log = logging.getLogger(__name__)


@dataclass
class EvaluatorTrainConfig:
    out: str = "assets/nano/evaluator"
    run_dir: str = "runs/nano-evaluator"
    cache_dir: str = "cache/nano"
    pool_seed: int = 1
    pool_size: int = 60000
    test_seed: int = 999
    test_size: int = 2000
    steps: int = 3000
    batch_size: int = 64
    lr: float = 2e-3
    minutes: float | None = None
    seed: int = 0


def losses(model: Evaluator, images: torch.Tensor, scenes: list[dict], generator=None) -> dict:
    x, degradation = random_degradation(images, generator)
    out = model(x)
    t = cell_targets(scenes)
    bg = torch.tensor([BACKGROUNDS.index(s["background"]["kind"]) for s in scenes])
    return {
        "shape": F.cross_entropy(out["shape"].flatten(0, 1), t["shape"].flatten()),
        "color": F.cross_entropy(out["color"].flatten(0, 1), t["color"].flatten(), ignore_index=-100),
        "size": F.cross_entropy(out["size"].flatten(0, 1), t["size"].flatten(), ignore_index=-100),
        "degradation": F.mse_loss(out["degradation"], degradation),
        "background": F.cross_entropy(out["background"], bg),
    }


@torch.no_grad()
def cell_accuracy(model: Evaluator, images: np.ndarray, scenes: list[dict]) -> float:
    """Fraction of cells whose read-back (empty, or shape + color + size) is exactly right."""
    model.eval()
    right = total = 0
    for i in range(0, len(images), 250):
        out = model(images_lib.to_tensor(images[i:i + 250]))
        t = cell_targets(scenes[i:i + 250])
        ok = out["shape"].argmax(-1) == t["shape"]
        occupied = t["shape"] > 0
        ok &= ~occupied | ((out["color"].argmax(-1) == t["color"]) & (out["size"].argmax(-1) == t["size"]))
        right += ok.sum().item()
        total += ok.numel()
    return right / total


def train_evaluator(cfg: EvaluatorTrainConfig) -> Path:
    torch.manual_seed(cfg.seed)
    images, scenes = load_pool(cfg.cache_dir, cfg.pool_seed, cfg.pool_size)
    model = Evaluator(**{k: v for k, v in EVALUATOR_CONFIG.items()})
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=cfg.steps, pct_start=0.05)
    rng = np.random.default_rng(cfg.seed)

    def step(i: int) -> dict:
        model.train()
        idx = rng.integers(len(images), size=cfg.batch_size)
        parts = losses(model, images_lib.to_tensor(images[idx]), [scenes[j] for j in idx])
        loss = sum(parts.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sched.last_epoch + 1 < cfg.steps:
            sched.step()
        return {"loss": loss.item(), **{k: v.item() for k, v in parts.items()}}

    done, seconds = recipe.run(step, {"model": model, "opt": opt, "sched": sched}, cfg.run_dir, cfg.steps,
                               minutes=cfg.minutes, desc="train-evaluator", config=cfg)
    test_images, test_scenes = load_pool(cfg.cache_dir, cfg.test_seed, cfg.test_size)
    acc = cell_accuracy(model, test_images, test_scenes)
    n_params = sum(p.numel() for p in model.parameters())
    card = (f"# nano evaluator\n\nCell reader + texture net, {n_params / 1e6:.2f}M parameters "
            "(see `ladd/nano/evaluator.py`).\n\n"
            f"- command: `ladd nano train-evaluator --steps {cfg.steps} --batch-size {cfg.batch_size}`\n"
            f"- data: ShapeWorld seed {cfg.pool_seed}, {cfg.pool_size} images, random blur/noise\n"
            f"- steps done: {done}, AdamW one-cycle lr {cfg.lr}\n"
            f"- wall time: {seconds / 60:.1f} min on {platform.machine()} CPU, {torch.get_num_threads()} threads\n"
            f"- per-cell accuracy on {cfg.test_size} fresh images (seed {cfg.test_seed}): {acc:.4f}\n")
    log.info("evaluator: per-cell accuracy %.4f on fresh images; wrote %s", acc, cfg.out)
    return save_model(model.eval(), cfg.out, dict(EVALUATOR_CONFIG), card)
