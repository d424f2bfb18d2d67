"""Issue 19's measurements of distilled students, side by side in one run (docs/experiments/student-gap.md).

``--protocol val`` (selection): each student at 1, 2 and 4 steps with its own sampler (its card's; ``--sampler``
to override) on the validation
prompts (prompts/nano-val.jsonl, 240 prompts x 4 images = 960 per row), with the failure counts (too many
objects / wrong attributes / too few) that say what it gets wrong.

``--protocol issue`` (final tables only): the same students on prompts/nano-eval.jsonl and prompts/nano-unseen.jsonl
(4 images per prompt) beside the teacher at its recommended setting and at 4 steps, with each row's ratios to the
teacher's recommended setting.

``--protocol phrasing`` (selection for unseen phrasings): the validation prompts and the same kind of prompts in a
phrasing that neither the training captions nor nano-unseen use (prompts/nano-val-shifted.jsonl, 240 x 4), each
beside the teacher's recommended setting: a student's ratios on the second file no worse than on the first is
issue 19's "no worse on unseen phrasings", chosen without the evaluation files.

    python benchmarks/student_eval.py --protocol val pu=runs/s25/pu/export m0=runs/s25/m0/export --out runs/s25/val
    python benchmarks/student_eval.py --protocol issue shipped=nano-student --out runs/s25/issue

Evaluations are cached per row (ladd.distill.compare.reuse): re-running with one more student evaluates only it.
Prints Markdown tables and writes OUT/results.json and OUT/results.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ladd.distill.compare import reuse
from ladd.evaluation.evaluate import EvalConfig, evaluate
from ladd.evaluation.metrics import FAILURES
from ladd.models.registry import resolve

VAL = ("prompts/nano-val.jsonl",)
ISSUE = ("prompts/nano-eval.jsonl", "prompts/nano-unseen.jsonl")
PHRASING = ("prompts/nano-val.jsonl", "prompts/nano-val-shifted.jsonl")
PROTOCOLS = {"val": VAL, "issue": ISSUE, "phrasing": PHRASING}


def failure_counts(out: str) -> dict:
    """How many images of an evaluation failed for each reason (its readback.jsonl)."""
    counts = dict.fromkeys(FAILURES, 0)
    for line in (Path(out) / "readback.jsonl").read_text().splitlines():
        why = json.loads(line)["failure"]
        if why:
            counts[why] += 1
    return counts


def run(label: str, model: str, prompts: str, steps: int | None, sampler: str | None, out: Path, seed: int,
        shift: float | None = None) -> dict:
    tag = (f"{label}/{Path(prompts).stem}/{steps or 'card'}step" + (f"-{sampler}" if sampler else "")
           + (f"-shift{shift:g}" if shift is not None else ""))
    cfg = EvalConfig(model=model, prompts=prompts, per_prompt=4, steps=steps, sampler=sampler, shift=shift,
                     seed=seed, out=str(out / tag))
    result = reuse(cfg, str(resolve(model))) or evaluate(cfg)
    return {"label": label, "prompts": prompts, "steps": result["steps"], "sampler": result["sampler"],
            "shift": result.get("shift"), "alignment": result["alignment"],
            "fd": result["fd"], **failure_counts(cfg.out), "out": cfg.out}


def table(rows: list[dict], prompts: str, reference: dict | None) -> str:
    head = ["model", "steps", "sampler", "alignment", "FD", *FAILURES] + (["vs teacher"] if reference else [])
    lines = [f"### {prompts}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        sampler = r["sampler"] + (f", shift {r['shift']:g}" if r.get("shift") not in (None, 1.0) else "")
        vals = [r["label"], str(r["steps"]), sampler, f"{r['alignment']:.3f}", f"{r['fd']:.2f}"]
        vals += [str(r[f]) for f in FAILURES]
        if reference:
            vals.append(f"{r['alignment'] / reference['alignment']:.2f}x / {r['fd'] / reference['fd']:.2f}x")
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("students", nargs="+", metavar="NAME=MODEL", help="a label and a model (a folder or a name)")
    p.add_argument("--protocol", choices=sorted(PROTOCOLS), default="val")
    p.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--sampler", choices=["renoise", "euler"], default=None,
                   help="the students' sampler (default: each one's own, from its card)")
    p.add_argument("--shift", type=float, default=None,
                   help="the students' time-grid shift: > 1 moves the later steps to higher noise (default: the card's)")
    p.add_argument("--teacher", default="nano-teacher")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/student-eval")
    args = p.parse_args()
    students = []
    for item in args.students:
        label, sep, model = item.partition("=")
        if not sep or not label or not model:
            p.error(f"students are NAME=MODEL (e.g. pu=runs/pu/export), got {item!r}")
        resolve(model)  # a missing folder fails here, before any sampling
        students.append((label, model))
    out = Path(args.out)
    rows, parts = [], []
    for prompts in PROTOCOLS[args.protocol]:
        block, reference = [], None
        if args.protocol != "val":
            reference = run("teacher", args.teacher, prompts, None, None, out, args.seed)
            block.append(reference)
        if args.protocol == "issue":
            block.append(run("teacher", args.teacher, prompts, 4, None, out, args.seed))
        for label, model in students:
            block += [run(label, model, prompts, s, args.sampler, out, args.seed, args.shift) for s in args.steps]
        rows += block
        parts.append(table(block, prompts, reference))
        print(parts[-1] + "\n", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out / "results.md").write_text("\n\n".join(parts) + "\n")
    print(f"wrote {out}/results.json and {out}/results.md")


if __name__ == "__main__":
    main()
