"""Are a student's latents as energetic as its teacher's? Per channel, the spatial standard deviation of each
sample's latent (how much texture and contrast the VAE will decode), averaged over samples, for each model against
a reference model on the same prompts and noises (docs/experiments/student-gap.md, session 44). Analysis only, in
latent space: no decoding, no evaluator.

    python benchmarks/latent_stats.py --reference teacher=nano-teacher:50:3:euler \
        shipped=nano-student:4:1:renoise shipped1=nano-student:1:1:renoise --max-prompts 16 --out runs/latent-stats

Each model is ``NAME=MODEL:STEPS:GUIDANCE:SAMPLER`` (benchmarks/outliers.py's form). Prints and writes
OUT/results.md and OUT/results.json: per model, the overall latent standard deviation, the mean over channels of
the spatial standard deviation and its ratio to the reference's, the per-channel ratios, and the mean squared
distance to the reference's latent from the same noise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from outliers import parse  # noqa: E402  (the same NAME=MODEL:STEPS:GUIDANCE:SAMPLER form)


def stats(latents: np.ndarray, reference: np.ndarray) -> dict:
    """Summary of ``latents`` ``[N, C, h, w]`` against ``reference`` (same shape, same noises)."""
    spatial = latents.std(axis=(2, 3)).mean(0)  # [C]: each sample's spatial std per channel, mean over samples
    ref_spatial = reference.std(axis=(2, 3)).mean(0)
    return {"std": float(latents.std()), "spatial_std": float(spatial.mean()),
            "spatial_ratio": float(spatial.mean() / ref_spatial.mean()),
            "channel_ratios": [round(float(r), 3) for r in spatial / ref_spatial],
            "mse_to_reference": float(((latents - reference) ** 2).mean())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="NAME=MODEL:STEPS:GUIDANCE:SAMPLER")
    p.add_argument("--reference", required=True, help="NAME=MODEL:STEPS:GUIDANCE:SAMPLER, e.g. the teacher")
    p.add_argument("--prompts", default="prompts/nano-eval.jsonl")
    p.add_argument("--max-prompts", type=int, default=None, help="the first N prompts (default: all)")
    p.add_argument("--per-prompt", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/latent-stats")
    args = p.parse_args()
    specs = [parse(args.reference)] + [parse(s) for s in args.models]  # bad input fails before anything loads

    from ladd.generate import generate, image_seed
    from ladd.models.registry import load_generator

    prompts = [json.loads(line) for line in Path(args.prompts).read_text().splitlines() if line.strip()]
    prompts = prompts[:args.max_prompts] if args.max_prompts else prompts
    index = [(i, k) for i in range(len(prompts)) for k in range(args.per_prompt)]
    texts = [prompts[i]["prompt"] for i, _ in index]
    seeds = [image_seed(args.seed, i, k) for i, k in index]
    latents = {}
    for name, model, steps, guidance, sampler in specs:
        latents[name] = generate(load_generator(model), texts, seeds, steps, guidance, sampler, decode=False)[0]
    ref_name = specs[0][0]
    rows = [{"name": name, "model": model, "steps": steps, "guidance": guidance, "sampler": sampler,
             **stats(latents[name], latents[ref_name])} for name, model, steps, guidance, sampler in specs]
    lines = [f"{args.prompts}, {len(index)} latents per row, the same noises; ratios to {ref_name}", "",
             "| model | steps | guidance | sampler | std | spatial std | ratio | MSE to reference |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['steps']} | {r['guidance']:g} | {r['sampler']} | {r['std']:.3f} | "
              f"{r['spatial_std']:.3f} | {r['spatial_ratio']:.2f}x | {r['mse_to_reference']:.3f} |" for r in rows]
    print("\n".join(lines))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps({"prompts": args.prompts, "reference": ref_name, "rows": rows},
                                                 indent=2) + "\n")


if __name__ == "__main__":
    main()
