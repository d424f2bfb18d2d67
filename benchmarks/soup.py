"""Average the weights of several exported students of one teacher (a "model soup", Wortsman et al. 2022) into a
new model folder that `ladd eval` / `ladd sample` / `benchmarks/student_eval.py` load like any export.

    python benchmarks/soup.py --out runs/soup assets/nano/student runs/other/export [--weights 0.5,0.5]

The students must share the architecture (same tensor names and shapes); they should share their initialisation
(every ladd student starts as a copy of its teacher), or the average is meaningless. The soup takes the first
folder's config, scheduler and card setting (`ladd.json`: steps, sampler, grid shifts), with its relative paths
(`ladd_vae`, `ladd_teacher`) rewritten for the new folder, and says in its card what it averages. No training, no
data: seconds on a CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ladd.models.io import LADD_META, replace_dir

WEIGHTS = "diffusion_pytorch_model.safetensors"
PATHS = ("ladd_vae", "ladd_teacher")  # ladd.json entries relative to the model folder


def average(folders: list[Path], weights: list[float]) -> dict[str, torch.Tensor]:
    """The weighted mean of the folders' weights, tensor by tensor, in float64 then cast back."""
    states = [load_file(f / WEIGHTS) for f in folders]
    first = states[0]
    for f, s in zip(folders[1:], states[1:]):
        if s.keys() != first.keys() or any(s[k].shape != first[k].shape for k in first):
            raise SystemExit(f"{f} does not hold the tensors of {folders[0]} (names or shapes differ): a soup needs "
                             "students of one architecture")
    return {k: sum(w * s[k].double() for w, s in zip(weights, states)).to(first[k].dtype) for k in first}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", type=Path, help="exported students (folders holding " + WEIGHTS + ")")
    p.add_argument("--out", type=Path, required=True, help="the new model folder (must not exist)")
    p.add_argument("--weights", default=None, help="comma-separated weights, one per folder (default: equal)")
    args = p.parse_args()
    if len(args.folders) < 2:
        p.error("give at least two folders")
    missing = [str(f) for f in args.folders if not (f / WEIGHTS).is_file() or not (f / LADD_META).is_file()]
    if missing:
        p.error(f"{', '.join(missing)}: not exported students (no {WEIGHTS} or ladd.json); pass `ladd export` "
                "folders or a run's export/")
    weights = ([1.0 / len(args.folders)] * len(args.folders) if args.weights is None
               else [float(w) for w in args.weights.split(",")])
    if len(weights) != len(args.folders) or abs(sum(weights) - 1) > 1e-6 or min(weights) < 0:
        p.error(f"--weights {args.weights}: give one non-negative weight per folder, summing to 1")
    if args.out.exists():
        p.error(f"{args.out} exists; choose a new folder")
    state = average(args.folders, weights)  # before anything is written: a mismatch leaves nothing behind

    tmp = args.out.with_name(args.out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    first = args.folders[0]
    shutil.copytree(first, tmp, ignore=shutil.ignore_patterns(WEIGHTS, "card.md", "ladd_export.json"))
    save_file(state, tmp / WEIGHTS)
    meta = json.loads((first / LADD_META).read_text())
    for key in PATHS:  # relative to the first folder -> relative to the soup
        if key in meta and not os.path.isabs(meta[key]):
            meta[key] = os.path.relpath((first / meta[key]).resolve(), args.out.resolve())
    (tmp / LADD_META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    parts = "\n".join(f"- {w:g} x `{f}`" for w, f in zip(weights, args.folders))
    (tmp / "card.md").write_text(f"# A weight average of {len(weights)} students\n\n{parts}\n\n"
                                 f"Made by `python benchmarks/soup.py`; the setting (`ladd.json`) is the first's.\n")
    replace_dir(tmp, args.out)
    print(f"wrote {args.out}: {len(state)} tensors, the mean of {len(weights)} students")


if __name__ == "__main__":
    main()
