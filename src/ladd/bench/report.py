"""What ``ladd bench`` writes: ``bench.md`` (one table per prompt file: alignment and by category, FD, diversity,
NFE, seconds per image, training iterations, seconds per iteration and peak memory, with ratios to the teacher at
its recommended setting), ``bench.json`` (every figure and setting), ``bench_quality.png`` (alignment vs FD at
each step count), ``bench_curves.png`` (validation alignment and FD against training seconds) and
``bench_grid.png`` (the same prompts and seeds: the teacher, then each method at its largest step count)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np


def _fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def table(rows: list[dict], runs: list[dict]) -> str:
    """Markdown table of ``rows`` of one prompt file; the first is the teacher."""
    by_method = {r["method"]: r for r in runs}
    teacher = rows[0]
    cats = sorted(teacher["alignment_by_category"])
    head = ["method", "steps", "NFE", "align", "vs teacher"] + cats + [
        "FD", "vs teacher", "diversity", "s/img", "iterations", "train s/it", "train s", "peak GPU GiB",
        "peak host GiB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        run = by_method.get(r["method"], {})
        fd_ratio = r["fd"] / teacher["fd"] if r["fd"] is not None and teacher["fd"] else None
        align_ratio = r["alignment"] / teacher["alignment"] if teacher["alignment"] else None
        vals = [r["method"], str(r["steps"]), str(r["nfe_per_image"]), f"{r['alignment']:.3f}",
                "-" if align_ratio is None else f"{align_ratio:.2f}x"]
        vals += [f"{r['alignment_by_category'].get(c, float('nan')):.2f}" for c in cats]
        vals += [_fmt(r["fd"], ".2f"), "-" if fd_ratio is None else f"{fd_ratio:.2f}x", _fmt(r["diversity"], ".2f"),
                 f"{r['seconds_per_image']:.4f}", str(run.get("iterations", "-")),
                 _fmt(run.get("seconds_per_iteration"), ".2f"), _fmt(run.get("train_seconds"), ".0f"),
                 _fmt(run.get("peak_memory_gib"), ".1f"), _fmt(run.get("peak_host_gib"), ".1f")]
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    _plt().close(fig)
    os.replace(tmp, path)


def method_colors(runs: list[dict]) -> dict[str, str]:
    """One matplotlib colour per method, the teacher's first, so that every plot of a bench draws a method alike."""
    return {m: f"C{i}" for i, m in enumerate(dict.fromkeys(["teacher", *(r["method"] for r in runs)]))}


def plot_quality(rows: list[dict], files: list[str], path: Path, colors: dict[str, str]) -> None:
    """Alignment (x) vs FD (y) per method, one point per step count, one panel per prompt file."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(files), figsize=(5.5 * len(files), 4.2), squeeze=False)
    for ax, f in zip(axes[0], files):
        mine = [r for r in rows if r["prompt_file"] == f]
        for method in dict.fromkeys(r["method"] for r in mine):
            pts = sorted((r for r in mine if r["method"] == method and r["fd"] is not None), key=lambda r: r["steps"])
            marker = "*" if method == "teacher" else "o"
            ax.plot([r["alignment"] for r in pts], [r["fd"] for r in pts], marker=marker, label=method,
                    color=colors.get(method), markersize=12 if method == "teacher" else 6)
            for r in pts:
                if method != "teacher":
                    ax.annotate(str(r["steps"]), (r["alignment"], r["fd"]), fontsize=8)
        ax.set(xlabel="alignment (higher is better)", ylabel="FD (lower is better)", title=Path(f).stem)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def curve_points(run_dir: Path) -> tuple[int, list[float], list[dict]] | None:
    """``(steps, seconds, rows)``: a run's validations at its largest validated step count, in order, with the
    training seconds at each (interpolated between the logged steps of ``metrics.jsonl``: validations need not fall
    on a logged step). None without validations."""
    val, metrics = run_dir / "val.jsonl", run_dir / "metrics.jsonl"
    if not val.is_file() or not metrics.is_file():
        return None
    logged = sorted((m["step"], m["train_seconds"]) for m in map(json.loads, metrics.read_text().splitlines())
                    if "train_seconds" in m)
    rows = [json.loads(s) for s in val.read_text().splitlines() if s.strip()]
    if not rows or not logged:
        return None
    top = max(r["steps"] for r in rows)
    rows = sorted((r for r in rows if r["steps"] == top), key=lambda r: r["step"])
    seconds = np.interp([r["step"] for r in rows], *zip(*logged)).tolist()
    return top, seconds, rows


def plot_curves(runs: list[dict], path: Path, colors: dict[str, str]) -> bool:
    """Validation alignment and FD at the largest validated step count against training seconds, one line per
    method that validated during training. False (nothing written) when none did."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    drawn = False
    for run in runs:
        if (points := curve_points(Path(run["run_dir"]))) is None:
            continue
        top, seconds, rows = points
        for ax, key in zip(axes, ("alignment", "fd")):
            ax.plot(seconds, [r[key] for r in rows], marker="o", label=f"{run['method']} ({top} steps)",
                    color=colors.get(run["method"]))
        drawn = True
    for ax, title in zip(axes, ("validation alignment", "validation FD")):
        ax.set(xlabel="training seconds (this machine)", title=title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    if drawn:
        _save(fig, path)
    else:
        _plt().close(fig)
    return drawn


def grid(rows: list[dict], path: Path, n_prompts: int = 8) -> None:
    """Rows: prompts spread over the first prompt file; columns: the teacher, then each method at its largest
    evaluated step count (image 0 of each prompt, the same seed across a row)."""
    from PIL import Image

    from ladd.images import save_grid

    first = [r for r in rows if r["prompt_file"] == rows[0]["prompt_file"]]
    top = max(r["steps"] for r in first if r["method"] != "teacher")
    cols = [first[0]] + [r for r in first if r["method"] != "teacher" and r["steps"] == top]
    n = first[0]["n_prompts"]
    pick = np.unique(np.linspace(0, n - 1, min(n_prompts, n)).round().astype(int)).tolist()
    images = [np.asarray(Image.open(Path(r["out"]) / "images" / f"{i:05d}_00.png").convert("RGB"))
              for i in pick for r in cols]
    save_grid(np.stack(images), path, ncols=len(cols))


def write_report(out: Path, cfg, runs: list[dict], rows: list[dict]) -> str:
    files = list(dict.fromkeys(r["prompt_file"] for r in rows))
    parts = []
    for f in files:
        parts.append(f"## {f}\n\n{table([r for r in rows if r['prompt_file'] == f], runs)}\n")
    legend = ("bench_grid.png: columns teacher, " + ", ".join(r["method"] for r in runs)
              + f"; the first prompt file. Budget: {cfg.budget}"
              + (f" ({cfg.seconds:g} s of training per method on this machine)" if cfg.budget == "seconds" else
                 f" ({cfg.iterations} iterations per method)")
              + ("; every method on the same synthetic data" if cfg.data_mode == "same" else
                 "; each method on its native data (ADD: real images, the others: teacher samples)"))
    md = "# ladd bench\n\n" + "\n".join(parts) + "\n" + legend + "\n"
    settings = {k: v for k, v in asdict(cfg).items()}
    payload = {"settings": settings, "runs": runs, "rows": rows}
    for name, text in (("bench.md", md), ("bench.json", json.dumps(payload, indent=1) + "\n")):
        tmp = out / (name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, out / name)
    colors = method_colors(runs)
    plot_quality(rows, files, out / "bench_quality.png", colors)
    plot_curves(runs, out / "bench_curves.png", colors)
    grid(rows, out / "bench_grid.png")
    return md
