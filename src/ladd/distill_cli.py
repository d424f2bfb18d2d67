"""Argument parsers for ``ladd synth``, ``ladd distill``, ``ladd export`` and ``ladd soup``; each calls one library
function.

``synth`` and ``distill`` take a preset (``--config``, default configs/nano.yaml) and dotted ``key=value`` overrides of
ladd.distill.config.DistillConfig, e.g. ``ladd distill --config configs/tiny.yaml train.steps=10 eval.enabled=false``.
Several processes: ``torchrun --nproc_per_node 2 $(which ladd) distill ...`` (or ``accelerate launch``).
"""

from __future__ import annotations

import argparse
import sys

OVERRIDES_HELP = "dotted overrides of the preset, e.g. train.steps=500 optim.lr_heads=3e-4 paths.run_dir=runs/x"


def add(sub) -> None:
    """Register ``synth`` and ``distill`` on the ``ladd`` subcommand parser ``sub``."""
    p = sub.add_parser(
        "synth", help="write the training latents: teacher samples with CFG (or real images via the VAE) as shards",
        description="Make the shards of paths.data: for ShapeWorld captions, teacher samples with classifier-free "
                    "guidance and many steps (data.guidance/steps/sampler, default the teacher's recommended "
                    "setting), or with --source real the VAE latents of the ShapeWorld images. Resumable: complete "
                    "shards are skipped; re-run the same command after an interruption.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", default="configs/nano.yaml", help="preset (YAML)")
    p.add_argument("--source", choices=["synthetic", "real"], default=None, help="shortcut for data.source=...")
    p.add_argument("--device", default=None,
                   help="cpu, cuda or cuda:N for a single process (default: the GPU when there is one; under "
                        "torchrun / accelerate launch each process uses its own GPU)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDES_HELP)
    p.set_defaults(func=run_synth)

    p = sub.add_parser(
        "distill", help="the main job: make the data if missing, train the few-step student, export, evaluate",
        description="LADD for the preset: synthesize the data if missing, train the student (resumes from "
                    "paths.run_dir/checkpoints), export it to paths.run_dir/export, then evaluate it at 1, 2 and 4 "
                    "steps against the teacher and write comparison.{md,json,png} in the run folder.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", default="configs/nano.yaml", help="preset (YAML)")
    p.add_argument("--no-eval", action="store_true", help="shortcut for eval.enabled=false")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDES_HELP)
    p.set_defaults(func=run_distill)

    p = sub.add_parser(
        "export", help="export a run's newest checkpoint as a diffusers SD3Transformer2DModel folder",
        description="Write the newest checkpoint of RUN_DIR (a ladd distill run folder) to --out: config.json, "
                    "diffusion_pytorch_model.safetensors, scheduler/ and card.md, loadable by "
                    "SD3Transformer2DModel.from_pretrained, StableDiffusion3Pipeline and ladd sample/eval; for a "
                    "LoRA run (student.lora_rank > 0) these are the merged weights, and lora/ holds the adapters "
                    "for the teacher (StableDiffusion3Pipeline.load_lora_weights).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--out", required=True, help="output folder: new, empty, or an earlier export of this run "
                                                "(replaced atomically); never the run folder")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a non-empty --out that is not an export of RUN_DIR")
    weights = p.add_mutually_exclusive_group()
    weights.add_argument("--raw", action="store_true", help="the raw student weights instead of the EMA")
    weights.add_argument("--ema", metavar="DECAY:WARMUP",
                         help="one of the run's train.extra_emas instead of its EMA, e.g. 0.999:3")
    p.add_argument("--pipeline", action="store_true",
                   help="a complete StableDiffusion3Pipeline folder (model_index.json, transformer/, a scheduler whose "
                        "default call is the student's grid and re-noising sampler, vae/, the teacher's text encoders "
                        "linked): StableDiffusion3Pipeline.from_pretrained(OUT) needs nothing else")
    p.add_argument("--copy-text-encoders", action="store_true",
                   help="with --pipeline: copy the teacher's text encoders and tokenizers instead of linking them")
    p.set_defaults(func=run_export)

    p = sub.add_parser(
        "soup", help="average the weights of several exported students of one teacher into a new model folder",
        description="Write the weighted mean of the students' weights (a model soup) to --out, a folder that "
                    "ladd eval / ladd sample / diffusers load like any export, with the first student's setting "
                    "(steps, sampler, grid). The students must come from one initialisation (the teacher, or one "
                    "student.init) and share the architecture.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("folders", nargs="+", metavar="STUDENT", help="exported students (ladd export folders)")
    p.add_argument("--out", required=True, help="the new model folder: new, empty or an earlier soup")
    p.add_argument("--weights", default=None,
                   help="comma-separated weights, one per student, summing to 1 (default: equal)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out that is not an earlier soup")
    p.set_defaults(func=run_soup)


def run_synth(args) -> None:
    from ladd.config import ConfigError
    from ladd.data.synth import synthesize
    from ladd.distill.config import load_distill_config
    from ladd.distill.run import check_config
    from ladd.runtime import folder_lock, pick_device, process_state, sigterm_as_interrupt

    overrides = list(args.overrides) + ([f"data.source={args.source}"] if args.source else [])
    cfg = load_distill_config(args.config, overrides)
    state = process_state()
    if args.device and state.num_processes > 1:
        raise ConfigError(f"--device {args.device}: this is process {state.process_index} of {state.num_processes}, "
                          "and each process of a launch samples on its own GPU; drop --device")
    device = pick_device(args.device) if args.device else None  # a GPU asked for without one: an error, here
    cfg.eval.enabled = False  # synth needs no evaluation files
    # real images are also the heads' reals (paths.reals) of a preset whose method needs teacher pairs as its data
    check_config(cfg, state.num_processes, trains=cfg.data.source != "real")
    with folder_lock(cfg.paths.data, "ladd synth data", state.is_main_process), sigterm_as_interrupt():
        written = synthesize(cfg, rank=state.process_index, world_size=state.num_processes, device=device)
    state.wait_for_everyone()
    if state.is_main_process:
        print(f"{cfg.paths.data}: {cfg.data.num_shards} shards of {cfg.data.source} data "
              f"({len(written)} written by process 0, the rest already complete or written by other processes)")


def run_distill(args) -> None:
    from ladd.distill.run import distill
    from ladd.training.trainer import NonFiniteLossError

    overrides = list(args.overrides) + (["eval.enabled=false"] if args.no_eval else [])
    command = " ".join(["ladd distill", f"--config {args.config}", *overrides])
    try:
        distill(args.config, overrides, command=command)
    except NonFiniteLossError as e:
        print(f"ladd: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None


def run_export(args) -> None:
    from ladd.distill.export import export_run

    out = export_run(args.run_dir, args.out, use_ema=not args.raw, overwrite=args.overwrite,
                     pipeline=args.pipeline, copy_text_encoders=args.copy_text_encoders, extra_ema=args.ema)
    print(f"wrote {out}")


def run_soup(args) -> None:
    from ladd.config import ConfigError
    from ladd.distill.soup import make_soup

    try:
        weights = None if args.weights is None else [float(w) for w in args.weights.split(",")]
    except ValueError:
        raise ConfigError(f"--weights {args.weights}: give comma-separated numbers, e.g. 0.5,0.5") from None
    out = make_soup(args.folders, args.out, weights, overwrite=args.overwrite)
    print(f"wrote {out}: the mean of {len(args.folders)} students")
