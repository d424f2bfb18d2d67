"""Which background (stripes, checks, noise, gradient) a model draws, per prompt file: a small classifier on the
images' Fourier magnitudes, trained on ShapeWorld renders whose background is known, then applied to each model's
images of each prompt file at its card's setting (docs/experiments/student-gap.md, session 55: does a student's
choice of background change with the prompts' phrasing?). No prompt states a background, so the shares are the
model's own choice. Analysis only: nothing here is a training signal.

    python benchmarks/background_kinds.py nano-student nano-teacher \
        --prompts prompts/nano-eval.jsonl prompts/nano-unseen.jsonl prompts/nano-val.jsonl prompts/nano-val-shifted.jsonl

Prints the classifier's held-out accuracy, the shares in real renders, and a table per model and prompt file
(``--per-prompt`` images per prompt, the evaluation's seeds).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch


def features(images: np.ndarray) -> torch.Tensor:
    """Log Fourier magnitudes of the grey image (mean removed) and the colour spread: the background's texture."""
    x = torch.tensor(images).float() / 255.0
    grey = x.mean(-1)
    grey = grey - grey.mean((1, 2), keepdim=True)
    return torch.cat([torch.log1p(torch.fft.rfft2(grey).abs()).flatten(1), x.flatten(1, 2).std(1)], 1)


def train_classifier(n: int, seed: int, epochs: int = 300):
    """(predict(images) -> kind indices, held-out accuracy, real shares) from ``n`` ShapeWorld renders."""
    from ladd.nano import shapeworld

    torch.manual_seed(seed)
    renders = [shapeworld.sample(seed, i) for i in range(n)]
    y = torch.tensor([shapeworld.BACKGROUNDS.index(s["background"]["kind"]) for _, s in renders])
    f = features(np.stack([img for img, _ in renders]))
    cut = n * 5 // 6
    mu, sd = f[:cut].mean(0), f[:cut].std(0) + 1e-4
    f = (f - mu) / sd
    net = torch.nn.Sequential(torch.nn.Linear(f.shape[1], 128), torch.nn.ReLU(),
                              torch.nn.Linear(128, len(shapeworld.BACKGROUNDS)))
    opt = torch.optim.Adam(net.parameters(), 1e-3, weight_decay=1e-4)
    for _ in range(epochs):
        for b in range(0, cut, 500):
            loss = torch.nn.functional.cross_entropy(net(f[b:min(b + 500, cut)]), y[b:min(b + 500, cut)])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()

    @torch.no_grad()
    def predict(images: np.ndarray) -> list[int]:
        return net((features(images) - mu) / sd).argmax(1).tolist()

    accuracy = float(np.mean(np.array(predict(np.stack([img for img, _ in renders[cut:]]))) == y[cut:].numpy()))
    return predict, accuracy, shares(y[cut:].tolist())


def shares(kinds: list[int]) -> dict[str, float]:
    from ladd.nano.shapeworld import BACKGROUNDS

    c = Counter(kinds)
    return {k: c[i] / len(kinds) for i, k in enumerate(BACKGROUNDS)}


def main() -> None:
    from ladd.generate import generate, image_seed
    from ladd.models.registry import load_generator, recommended_shift
    from ladd.nano.shapeworld import BACKGROUNDS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="model names or folders, sampled at their card's setting")
    p.add_argument("--prompts", nargs="+", required=True)
    p.add_argument("--per-prompt", type=int, default=2)
    p.add_argument("--train-renders", type=int, default=6000)
    p.add_argument("--seed", type=int, default=7, help="the classifier's renders (not the evaluation's seed 0)")
    args = p.parse_args()
    predict, accuracy, real = train_classifier(args.train_renders, args.seed)
    print(f"classifier held-out accuracy {accuracy:.3f}")
    print("| model | prompts | " + " | ".join(BACKGROUNDS) + " |")
    print("|---|---|" + "---|" * len(BACKGROUNDS))
    print("| real renders | - | " + " | ".join(f"{real[k]:.3f}" for k in BACKGROUNDS) + " |")
    for model in args.models:
        gen = load_generator(model, "cpu")
        rec = gen.recommended
        for path in args.prompts:
            texts = [json.loads(line)["prompt"] for line in Path(path).read_text().splitlines() if line.strip()]
            seeds = [image_seed(0, i, k) for i in range(len(texts)) for k in range(args.per_prompt)]
            images, _ = generate(gen, [t for t in texts for _ in range(args.per_prompt)], seeds, rec["steps"],
                                 rec["guidance"], rec["sampler"], shift=recommended_shift(rec, rec["steps"]))
            s = shares(predict(images))
            print(f"| {model} | {Path(path).name} | " + " | ".join(f"{s[k]:.3f}" for k in BACKGROUNDS) + " |",
                  flush=True)


if __name__ == "__main__":
    main()
