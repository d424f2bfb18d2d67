"""Several runs' validation curves in one PNG (alignment and FD against iterations, a column per step count):

    python benchmarks/val_curves.py default=runs/s17/default bsim=runs/s20/bsim --out docs/images/val-s20.png

Each run is LABEL=FOLDER (a ``ladd distill`` run folder validated with ``eval.val_every``) or LABEL=FILE (its
``val.jsonl``). Compare runs validated on the same prompt file with the same images per prompt only.
"""

from __future__ import annotations

import argparse

from ladd.distill.validate import plot_runs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="LABEL=RUN")
    p.add_argument("--out", required=True, help="the PNG to write")
    p.add_argument("--steps", default=None, help="step counts to show, e.g. 1,2,4 (default: all validated)")
    args = p.parse_args()
    bad = [r for r in args.runs if "=" not in r]
    if bad:
        p.error(f"give each run as LABEL=FOLDER, got {bad}")
    runs = dict(r.split("=", 1) for r in args.runs)
    steps = [int(s) for s in args.steps.split(",")] if args.steps else None
    print(f"wrote {plot_runs(runs, args.out, steps)}")


if __name__ == "__main__":
    main()
