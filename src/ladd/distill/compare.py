"""What ``ladd distill`` measures after training: the exported student at each of ``eval.student_steps`` and the
teacher at ``eval.teacher_steps`` and at its recommended setting, on the same prompts and seeds
(ladd.evaluation.evaluate), written as ``comparison.{md,json,png}`` in the run folder."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ladd.data.provenance import weights_file
from ladd.data.synth import teacher_recommended
from ladd.distill.config import DistillConfig
from ladd.methods import method_class

log = logging.getLogger(__name__)


def prompt_subset(prompts: str | Path, n: int, out: Path) -> Path:
    """``n`` prompts of the file ``prompts`` evenly spaced over it (prompt files are grouped by category, so the
    first N would miss categories), written to ``out`` unless it already holds them (its age then stays that of
    the evaluations made on it: ``reuse``)."""
    from ladd.models.registry import world

    items = world().read_prompts(prompts)
    pick = np.unique(np.linspace(0, len(items) - 1, min(n, len(items))).round().astype(int))
    subset = [items[i] for i in pick]
    if not (out.is_file() and world().read_prompts(out) == subset):
        world().write_prompts(subset, out)
    return out


def eval_prompts(cfg: DistillConfig, run_dir: Path) -> Path:
    """The prompt file to evaluate on: ``eval.prompts``, or ``eval.max_prompts`` of them (``prompt_subset``)."""
    if cfg.eval.max_prompts is None:
        return Path(cfg.eval.prompts)
    return prompt_subset(cfg.eval.prompts, cfg.eval.max_prompts, run_dir / "eval" / "prompts.jsonl")


def _steps(n: int) -> str:
    return f"{n} step{'s' if n > 1 else ''}"


def _jobs(cfg: DistillConfig, export_dir: Path) -> list[tuple]:
    """(label, folder name, model, steps, guidance, sampler) per evaluated setting; None = the model's default."""
    rec = teacher_recommended(cfg.paths.teacher)
    e = cfg.eval
    # a trained student samples with eval.sampler (None: its own, student.sampler); an untrained method's export
    # (few_step) with its own setting
    label, sampler = ("student", e.sampler) if method_class(cfg.method).trains else (f"{cfg.method} export", None)
    jobs = [(f"teacher {rec['steps']} steps, cfg {rec['guidance']:g} (recommended)", "teacher-recommended",
             cfg.paths.teacher, None, None, None)]
    jobs += [(f"teacher {_steps(s)}, cfg {rec['guidance']:g}", f"teacher-{s}step", cfg.paths.teacher, s, None, None)
             for s in e.teacher_steps if s != rec["steps"]]
    # the exported model at its own guidance (a student: none; method few_step: the teacher's CFG)
    jobs += [(f"{label} {_steps(s)}", f"student-{s}step", str(export_dir), s, None, sampler)
             for s in e.student_steps]
    return jobs


def reuse(ecfg, model_dir: str) -> dict | None:
    """A previous evaluation with the same settings, newer than the weights of the model, of the VAE that decodes
    its samples, of the evaluator and of the prompt file (edited in place, it keeps its name), and sampled as the
    model's card says now (its steps, guidance, sampler and shift: a card edited beside unchanged weights, e.g. a
    new ``ladd_recommended.shifts``, is evaluated again) (else None)."""
    from ladd.evaluation.evaluate import sampling_setting, with_size
    from ladd.models.registry import model_settings, resolve

    ecfg = with_size(ecfg)  # a saved config holds the size evaluate() filled in from the model
    path, prompts = Path(ecfg.out) / "metrics.json", Path(ecfg.prompts)
    if not (path.is_file() and prompts.is_file()):  # a missing prompt file: evaluate() names it
        return None
    rec, _, vae = model_settings(model_dir)
    inputs = [weights_file(model_dir), weights_file(vae), weights_file(resolve(ecfg.evaluator)), prompts]
    if path.stat().st_mtime < max(f.stat().st_mtime for f in inputs):
        return None
    old = json.loads(path.read_text())
    if old.pop("config", None) != asdict(ecfg):
        return None
    if any(old.get(k) != v for k, v in sampling_setting(ecfg, rec).items()):
        return None
    log.info("reusing %s (same settings, same model)", path)
    return old


def evaluate_models(cfg: DistillConfig, run_dir: Path, export_dir: Path) -> list[dict]:
    """Evaluate the student and the teacher settings of ``_jobs`` (ladd.evaluation.evaluate, same prompts and
    seeds for all); each result gets ``label``, ``slug`` and ``speedup`` (seconds per image of the teacher's
    recommended setting over this row's)."""
    from ladd.evaluation.evaluate import EvalConfig, evaluate

    prompts = eval_prompts(cfg, run_dir)
    rows = []
    for label, slug, model, steps, guidance, sampler in _jobs(cfg, export_dir):
        e = cfg.eval
        ecfg = EvalConfig(model=str(model), prompts=str(prompts), per_prompt=e.per_prompt, steps=steps,
                          guidance=guidance, sampler=sampler, seed=e.seed, out=str(run_dir / "eval" / slug),
                          save_images=True, batch_size=e.batch_size, height=cfg.data.height, width=cfg.data.width,
                          evaluator=e.evaluator, cache_dir=e.cache_dir)
        log.info("evaluating %s", label)
        rows.append({"label": label, "slug": slug, **(reuse(ecfg, str(model)) or evaluate(ecfg))})
    base = rows[0]["seconds_per_image"]
    for r in rows:
        r["speedup"] = base / r["seconds_per_image"] if r["seconds_per_image"] > 0 else float("nan")
    return rows


def comparison_table(rows: list[dict]) -> str:
    """Markdown: alignment (overall and per category), FD, NFE and seconds per image, speedup over the teacher's
    recommended setting (the first row)."""
    cats = sorted({c for r in rows for c in r["alignment_by_category"]})
    head = ["model", "steps", "cfg", "sampler", "NFE/img", "align"] + cats + ["FD", "s/img", "speedup"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        vals = [r["label"], str(r["steps"]), f"{r['guidance']:g}", r.get("sampler", ""), str(r["nfe_per_image"]),
                f"{r['alignment']:.3f}"] + [f"{r['alignment_by_category'].get(c, float('nan')):.2f}" for c in cats]
        vals += ["-" if r["fd"] is None else f"{r['fd']:.2f}", f"{r['seconds_per_image']:.4f}", f"{r['speedup']:.1f}x"]
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines)


def write_comparison(run_dir: Path, rows: list[dict], grid_prompts: int = 8) -> str:
    """``comparison.json``, ``comparison.md`` and ``comparison.png`` (one row per prompt, one column per model in
    table order, image 0 of each prompt: same prompt and seed across a row). Returns the Markdown table."""
    from PIL import Image

    from ladd.images import save_grid

    table = comparison_table(rows)
    n_prompts = rows[0]["n_prompts"]
    pick = np.unique(np.linspace(0, n_prompts - 1, min(grid_prompts, n_prompts)).round().astype(int)).tolist()
    images = [np.asarray(Image.open(run_dir / "eval" / r["slug"] / "images" / f"{i:05d}_00.png").convert("RGB"))
              for i in pick for r in rows]
    save_grid(np.stack(images), run_dir / "comparison.png", ncols=len(rows))
    prompts = [json.loads(line)["prompt"] for line in Path(rows[0]["prompts"]).read_text().splitlines() if line.strip()]
    legend = ("comparison.png: columns " + ", ".join(f"{k + 1}. {r['label']}" for k, r in enumerate(rows))
              + "; rows: " + "; ".join(f"{prompts[i]!r}" for i in pick))
    md = f"{table}\n\n{legend}\n"
    for name, text in (("comparison.md", md), ("comparison.json", json.dumps(rows, indent=2) + "\n")):
        tmp = run_dir / (name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, run_dir / name)
    return table
