"""What a model draws when the prompt leaves a choice: the shares of the colors, sizes and shapes the evaluator reads
in a model's images (its ``readback.jsonl`` from ``ladd eval`` or ``benchmarks/student_eval.py``), beside the same
shares in real ShapeWorld images of the same prompts (the FD's reference), with the total-variation distance of each
attribute to the real shares (docs/experiments/student-gap.md, session 55). Analysis only: the evaluator is never a
training signal.

    python benchmarks/read_marginals.py --prompts prompts/nano-eval.jsonl \
        teacher=runs/s48/issue-1step/teacher/nano-eval/cardstep student=runs/s48/issue-1step/soup025/nano-eval/4step

Each model is ``NAME=FOLDER`` (a folder holding ``readback.jsonl``) or ``NAME=FILE.jsonl``. ``--unspecified`` counts
only the objects of prompts that leave the attribute open (the model's own choice). ``--fd-of NAME`` measures what
those choices cost in FD: real renders of the prompts whose open colors and sizes are drawn with NAME's shares
(everything else as the real renders), against the evaluation's FD reference. Writes OUT/results.json when ``--out``
is given.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np

ATTRIBUTES = ("color", "size", "shape")


def read_rows(path: str) -> list[dict]:
    p = Path(path)
    p = p / "readback.jsonl" if p.is_dir() else p
    if not p.is_file():
        raise SystemExit(f"{p}: no readback.jsonl; give a folder written by `ladd eval` or the file itself")
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def open_prompts(prompts: list[dict], attribute: str) -> set[int]:
    """The prompts none of whose objects states ``attribute``."""
    return {i for i, p in enumerate(prompts) if not any(attribute in o for o in p["objects"])}


def shares(rows: list[dict], attribute: str, keep: set[int] | None = None) -> dict[str, float]:
    counts = Counter(o.get(attribute) for r in rows if keep is None or r["prompt_index"] in keep for o in r["read"])
    total = sum(counts.values()) or 1
    return {str(k): counts[k] / total for k in sorted(counts, key=str)}


def total_variation(a: dict, b: dict) -> float:
    return 0.5 * sum(abs(a.get(k, 0.0) - b.get(k, 0.0)) for k in set(a) | set(b))


def real_rows(evaluator, prompts: list[dict], per_prompt: int, seed: int) -> list[dict]:
    """Readbacks of real renders of the prompts (``per_prompt`` each, the evaluation's seeds)."""
    from ladd.evaluation.evaluate import read_back, render_real

    index = [(i, k) for i in range(len(prompts)) for k in range(per_prompt)]
    reads, _ = read_back(evaluator, render_real(prompts, index, seed, 64, 64))
    return [{"prompt_index": i, "k": k, "read": r} for (i, k), r in zip(index, reads)]


def render_with_shares(prompts: list[dict], per_prompt: int, seed: int, chosen: dict[str, dict]) -> np.ndarray:
    """Real renders of the prompts (the evaluation's seeds) whose unstated colors and sizes are drawn from
    ``chosen[attribute]`` (value -> share) instead of uniformly."""
    from ladd.generate import image_seed
    from ladd.nano.shapeworld import render_spec

    images = []
    for i, prompt in enumerate(prompts):
        for k in range(per_prompt):
            rng = np.random.default_rng([seed, i, k, 0xC01])
            objects = []
            for obj in prompt["objects"]:
                obj = dict(obj)
                for attribute, table in chosen.items():
                    if attribute not in obj:
                        values = [v for v in table if v != "None"]
                        p = np.array([table[v] for v in values])
                        obj[attribute] = values[rng.choice(len(values), p=p / p.sum())]
                objects.append(obj)
            images.append(render_spec(objects, image_seed(seed, i, k), 64, 64)[0])
    return np.stack(images)


def reference_stats(evaluator, prompts: list[dict], per_prompt: int, seed: int):
    """The evaluation's FD reference: feature mean and covariance of real renders of the prompts, other seeds."""
    from ladd.evaluation import metrics
    from ladd.evaluation.evaluate import REAL_SEED_OFFSET, read_back, render_real

    index = [(i, k) for i in range(len(prompts)) for k in range(per_prompt)]
    return metrics.feature_stats(read_back(evaluator, render_real(prompts, index, seed + REAL_SEED_OFFSET, 64, 64))[1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="NAME=FOLDER with readback.jsonl")
    p.add_argument("--prompts", required=True, help="the prompt file the readbacks were made on")
    p.add_argument("--per-prompt", type=int, default=4, help="real renders per prompt for the reference")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--unspecified", action="store_true", help="only prompts that leave the attribute open")
    p.add_argument("--fd-of", nargs="*", default=[], help="models whose open color and size shares to render")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    specs = [m.split("=", 1) for m in args.models]
    if any(len(s) != 2 for s in specs):
        raise SystemExit("give each model as NAME=FOLDER")
    unknown = [n for n in args.fd_of if n not in ["real", *(n for n, _ in specs)]]
    if unknown:
        raise SystemExit(f"--fd-of {' '.join(unknown)}: not among the models given ({', '.join(n for n, _ in specs)})")
    prompts = [json.loads(line) for line in Path(args.prompts).read_text().splitlines() if line.strip()]
    from ladd.evaluation.evaluate import load_evaluator

    evaluator = load_evaluator()[0]
    models = {"real": real_rows(evaluator, prompts, args.per_prompt, args.seed),
              **{n: read_rows(f) for n, f in specs}}
    result = {}
    for attribute in ATTRIBUTES:
        keep = open_prompts(prompts, attribute) if args.unspecified else None
        if keep is not None and not keep:
            continue  # every prompt states it
        table = {n: shares(rows, attribute, keep) for n, rows in models.items()}
        values = sorted({v for t in table.values() for v in t})
        print(f"\n{attribute}" + (" (prompts that leave it open)" if keep is not None else ""))
        print("| model | " + " | ".join(values) + " | TV to real |")
        print("|---|" + "---|" * (len(values) + 1))
        for n, t in table.items():
            tv = total_variation(t, table["real"])
            print(f"| {n} | " + " | ".join(f"{t.get(v, 0.0):.3f}" for v in values) + f" | {tv:.3f} |")
            result.setdefault(n, {})[attribute] = {"shares": t, "tv_to_real": tv}
    if args.fd_of:
        from ladd.evaluation import metrics
        from ladd.evaluation.evaluate import read_back

        ref = reference_stats(evaluator, prompts, args.per_prompt, args.seed)
        print("\n| real renders with the open colors and sizes of | FD to the reference |\n|---|---|")
        for name in ["real", *args.fd_of]:
            chosen = {a: shares(models[name], a, open_prompts(prompts, a)) for a in ("color", "size")}
            _, feats = read_back(evaluator, render_with_shares(prompts, args.per_prompt, args.seed, chosen))
            fd = metrics.frechet_distance(*metrics.feature_stats(feats), *ref)
            print(f"| {name} | {fd:.2f} |")
            result.setdefault(name, {})["fd_of_shares"] = fd
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "results.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
