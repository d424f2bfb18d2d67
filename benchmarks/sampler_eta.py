"""Between the two samplers: how much of its predicted noise a student's sampler keeps
(docs/experiments/student-gap.md, session 28).

At each step from ``t`` to ``t_next`` the student predicts ``x0_hat`` and ``eps_hat = x_t + (1 - t) v``; the next
input is ``(1 - t_next) x0_hat + t_next (sqrt(1 - eta^2) eps_hat + eta z)`` with fresh Gaussian ``z``. ``eta = 1``
is ladd's re-noising sampler, ``eta = 0`` deterministic Euler (DDIM on the flow); an ``eta`` may also be given per
re-noising step (``1/0/0``: fresh noise at the first only). ``--noise-scale`` multiplies the starting noise (the
GAN truncation trick: < 1 draws from the centre of the noise distribution; session 51). Each setting is evaluated on
the validation prompts (4 images per prompt, as ``benchmarks/student_eval.py --protocol val``).

    python benchmarks/sampler_eta.py runs/s26/long/export --eta 1 0.9 0.7 0.5 0 0/1/1 --steps 4 2 --out runs/s28/eta
    python benchmarks/sampler_eta.py nano-student-1step --eta 1 --noise-scale 1 0.9 0.8 --steps 1 --out runs/s51/trunc

Prints one JSON line per setting and writes OUT/results.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import torch

from ladd import flow, sampling
from ladd.evaluation.evaluate import EvalConfig, evaluate
from ladd.models.registry import load_generator


def partial_renoise(eta, noise_scale: float = 1.0):
    """A sampler (ladd.sampling's signature) that keeps ``sqrt(1 - eta^2)`` of the predicted noise; ``eta`` is a
    number or one number per re-noising step; the starting noise is multiplied by ``noise_scale``."""

    @torch.no_grad()
    def sample(model, noise, times, cond, uncond=None, guidance=1.0, generator=None):
        x = x0 = noise * noise_scale
        times = times.to(noise.device, noise.dtype)
        for k, t in enumerate(times[:-1]):
            v = sampling.guided_velocity(model, x, t, cond, uncond, guidance)
            x0, eps = flow.x0_from_v(x, v, t), flow.noise_from_v(x, v, t)
            if times[k + 1] > 0:
                e = eta[k] if isinstance(eta, list) else eta
                z = sampling.randn_like(x, generator)
                x = flow.add_noise(x0, (1 - e * e) ** 0.5 * eps + e * z, times[k + 1])
        return x0

    return sample


def parse_eta(text: str):
    values = [float(v) for v in text.split("/")]
    if any(not 0 <= v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"eta must lie in [0, 1], got {text!r}")
    return values if len(values) > 1 else values[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a student (an export folder or a model name)")
    p.add_argument("--eta", type=parse_eta, nargs="+", default=[1.0, 0.7, 0.0],
                   help="share of fresh noise: a number, or one per re-noising step as 1/0/0")
    p.add_argument("--noise-scale", type=float, nargs="+", default=[1.0],
                   help="factors of the starting noise (< 1: the truncation trick)")
    p.add_argument("--steps", type=int, nargs="+", default=[4, 2])
    p.add_argument("--prompts", default="prompts/nano-val.jsonl")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/sampler-eta")
    args = p.parse_args()
    for eta in args.eta:
        if isinstance(eta, list) and len(eta) != max(args.steps) - 1:
            p.error(f"eta {eta} has {len(eta)} values; give one per re-noising step ({max(args.steps) - 1})")
    if any(s <= 0 for s in args.noise_scale):
        p.error(f"--noise-scale takes positive factors, got {args.noise_scale}")
    gen = load_generator(args.model)  # a missing folder fails here, before any sampling
    rows = []
    for scale, eta, steps in itertools.product(args.noise_scale, args.eta, args.steps):
        # evaluate() looks the sampler up by name: the re-noising slot (its grid) runs this eta and scale
        sampling.SAMPLERS["renoise"] = partial_renoise(eta, scale)
        name = "-".join(f"{e:g}" for e in eta) if isinstance(eta, list) else f"{eta:g}"
        name += f"-scale{scale:g}" if scale != 1 else ""
        cfg = EvalConfig(model=args.model, prompts=args.prompts, per_prompt=4, steps=steps, sampler="renoise",
                         seed=args.seed, out=str(Path(args.out) / f"eta{name}-{steps}step"))
        r = evaluate(cfg, generator=gen)
        rows.append({"model": args.model, "eta": eta, "noise_scale": scale, "steps": steps,
                     "alignment": r["alignment"], "fd": r["fd"], "diversity": r["diversity"]})
        print(json.dumps(rows[-1]), flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "results.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
