"""The `ladd` command: thin subcommands over library functions.

Errors a user can fix (bad config, bad prompt file, missing asset: ConfigError, AssetError and their kinds) print one
clear line and exit with code 2; anything else is a bug and keeps its traceback (exit 1).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ladd import config as C

log = logging.getLogger("ladd")


class UsageError(Exception):
    """Raised for input a user can fix; printed without a traceback, exit code 2."""


def _recipe(sub, name: str, help: str, cfg_cls_path: str, fn_path: str):
    import importlib

    module, cls_name = cfg_cls_path.rsplit(".", 1)
    cls = getattr(importlib.import_module(module), cls_name)
    p = sub.add_parser(name, help=help, description=help)
    C.add_arguments(p, cls)

    def run(args):
        mod, fn = fn_path.rsplit(".", 1)
        cfg = C.from_args(cls, args)
        getattr(importlib.import_module(mod), fn)(cfg)

    p.set_defaults(func=run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ladd", description="Latent Adversarial Diffusion Distillation.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    nano = sub.add_parser("nano", help="build the nano world's assets (prompts, VAE, evaluator, teacher)")
    nsub = nano.add_subparsers(dest="nano_command", metavar="RECIPE")
    nsub.required = True
    _recipe(nsub, "make-prompts", "write an evaluation prompt file (JSON lines) over all six categories",
            "ladd.nano.prompts.MakePromptsConfig", "ladd.nano.prompts.make_prompts_cmd")
    _recipe(nsub, "train-vae", "train the nano AutoencoderKL on ShapeWorld",
            "ladd.nano.train_vae.VAETrainConfig", "ladd.nano.train_vae.train_vae")
    _recipe(nsub, "train-evaluator", "train the nano evaluator CNN (cell read-back + degradation features)",
            "ladd.nano.train_evaluator.EvaluatorTrainConfig", "ladd.nano.train_evaluator.train_evaluator")
    _recipe(nsub, "train-featnet", "train the nano feature network for ADD's discriminator (self-supervised)",
            "ladd.nano.train_featnet.FeatNetTrainConfig", "ladd.nano.train_featnet.train_featnet")
    _recipe(nsub, "train-teacher", "train the nano SD3-architecture teacher with rectified flow",
            "ladd.nano.train_teacher.TeacherTrainConfig", "ladd.nano.train_teacher.train_teacher")

    from ladd import commands

    commands.add_eval(sub)
    from ladd import distill_cli
    distill_cli.add(sub)
    commands.add_sample(sub)
    commands.add_bench(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # dotted overrides may also come after a flag (`ladd distill x=1 --no-eval y=2`), which argparse leaves over
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    # under torchrun / accelerate launch only process 0 logs progress (each line once); the others warnings
    quiet = int(os.environ.get("RANK", "0")) != 0
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING if quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from ladd.models.io import AssetError
    from ladd.runtime import end_processes

    try:
        args.func(args)
    except (UsageError, C.ConfigError, AssetError, FileNotFoundError) as e:  # a bug keeps its traceback
        if args.verbose:
            raise
        print(f"ladd: error: {e}  (run with -v for the traceback)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ladd: interrupted; what was written is complete (shards, checkpoints): re-run the same command to "
              "continue from there", file=sys.stderr)
        return 130
    finally:
        end_processes()
    return 0


if __name__ == "__main__":
    sys.exit(main())
