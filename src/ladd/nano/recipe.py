"""What the nano-asset recipes (train-vae, train-evaluator, train-teacher) share: a resumable step loop.

A recipe gives a ``step(i) -> dict of floats`` closure; this loop adds the progress bar, ``metrics.jsonl``,
TensorBoard events, atomic checkpoints (ladd.training.checkpoint, the format ``ladd distill`` writes) every
``ckpt_every`` steps and on Ctrl-C or SIGTERM (after the step in progress), resume by re-running the same
command, and an optional wall-clock budget.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from ladd.runtime import deferred_interrupt
from ladd.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)


def _split(parts: dict[str, object]):
    """The recipe's stateful parts as ladd.training.checkpoint takes them: modules, optimizers (each with the module
    it steps: the first module), and the rest (LR schedules) as JSON state."""
    modules = {k: v for k, v in parts.items() if isinstance(v, torch.nn.Module)}
    first = next(iter(modules.values()), None)
    optimizers = {k: (first, v) for k, v in parts.items() if isinstance(v, torch.optim.Optimizer)}
    others = {k: v for k, v in parts.items() if k not in modules and k not in optimizers}
    return modules, optimizers, others


def _save(ckpt_dir: Path, parts: dict, step: int, elapsed: float) -> None:
    modules, optimizers, others = _split(parts)
    save_checkpoint(ckpt_dir, step, modules, optimizers,
                    {"elapsed": elapsed, "others": {k: v.state_dict() for k, v in others.items()}}, keep=1)


def _load(ckpt_dir: Path, parts: dict) -> tuple[int, float]:
    path = latest_checkpoint(ckpt_dir)
    if path is None:
        return 0, 0.0
    modules, optimizers, others = _split(parts)
    state = load_checkpoint(path, modules, optimizers)
    for k, v in others.items():
        v.load_state_dict(state["others"][k])
    return int(state["step"]), float(state["elapsed"])


def warmup_decay(opt: torch.optim.Optimizer, steps: int, warmup: int = 100) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup`` steps, then linear decay to 0.1x at ``steps``."""
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warmup) * (0.1 + 0.9 * (1 - i / steps)))


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
    ckpt = run_dir / "checkpoints"
    start, elapsed = _load(ckpt, modules)
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
                    _save(ckpt, modules, done, time.time() - t0)
                if minutes is not None and time.time() - t0 > 60 * minutes:
                    log.info("time budget of %.1f min reached at step %d", minutes, done)
                    break
                if interrupted["set"]:  # Ctrl-C or SIGTERM came during the step: it finished, now stop
                    _save(ckpt, modules, done, time.time() - t0)
                    log.warning("interrupted: checkpoint at step %d written, re-run the same command to resume",
                                done)
                    raise KeyboardInterrupt
    finally:  # a second signal stops mid-step: the last complete checkpoint stands, nothing half-updated is saved
        bar.close()
        writer.close()
    _save(ckpt, modules, done, time.time() - t0)
    return done, time.time() - t0
