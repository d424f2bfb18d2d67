"""Argument parsers for the user-facing subcommands (eval, sample); each calls one library function."""

from __future__ import annotations

import argparse


def add_eval(sub) -> None:
    p = sub.add_parser(
        "eval", help="evaluate a model (or real images, or a folder of images) on a prompt file",
        description="Generate --per-prompt images for every prompt, read them back with the nano evaluator and write "
                    "OUT/metrics.json (alignment, per-category alignment, FD, diversity, NFE, seconds per image), "
                    "OUT/readback.jsonl and OUT/grid.png. --images DIR evaluates DIR/{i:05d}_{k:02d}.png: image k of "
                    "prompt line i (non-empty lines counted from 0).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="nano-teacher",
                   help="real | nano-teacher | nano-student | nano-student-1step | PATH to a model folder | "
                        "nano-vae or vae:PATH (real images reconstructed by a VAE)")
    p.add_argument("--prompts", default="prompts/nano-eval.jsonl", help="prompt file (JSON lines)")
    p.add_argument("--per-prompt", type=int, default=4, help="images per prompt")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model card's)")
    p.add_argument("--guidance", type=float, default=None, help="CFG scale, 1 = none (default: the model card's)")
    p.add_argument("--sampler", choices=["euler", "renoise"], default=None, help="default: the model card's")
    p.add_argument("--shift", type=float, default=None,
                   help="time-grid shift, > 1 spends more steps at high noise (default: the model card's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/eval", help="output folder")
    p.add_argument("--images", default=None, help="evaluate images from this folder instead of generating")
    p.add_argument("--save-images", action="store_true", help="also write OUT/images/{i:05d}_{k:02d}.png")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--limit", type=int, default=None, help="use only the first N prompts")
    p.add_argument("--cache-dir", default="cache/eval", help="where FD reference statistics are cached")
    p.set_defaults(func=run_eval)


def run_eval(args) -> None:
    from ladd.evaluation.evaluate import EvalConfig, evaluate, format_table

    cfg = EvalConfig(model=args.model, prompts=args.prompts, per_prompt=args.per_prompt, steps=args.steps,
                     guidance=args.guidance, sampler=args.sampler, shift=args.shift, seed=args.seed, out=args.out,
                     images=args.images, save_images=args.save_images, batch_size=args.batch_size,
                     height=args.height, width=args.width, limit=args.limit, cache_dir=args.cache_dir)
    result = evaluate(cfg)
    print(format_table([result]))
    print(f"wrote {cfg.out}/metrics.json and {cfg.out}/grid.png")


def add_sample(sub) -> None:
    p = sub.add_parser("sample", help="generate a grid of images for one prompt",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="nano-teacher", help="nano-teacher | nano-student | nano-student-1step | PATH")
    p.add_argument("--prompt", required=True)
    p.add_argument("--steps", type=int, default=None, help="default: the model card's")
    p.add_argument("--guidance", type=float, default=None, help="CFG scale, 1 = none (default: the model card's)")
    p.add_argument("--sampler", choices=["euler", "renoise"], default=None)
    p.add_argument("--shift", type=float, default=None, help="time-grid shift (default: the model card's)")
    p.add_argument("--n", type=int, default=8, help="number of images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--out", default="samples.png")
    p.set_defaults(func=run_sample)


def run_sample(args) -> None:
    from ladd.images import save_grid
    from ladd.generate import generate, image_seed
    from ladd.models.registry import load_generator, world

    world().check_size(args.height, args.width)
    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    gen = load_generator(args.model)
    steps = args.steps or gen.recommended["steps"]
    guidance = gen.recommended["guidance"] if args.guidance is None else args.guidance
    images, seconds = generate(gen, [args.prompt] * args.n, [image_seed(args.seed, 0, k) for k in range(args.n)],
                               steps, guidance, args.sampler or gen.recommended["sampler"], args.height, args.width,
                               shift=args.shift)
    save_grid(images, args.out, ncols=min(args.n, 8))
    print(f"wrote {args.out}: {args.n} images, {steps} steps, guidance {guidance:g}, "
          f"{seconds / args.n:.4f} s/image")
