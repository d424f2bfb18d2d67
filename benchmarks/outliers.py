"""How much of a model's FD is a few broken images? Counts the images that lie further from the real images'
feature distribution than any real image does, and the FD with and without them (docs/experiments/student-gap.md,
session 29). Analysis only: the evaluator's features are never a training signal.

    python benchmarks/outliers.py shipped=nano-student:4:1:renoise euler=nano-student:4:1:euler \
        teacher=nano-teacher:50:3:euler --max-prompts 120 --out runs/s29/outliers

Each model is ``NAME=MODEL:STEPS:GUIDANCE:SAMPLER``. Per image: the squared Mahalanobis distance of its evaluator
features under the Gaussian of the real images' features (real ShapeWorld images of the same prompts, other seeds;
the FD reference); an image is an *outlier* when its distance exceeds the largest distance of any real image. Writes
OUT/results.json, OUT/results.md and OUT/<name>.png (the 16 furthest images, furthest first).

``--without WORD ...`` adds the FD over the prompts that use none of these words (whole words; the reference
restricted to the same prompts): e.g. ``--prompts prompts/nano-unseen.jsonl --without tile`` leaves out the prompts
with a synonym the teacher cannot read (session 55).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np


def parse(spec: str) -> tuple[str, str, int, float, str]:
    try:
        name, rest = spec.split("=", 1)
        model, steps, guidance, sampler = rest.rsplit(":", 3)
        return name, model, int(steps), float(guidance), sampler
    except ValueError:
        raise SystemExit(f"bad model {spec!r}: use NAME=MODEL:STEPS:GUIDANCE:SAMPLER, e.g. "
                         f"shipped=nano-student:4:1:renoise") from None


def mahalanobis(feats: np.ndarray, mu: np.ndarray, precision: np.ndarray) -> np.ndarray:
    d = feats - mu
    return np.einsum("nd,de,ne->n", d, precision, d)


def uses_any(text: str, words: list[str]) -> bool:
    """Whether ``text`` holds one of ``words`` as a whole word (or phrase), ignoring case."""
    return any(re.search(rf"\b{re.escape(w)}\b", text, re.IGNORECASE) for w in words)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="NAME=MODEL:STEPS:GUIDANCE:SAMPLER")
    p.add_argument("--prompts", default="prompts/nano-val.jsonl")
    p.add_argument("--max-prompts", type=int, default=None, help="the first N prompts (default: all)")
    p.add_argument("--per-prompt", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--without", nargs="*", default=[], help="also the FD over the prompts without these words")
    p.add_argument("--out", default="runs/outliers")
    args = p.parse_args()
    specs = [parse(s) for s in args.models]  # bad input fails before anything loads

    from ladd.evaluation import metrics
    from ladd.evaluation.evaluate import REAL_SEED_OFFSET, load_evaluator, read_back, render_real
    from ladd.generate import generate, image_seed
    from ladd.images import save_grid
    from ladd.models.registry import load_generator

    prompts = [json.loads(line) for line in Path(args.prompts).read_text().splitlines() if line.strip()]
    prompts = prompts[:args.max_prompts] if args.max_prompts else prompts
    index = [(i, k) for i in range(len(prompts)) for k in range(args.per_prompt)]
    evaluator, _ = load_evaluator()
    _, real = read_back(evaluator, render_real(prompts, index, args.seed + REAL_SEED_OFFSET, 64, 64))
    if len(index) <= real.shape[1]:
        raise SystemExit(f"{len(index)} images are too few for a {real.shape[1]}-dimensional feature covariance: use "
                         f"more --max-prompts or --per-prompt (more than {real.shape[1]} images)")
    mu, sigma = metrics.feature_stats(real)
    precision = np.linalg.inv(sigma + 1e-3 * np.eye(len(mu)))  # regularised: 480 images, a wide feature vector
    limit = float(mahalanobis(real, mu, precision).max())
    texts = [prompts[i]["prompt"] for i, _ in index]
    kept = np.array([not uses_any(t, args.without) for t in texts]) if args.without else None
    if kept is not None and kept.sum() <= real.shape[1]:
        raise SystemExit(f"--without {' '.join(args.without)} leaves {int(kept.sum())} images, too few for a "
                         f"{real.shape[1]}-dimensional feature covariance: use more --per-prompt or fewer words")
    seeds = [image_seed(args.seed, i, k) for i, k in index]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, model, steps, guidance, sampler in specs:
        images, _ = generate(load_generator(model), texts, seeds, steps, guidance, sampler)
        _, feats = read_back(evaluator, images)
        dist = mahalanobis(feats, mu, precision)
        bad = dist > limit
        order = np.argsort(-dist)
        rows.append({"name": name, "model": model, "steps": steps, "guidance": guidance, "sampler": sampler,
                     "images": len(index), "outliers": int(bad.sum()),
                     "fd": metrics.frechet_distance(*metrics.feature_stats(feats), mu, sigma),
                     "fd_without_outliers": metrics.frechet_distance(*metrics.feature_stats(feats[~bad]), mu, sigma),
                     "median_distance": float(np.median(dist)),
                     **({} if kept is None else {"fd_without_words": metrics.frechet_distance(
                         *metrics.feature_stats(feats[kept]), *metrics.feature_stats(real[kept])),
                         "images_without_words": int(kept.sum())}),
                     "furthest": [[*index[j], round(float(dist[j]), 1)] for j in order[:16]]})
        save_grid(images[order[:16]], out / f"{name}.png", ncols=8, scale=1)
        print(f"{name}: {rows[-1]['outliers']} outliers of {len(index)}, FD {rows[-1]['fd']:.2f}, without them "
              f"{rows[-1]['fd_without_outliers']:.2f}", flush=True)
    lines = [f"{args.prompts}, {len(index)} images per row; outlier: further from the real images' features than any "
             f"of the {len(index)} real images (squared Mahalanobis > {limit:.0f})", "",
             "| model | steps | guidance | sampler | outliers | FD | FD without outliers | median distance |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['steps']} | {r['guidance']:g} | {r['sampler']} | {r['outliers']} | {r['fd']:.2f} | "
              f"{r['fd_without_outliers']:.2f} | {r['median_distance']:.0f} |" for r in rows]
    if kept is not None:
        lines[2:4] = [lines[2] + f" FD without prompts using {', '.join(args.without)} |", lines[3] + "---|"]
        lines[4:] = [line + f" {r['fd_without_words']:.2f} ({r['images_without_words']} images) |"
                     for line, r in zip(lines[4:], rows)]
    print("\n".join(lines))
    (out / "results.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps({"prompts": args.prompts, "limit": limit, "rows": rows}, indent=2)
                                      + "\n")


if __name__ == "__main__":
    main()
