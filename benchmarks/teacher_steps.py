"""The "teacher with few steps" baseline and the guidance and time-shift sweeps: `ladd eval` of one model at several
step counts, guidance scales and time-grid shifts, side by side in one run. Prints a Markdown table and writes JSON.

    python benchmarks/teacher_steps.py --steps 1 2 4 8 25 50 --guidance 4 --out runs/bench-teacher-steps
    python benchmarks/teacher_steps.py --steps 50 --guidance 1 2 3 4 5 6 --limit 120 --out runs/bench-guidance
    python benchmarks/teacher_steps.py --steps 50 --shift 1 2 3 --per-prompt 1 --out runs/bench-shift
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ladd.evaluation.evaluate import EvalConfig, evaluate, format_table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="nano-teacher")
    p.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8, 25, 50])
    p.add_argument("--guidance", type=float, nargs="+", default=[None])
    p.add_argument("--shift", type=float, nargs="+", default=[None], help="time-grid shifts (default: the card's)")
    p.add_argument("--prompts", default="prompts/nano-eval.jsonl")
    p.add_argument("--per-prompt", type=int, default=4)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/bench-teacher-steps")
    args = p.parse_args()
    rows = []
    for shift in args.shift:
        for guidance in args.guidance:
            for steps in args.steps:
                tag = f"steps{steps}-cfg{guidance if guidance is not None else 'card'}"
                tag += f"-shift{shift}" if shift is not None else ""
                cfg = EvalConfig(model=args.model, prompts=args.prompts, per_prompt=args.per_prompt, steps=steps,
                                 guidance=guidance, shift=shift, seed=args.seed, out=str(Path(args.out) / tag),
                                 limit=args.limit)
                rows.append({**evaluate(cfg), "label": f"{args.model}" + (f" shift {shift}" if shift else "")})
                print(format_table(rows[-1:]), flush=True)
    table = format_table(rows)
    print("\n" + table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out / "results.md").write_text(table + "\n")
    print(f"wrote {out}/results.json and {out}/results.md")


if __name__ == "__main__":
    main()
