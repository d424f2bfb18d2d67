"""``ladd bench``: each method of ``--methods`` trained by ``ladd distill`` on the same teacher and data under the
same budget, then evaluated at each of ``--steps`` on each prompt file, every row against the teacher at its
recommended setting on the same prompts and seeds.

Budgets: ``--budget iterations`` gives every method ``--iterations`` iterations; ``--budget seconds`` gives every
method the same training time on this machine (``train_seconds``: without previews, validation, checkpoints).
For that, the first ``--probe`` iterations of each run are timed, and the run is continued (resumed, nothing
redone) to ``--seconds / (seconds per iteration)`` iterations; the figure is kept in ``<method>/bench_budget.json``
so that re-running does not re-size it. Methods' iterations differ in cost (DMD2's holds 5 critic updates): the
table says by how much.

Folder ``--out``: ``<method>/`` (the ladd distill run folder), ``<method>/eval/<prompt file>/<n>step/`` and the
report (ladd.bench.report). Re-running the same command resumes: finished trainings and evaluations are reused.
The teacher's rows (its recommended setting: ~0.35 s per nano image, 17 min for the default prompt files) are shared
by every bench folder: ``--cache-dir``/bench-teacher/<prompt file>-<key>/, keyed by the teacher, the prompt file and
the images per prompt, and reused while newer than the teacher's, the VAE's and the evaluator's weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from ladd.bench.config import BenchConfig, method_of, preset_of

log = logging.getLogger(__name__)


def method_overrides(cfg: BenchConfig, method: str, overrides=()) -> list[str]:
    return [*cfg.data_overrides(method), *cfg.shared_overrides(), f"paths.run_dir={Path(cfg.out) / method}",
            *overrides]


def _seconds_per_iteration(run_dir: Path) -> float:
    """From metrics.jsonl: the training seconds per iteration over the logged lines after the first (the first
    iterations are slower: allocation, caches)."""
    lines = [json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines() if s.strip()]
    a, b = (lines[0], lines[-1]) if len(lines) < 3 else (lines[1], lines[-1])
    if b["step"] == a["step"]:
        return b["train_seconds"] / b["step"]
    return (b["train_seconds"] - a["train_seconds"]) / (b["step"] - a["step"])


def _iterations(cfg: BenchConfig, method: str, overrides, text_encoder) -> dict:
    """``{"iterations", "seconds_per_iteration"}`` of ``method``'s run: fixed, or sized from a timed probe."""
    from ladd.distill.run import distill

    run_dir = Path(cfg.out) / method
    record = run_dir / "bench_budget.json"
    if cfg.budget == "iterations":
        return {"iterations": cfg.iterations, "seconds_per_iteration": None}
    if record.is_file():
        return json.loads(record.read_text())
    distill(preset_of(method), [*method_overrides(cfg, method, overrides), f"train.steps={cfg.probe}",
                                "train.log_every=5", "eval.val_every=0"], text_encoder)
    spi = _seconds_per_iteration(run_dir)
    out = {"iterations": max(cfg.probe, round(cfg.seconds / spi)), "seconds_per_iteration": spi}
    tmp = record.with_name(record.name + ".tmp")
    tmp.write_text(json.dumps(out) + "\n")
    os.replace(tmp, record)
    log.info("%s: %.3f s per iteration -> %d iterations for %.0f s", method, spi, out["iterations"], cfg.seconds)
    return out


def train_method(cfg: BenchConfig, method: str, overrides=(), text_encoder=None) -> dict:
    """Train (or resume, or reuse) ``method``'s run; returns its budget, timing and peak accelerator memory."""
    import torch

    from ladd.distill.run import distill
    from ladd.methods import method_class
    from ladd.runtime import peak_host_memory_gib, reset_peak_host_memory

    run_dir = Path(cfg.out) / method
    trains = method_class(method_of(method)).trains
    budget = _iterations(cfg, method, overrides, text_encoder) if trains else {"iterations": 0}
    n = budget["iterations"]
    val = ["eval.val_every=0"]
    if trains and cfg.val_points:
        val = [f"eval.val_every={max(1, n // cfg.val_points)}", "eval.val_per_prompt=1"]
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    fresh = reset_peak_host_memory()
    distill(preset_of(method), [*method_overrides(cfg, method, overrides), f"train.steps={max(n, 1)}", *val],
            text_encoder)
    # peaks over this method's distill call (training and export): the accelerator's allocations and the process's
    # resident host memory; kept from the call that did the work, so a re-run that only reuses the run keeps them
    memory = run_dir / "bench_memory.json"
    known = json.loads(memory.read_text()) if memory.is_file() else {}
    if known.get("iterations") != n:
        known = {"iterations": n, "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30
                 if torch.cuda.is_available() else None, "peak_host_gib": peak_host_memory_gib() if fresh else None}
        memory.parent.mkdir(parents=True, exist_ok=True)
        memory.write_text(json.dumps(known) + "\n")
    lines = [json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines()] if trains else []
    return {"method": method, "iterations": n, "train_seconds": lines[-1]["train_seconds"] if lines else 0.0,
            "seconds_per_iteration": (lines[-1]["train_seconds"] / lines[-1]["step"]) if lines else None,
            "peak_memory_gib": known["peak_memory_gib"], "peak_host_gib": known["peak_host_gib"],
            "run_dir": str(run_dir)}


def _prompt_subset(cfg: BenchConfig, path: str, folder: Path | None = None) -> Path:
    """The prompt file to evaluate on: ``path``, or with ``--max-prompts`` its subset written to ``folder``
    (default ``OUT/prompts``)."""
    from ladd.distill.compare import prompt_subset

    if cfg.max_prompts is None:
        return Path(path)
    return prompt_subset(path, cfg.max_prompts, (folder or Path(cfg.out) / "prompts") / Path(path).name)


def evaluate_method(cfg: BenchConfig, method: str, prompts: str, teacher: str) -> list[dict]:
    """The method's export at each of ``--steps`` on ``prompts`` (cached); a trained student with the re-noising
    sampler and no guidance, the few-step teacher with its own sampler and guidance."""
    from ladd.distill.compare import reuse
    from ladd.evaluation.evaluate import EvalConfig, evaluate
    from ladd.methods import method_class

    export = Path(cfg.out) / method / "export"
    sampler = "renoise" if method_class(method_of(method)).trains else None
    rows = []
    for steps in cfg.step_list:
        ecfg = EvalConfig(model=str(export), prompts=str(_prompt_subset(cfg, prompts)), per_prompt=cfg.per_prompt,
                          steps=steps, sampler=sampler, save_images=True, cache_dir=cfg.cache_dir,
                          out=str(Path(cfg.out) / method / "eval" / Path(prompts).stem / f"{steps}step"))
        rows.append({"method": method, "prompt_file": prompts, "out": ecfg.out,
                     **(reuse(ecfg, str(export)) or evaluate(ecfg))})
    return rows


def teacher_row_dir(cfg: BenchConfig, prompts: str, teacher: str) -> Path:
    """Where the teacher's row on ``prompts`` lives, shared by bench folders (see the module docstring)."""
    key = json.dumps([str(Path(teacher).resolve()), str(Path(prompts).resolve()), cfg.per_prompt, cfg.max_prompts])
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    return Path(cfg.cache_dir) / "bench-teacher" / f"{Path(prompts).stem}-{digest}"


def evaluate_teacher(cfg: BenchConfig, prompts: str, teacher: str) -> dict:
    """The teacher at its recommended setting on ``prompts``: this folder's own row from before the rows were
    shared (``OUT/teacher/<prompt file>``), else the shared row, else evaluated into the shared folder."""
    from ladd.distill.compare import reuse
    from ladd.evaluation.evaluate import EvalConfig, evaluate

    def at(out: Path, prompt_file: Path) -> EvalConfig:
        return EvalConfig(model=teacher, prompts=str(prompt_file), per_prompt=cfg.per_prompt, save_images=True,
                          cache_dir=cfg.cache_dir, out=str(out))

    own = at(Path(cfg.out) / "teacher" / Path(prompts).stem, _prompt_subset(cfg, prompts))
    where = teacher_row_dir(cfg, prompts, teacher)
    # a subset lives beside the shared row, so that every folder's teacher config names the same file
    shared = at(where, _prompt_subset(cfg, prompts, where))
    for ecfg in (own, shared):
        if (result := reuse(ecfg, teacher)) is not None:
            return {"method": "teacher", "prompt_file": prompts, "out": ecfg.out, **result}
    return {"method": "teacher", "prompt_file": prompts, "out": shared.out, **evaluate(shared)}


def check(cfg: BenchConfig, overrides=()) -> str:
    """Every check before any work: the output folder, the prompt files, each method's preset with the bench's
    overrides (ladd.distill.run.check_config). Returns the teacher's folder."""
    from ladd.distill.config import load_distill_config
    from ladd.distill.run import check_config
    from ladd.models.registry import world
    from ladd.runtime import check_output

    check_output(cfg.out, "--out")
    for path in cfg.prompt_files:
        world().read_prompts(path)
    teachers = set()
    for method in cfg.method_list:
        dcfg = load_distill_config(preset_of(method), method_overrides(cfg, method, overrides))
        check_config(dcfg)
        teachers.add(str(Path(dcfg.paths.teacher).resolve()))
    if len(teachers) > 1:
        from ladd.config import ConfigError

        raise ConfigError(f"the methods' presets name different teachers {sorted(teachers)}; a bench compares "
                          f"methods on one teacher: set paths.teacher=... for all")
    return teachers.pop()


def _warn_unlisted(cfg: BenchConfig) -> None:
    """The report covers the listed methods only: say so when the folder holds other entries' runs."""
    out = Path(cfg.out)
    others = sorted(p.name for p in out.iterdir() if (p / "export").is_dir() and p.name not in cfg.method_list) \
        if out.is_dir() else []
    if others:
        log.warning("%s also holds %s, not in --methods: bench.md and bench.json will cover %s only; list every "
                    "entry in --methods to report them together (finished runs are reused)", out,
                    ", ".join(others), ",".join(cfg.method_list))


def bench(cfg: BenchConfig, overrides=(), text_encoder=None) -> dict:
    """Train, evaluate and report every method (see the module docstring); returns ``{"runs", "rows"}``."""
    from ladd.bench.report import write_report
    from ladd.runtime import folder_lock

    teacher = check(cfg, overrides)
    with folder_lock(cfg.out, "a ladd bench run"):
        _warn_unlisted(cfg)
        runs = [train_method(cfg, m, overrides, text_encoder) for m in cfg.method_list]
        rows = []
        for prompts in cfg.prompt_files:
            rows.append(evaluate_teacher(cfg, prompts, teacher))
            for m in cfg.method_list:
                rows += evaluate_method(cfg, m, prompts, teacher)
        write_report(Path(cfg.out), cfg, runs, rows)
    return {"runs": runs, "rows": rows}
