"""What the nano-asset recipes (train-vae, train-evaluator, train-teacher) share: a resumable step loop.

A recipe gives a ``step(i) -> dict of floats`` closure; this loop adds the progress bar, ``metrics.jsonl``,
TensorBoard events, atomic checkpoints every ``ckpt_every`` steps and on Ctrl-C or SIGTERM (after the step in
progress), resume by re-running the same command, and an optional wall-clock budget.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from ladd.training.runtime import deferred_interrupt

log = logging.getLogger(__name__)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 ``[B, H, W, 3]`` -> float ``[B, 3, H, W]`` in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float ``[B, 3, H, W]`` in [-1, 1] -> uint8 ``[B, H, W, 3]``."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def save_checkpoint(path: Path, modules: dict[str, object], step: int, elapsed: float) -> None:
    state = {name: m.state_dict() for name, m in modules.items()}
    state.update(step=step, elapsed=elapsed, torch_rng=torch.get_rng_state())
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, modules: dict[str, object]) -> tuple[int, float]:
    if not path.exists():
        return 0, 0.0
    state = torch.load(path, weights_only=True)
    for name, m in modules.items():
        m.load_state_dict(state[name])
    torch.set_rng_state(state["torch_rng"])
    log.info("resumed from %s at step %d", path, state["step"])
    return int(state["step"]), float(state["elapsed"])


def run(
    step: Callable[[int], dict],
    modules: dict[str, object],
    run_dir: str | Path,
    steps: int,
    ckpt_every: int = 500,
    minutes: float | None = None,
    desc: str = "train",
    config=None,
) -> tuple[int, float]:
    """Run ``step(i)`` for i in [start, steps); returns (last step, wall seconds spent over all resumes).
    ``config`` (a dataclass) is saved, resolved, as ``run_dir/config.yaml``."""
    from torch.utils.tensorboard import SummaryWriter

    from ladd.config import save as save_config

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if config is not None:
        save_config(config, run_dir / "config.yaml")
    ckpt = run_dir / "checkpoint.pt"
    start, elapsed = load_checkpoint(ckpt, modules)
    writer = SummaryWriter(str(run_dir / "tb"))
    t0 = time.time() - elapsed
    done = start
    bar = tqdm(range(start, steps), initial=start, total=steps, desc=desc, dynamic_ncols=True, mininterval=2)
    try:
        with open(run_dir / "metrics.jsonl", "a") as f, deferred_interrupt() as interrupted:
            for i in bar:
                metrics = step(i)
                done = i + 1
                if i % 25 == 0 or i == steps - 1:
                    bar.set_postfix({k: f"{v:.4g}" for k, v in metrics.items()})
                    f.write(json.dumps({"step": i, **metrics}) + "\n")
                    f.flush()
                    for k, v in metrics.items():
                        writer.add_scalar(k, v, i)
                if done % ckpt_every == 0:
                    save_checkpoint(ckpt, modules, done, time.time() - t0)
                if minutes is not None and time.time() - t0 > 60 * minutes:
                    log.info("time budget of %.1f min reached at step %d", minutes, done)
                    break
                if interrupted["set"]:  # Ctrl-C or SIGTERM came during the step: it finished, now stop
                    save_checkpoint(ckpt, modules, done, time.time() - t0)
                    log.warning("interrupted: checkpoint at step %d written, re-run the same command to resume",
                                done)
                    raise KeyboardInterrupt
    finally:  # a second signal stops mid-step: the last complete checkpoint stands, nothing half-updated is saved
        bar.close()
        writer.close()
    save_checkpoint(ckpt, modules, done, time.time() - t0)
    return done, time.time() - t0
