"""Per-cell accuracy of an evaluator on fresh ShapeWorld images of the current world (e.g. after the world's scene
distribution changed). Prints a one-row Markdown table and writes JSON.

    python benchmarks/evaluator_accuracy.py --seed 999 --n 2000 --out runs/bench-evaluator
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ladd.evaluation.evaluate import load_evaluator
from ladd.nano.pool import render_pool
from ladd.nano.shapeworld import WORLD_VERSION
from ladd.nano.train_evaluator import cell_accuracy


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--evaluator", default="nano-evaluator")
    p.add_argument("--seed", type=int, default=999)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--out", default="runs/bench-evaluator")
    args = p.parse_args()
    model, path = load_evaluator(args.evaluator)
    images, scenes = render_pool(args.seed, args.n)
    with torch.no_grad():
        acc = cell_accuracy(model, images, scenes)
    row = {"evaluator": str(path), "world": WORLD_VERSION, "seed": args.seed, "n_images": args.n,
           "per_cell_accuracy": acc}
    print("| evaluator | world | seed | images | per-cell accuracy |\n|---|---|---|---|---|")
    print(f"| {path} | {WORLD_VERSION} | {args.seed} | {args.n} | {acc:.5f} |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(row, indent=2) + "\n")


if __name__ == "__main__":
    main()
