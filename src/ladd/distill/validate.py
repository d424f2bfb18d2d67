"""Validation during training: the student as it would ship (the EMA), evaluated on a validation prompt file
(``eval.val_prompts``, disjoint from the evaluation files) at each of ``eval.student_steps`` every
``eval.val_every`` iterations. Settings are chosen on these figures; the evaluation files are for final tables.

Run folder: ``val.jsonl`` (one line per iteration and step count: alignment, per category, FD), ``val.png`` (the
curves), ``val/<iteration>-<steps>step/`` (the evaluation folders), and with ``eval.select_best`` ``best/``: the
weights of the validated state with the best alignment at ``student.steps`` (ties: the lower FD) among those
whose FD is within ``eval.select_fd_slack`` of the lowest (an alignment high taken at a poor FD does not count),
which ``ladd distill`` then exports instead of the last state.

The trainer calls a hook on the main process with the training's RNG state saved and restored, and evaluation
draws its noise from per-image seeds, so validating changes nothing in what is trained.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ladd.distill.export import run_recommended
from ladd.evaluation.evaluate import EvalConfig, evaluate
from ladd.models.registry import Generator

log = logging.getLogger(__name__)


class Validator:
    def __init__(self, cfg, run_dir: str | Path, vae, text_encoder):
        self.cfg, self.run_dir, self.vae, self.text_encoder = cfg, Path(run_dir), vae, text_encoder
        self.recommended = run_recommended(cfg)  # how the export will sample (grid, shift, sampler, guidance)
        self.first = True

    def __call__(self, model: torch.nn.Module, step: int) -> list[dict]:
        if self.first:  # a resumed run validates again from here: drop what a previous attempt logged after it
            _truncate(self.run_dir / "val.jsonl", step)
            self.first = False
        e, s = self.cfg.eval, self.cfg.student
        model = model.eval()
        rows = []
        for steps in e.student_steps:
            gen = Generator(name=f"step {step}", path=self.run_dir, model=model, vae=self.vae,
                            text_encoder=self.text_encoder,
                            recommended={**self.recommended, "steps": steps,
                                         "sampler": e.sampler or self.recommended["sampler"]},
                            device=next(model.parameters()).device)
            ecfg = EvalConfig(model=f"{self.run_dir}@{step}", prompts=e.val_prompts, per_prompt=e.val_per_prompt,
                              seed=e.seed, out=str(self.run_dir / "val" / f"{step:06d}-{steps}step"),
                              batch_size=e.batch_size, height=self.cfg.data.height, width=self.cfg.data.width,
                              evaluator=e.evaluator, cache_dir=e.cache_dir)
            r = evaluate(ecfg, generator=gen)
            rows.append({"step": step, "steps": steps, "alignment": r["alignment"], "fd": r["fd"],
                         "alignment_by_category": r["alignment_by_category"]})
        model.train()
        with open(self.run_dir / "val.jsonl", "a") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
        log.info("validation at %d: %s", step, ", ".join(
            f"{r['steps']} steps alignment {r['alignment']:.3f} FD {r['fd'] if r['fd'] is None else round(r['fd'], 2)}"
            for r in rows))
        plot(self.run_dir / "val.jsonl", self.run_dir / "val.png")
        if e.select_best:
            self._keep_if_best(model, [r for r in rows if r["steps"] == s.steps] or rows)
        return rows

    def _keep_if_best(self, model: torch.nn.Module, rows: list[dict]) -> None:
        """Keep ``model`` in ``best/`` if its row wins: the best alignment (ties: the lower FD) among the states
        whose FD is within ``eval.select_fd_slack`` of the lowest FD validated so far (greedy: a state passed
        over is not reconsidered; the kept one is replaced once a lower FD leaves it outside the slack)."""
        row, best = rows[0], self.run_dir / "best"
        info = best / "best.json"
        old = json.loads(info.read_text()) if info.is_file() else None
        if not self._wins(row, old):
            return
        best.mkdir(exist_ok=True)
        tmp = best / "model.safetensors.tmp"
        save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, tmp)
        os.replace(tmp, best / "model.safetensors")
        info.write_text(json.dumps(row, indent=1) + "\n")
        log.info("best validated state so far: iteration %d", row["step"])

    def _wins(self, row: dict, old: dict | None) -> bool:
        def key(r):
            return r["alignment"], -(r["fd"] if r["fd"] is not None else float("inf"))

        slack = self.cfg.eval.select_fd_slack
        if old is None:
            return True
        if slack is None or row["fd"] is None:
            return key(row) > key(old)
        fds = [r["fd"] for r in _rows(self.run_dir / "val.jsonl") if r["steps"] == row["steps"] and r["fd"] is not None]
        limit = (1 + slack) * min(fds + [row["fd"]])
        if row["fd"] > limit:
            return False
        return old["fd"] is None or old["fd"] > limit or key(row) > key(old)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def load_best(run_dir: str | Path, model: torch.nn.Module) -> int | None:
    """Load ``run_dir/best`` into ``model`` (the module to ship); returns its iteration, or None if there is none."""
    best = Path(run_dir) / "best"
    if not (best / "best.json").is_file():
        return None
    model.load_state_dict(load_file(best / "model.safetensors"))
    return json.loads((best / "best.json").read_text())["step"]


def _truncate(path: Path, step: int) -> None:
    if path.is_file():
        keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] < step]
        path.write_text("".join(line + "\n" for line in keep))


def plot(jsonl: str | Path, png: str | Path) -> Path:
    """Alignment and FD against training iterations, one line per student step count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in Path(jsonl).read_text().splitlines() if line.strip()]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for steps in sorted({r["steps"] for r in rows}):
        mine = sorted((r for r in rows if r["steps"] == steps), key=lambda r: r["step"])
        for ax, key in zip(axes, ("alignment", "fd")):
            ax.plot([r["step"] for r in mine], [r[key] for r in mine], marker="o", label=f"{steps} step(s)")
    for ax, title in zip(axes, ("alignment (higher is better)", "FD (lower is better)")):
        ax.set_xlabel("iteration")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    tmp = Path(png).with_name(Path(png).stem + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, png)
    return Path(png)


def plot_runs(runs: dict[str, str | Path], png: str | Path, steps=None) -> Path:
    """Several runs' validation curves side by side: alignment (top) and FD (bottom) against training iterations,
    one column per student step count, one line per run (``{label: run folder or its val.jsonl}``). Compare only
    runs validated on the same prompt file with the same images per prompt (FD depends on the sample size)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = {}
    for label, path in runs.items():
        path = Path(path)
        path = path / "val.jsonl" if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no validation curve (run ladd distill with eval.val_every=N)")
        data[label] = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    steps = sorted(steps or {r["steps"] for rows in data.values() for r in rows})
    fig, axes = plt.subplots(2, len(steps), figsize=(4.2 * len(steps), 6.4), squeeze=False)
    for col, s in enumerate(steps):
        for label, rows in data.items():
            mine = sorted((r for r in rows if r["steps"] == s), key=lambda r: r["step"])
            for row, key in enumerate(("alignment", "fd")):
                axes[row][col].plot([r["step"] for r in mine], [r[key] for r in mine], marker="o", label=label)
        axes[0][col].set_title(f"{s} step(s): alignment (higher is better)", fontsize=9)
        axes[1][col].set_title(f"{s} step(s): FD (lower is better)", fontsize=9)
    for ax in axes.flat:
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    tmp = png.with_name(png.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, png)
    return png
