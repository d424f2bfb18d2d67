"""The user-facing one-section commands (eval, sample): flags generated from their typed configs
(ladd.config.add_arguments); each calls one library function."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ladd.config import option


def add_eval(sub) -> None:
    from ladd.config import add_arguments
    from ladd.evaluation.evaluate import EvalConfig

    p = sub.add_parser(
        "eval", help="evaluate a model (or real images, or a folder of images) on a prompt file",
        description="Generate --per-prompt images for every prompt, read them back with the nano evaluator and write "
                    "OUT/metrics.json (alignment, per-category alignment, FD, diversity, NFE, seconds per image), "
                    "OUT/readback.jsonl and OUT/grid.png. --images DIR evaluates DIR/{i:05d}_{k:02d}.png: image k of "
                    "prompt line i (non-empty lines counted from 0).")
    add_arguments(p, EvalConfig)
    p.set_defaults(func=run_eval)


def run_eval(args) -> None:
    from ladd.config import from_args
    from ladd.evaluation.evaluate import EvalConfig, evaluate, format_table

    cfg = from_args(EvalConfig, args)
    result = evaluate(cfg)
    print(format_table([result]))
    print(f"wrote {cfg.out}/metrics.json and {cfg.out}/grid.png")


@dataclass
class SampleConfig:
    """``ladd sample``'s options."""
    prompt: str | None = option("the prompt", required=True)
    model: str = option("nano-teacher | nano-student | nano-student-1step | PATH", default="nano-teacher")
    steps: int | None = option("sampling steps (default: the model card's)")
    guidance: float | None = option("CFG scale, 1 = none (default: the model card's)")
    sampler: str | None = option("default: the model card's", choices=["euler", "renoise"])
    shift: float | None = option("time-grid shift (default: the model card's)")
    n: int = option("number of images", default=8)
    seed: int = option("noise seed", default=0)
    height: int | None = option("image height (default: the model's, 64 for the nano models)")
    width: int | None = option("image width (default: the model's)")
    out: str = option("the PNG grid to write", default="samples.png")
    device: str | None = option("cpu, cuda, cuda:N (default: the GPU when there is one)")
    dtype: str = option("the weights when sampling (auto: bf16 on a GPU, fp32 on the CPU)", default="auto",
                        choices=["auto", "fp32", "bf16", "fp16"])

    def __post_init__(self):
        from ladd.evaluation.evaluate import check_counts

        check_counts(self, ("steps", "n"))


def add_sample(sub) -> None:
    from ladd.config import add_arguments

    p = sub.add_parser("sample", help="generate a grid of images for one prompt")
    add_arguments(p, SampleConfig)
    p.set_defaults(func=run_sample)


def run_sample(args) -> None:
    from ladd.config import from_args

    args = from_args(SampleConfig, args)
    from ladd.images import save_grid
    from ladd.generate import generate, image_seed
    from ladd.models.registry import load_generator, native_size, world
    from ladd.runtime import check_output

    if not (args.height and args.width):
        size = native_size(args.model)
        args.height, args.width = args.height or size[0], args.width or size[1]
    world().check_size(args.height, args.width)
    check_output(args.out, "--out", kind="file")
    from ladd.runtime import pick_device

    gen = load_generator(args.model, pick_device(args.device), args.dtype)
    steps = args.steps or gen.recommended["steps"]
    guidance = gen.recommended["guidance"] if args.guidance is None else args.guidance
    images, seconds = generate(gen, [args.prompt] * args.n, [image_seed(args.seed, 0, k) for k in range(args.n)],
                               steps, guidance, args.sampler or gen.recommended["sampler"], args.height, args.width,
                               shift=args.shift)
    save_grid(images, args.out, ncols=min(args.n, 8))
    print(f"wrote {args.out}: {args.n} images, {steps} steps, guidance {guidance:g}, "
          f"{seconds / args.n:.4f} s/image on {gen.device} ({str(gen.dtype).removeprefix('torch.')})")


def add_bench(sub) -> None:
    from ladd.bench.config import BenchConfig
    from ladd.config import add_arguments

    p = sub.add_parser(
        "bench", help="every method on the same teacher, data and budget: one table, plots, a grid, JSON",
        description="Train each of --methods with its nano preset (configs/nano*.yaml) on the same data under "
                    "the same budget (equal training seconds on this machine, or equal iterations), evaluate each "
                    "at --steps on every --prompts file against the teacher, and write OUT/bench.{md,json}, "
                    "bench_quality.png, bench_curves.png and bench_grid.png. Resumes: re-run the same command.")
    add_arguments(p, BenchConfig)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dotted overrides for every method's preset, e.g. data.num_samples=2048")
    p.set_defaults(func=run_bench)


def run_bench(args) -> None:
    from ladd.bench.config import BenchConfig
    from ladd.bench.run import bench
    from ladd.config import from_args

    cfg = from_args(BenchConfig, args)
    bench(cfg, args.overrides)
    print((Path(cfg.out) / "bench.md").read_text())
    print(f"wrote {cfg.out}/bench.md, bench.json, bench_quality.png, bench_curves.png, bench_grid.png")
