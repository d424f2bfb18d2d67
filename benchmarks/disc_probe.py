"""Can the discriminator see what LADD needs it to see? Heads trained alone on the frozen teacher (ladd.distill.probe)
to tell teacher latents from (a) copies blurred in latent space (3x3 box) and (b) the same latents with shuffled
prompts, at the re-noising levels of the preset (m = -1: little noise, m = 1: LADD's default, much noise).
Prints a Markdown table and writes JSON.

    python benchmarks/disc_probe.py --data runs/nano-synth --steps 500 --out runs/bench-disc-probe
    python benchmarks/disc_probe.py --gen-steps 10 --n 256       # no synthetic data: teacher samples made here
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ladd.distill.config import load_distill_config
from ladd.methods.components.heads import build_discriminator
from ladd.methods.components.probe import blur_latents, shuffled_prompts, train_probe
from ladd.methods.components.student import freeze


def teacher_samples(teacher_dir: str, n: int, steps: int, seed: int = 0):
    """``n`` teacher latents for ShapeWorld captions (CFG from the teacher's card, ``steps`` Euler steps)."""
    from ladd.data.synth import sample_record, teacher_config, teacher_latents, teacher_recommended, \
        teacher_text_encoder
    from ladd.models.teacher import load_teacher
    from ladd.models.text_encoder import load_text_encoder

    tcfg = teacher_config(teacher_dir)
    encoder = load_text_encoder(**teacher_text_encoder(teacher_dir))
    records = [sample_record(seed, i) for i in range(n)]
    cond = encoder.encode([r["prompt"] for r in records])
    gen = {"sampler": "euler", "steps": steps, "guidance": teacher_recommended(teacher_dir)["guidance"],
           "latent_shape": [tcfg["in_channels"], tcfg["sample_size"], tcfg["sample_size"]]}
    teacher = freeze(load_teacher(teacher_dir))
    return teacher_latents(teacher, records, cond, encoder.encode([""]), gen, 128, "cpu"), cond


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/nano.yaml", help="preset whose disc.* heads are probed")
    p.add_argument("--data", default=None, help="synthetic data folder (ladd synth); else teacher samples are made")
    p.add_argument("--n", type=int, default=512, help="latents used (the last quarter is held out)")
    p.add_argument("--gen-steps", type=int, default=10, help="Euler steps of the teacher samples made without --data")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=None, help="default: the preset's optim.lr_heads")
    p.add_argument("--m", type=float, nargs="+", default=[-1.0, 1.0])
    p.add_argument("--out", default="runs/bench-disc-probe")
    p.add_argument("overrides", nargs="*", help="dotted overrides of the preset, e.g. disc.head_width=128")
    args = p.parse_args()
    cfg = load_distill_config(args.config, args.overrides)
    from ladd.models.teacher import load_teacher

    teacher = freeze(load_teacher(cfg.paths.teacher))
    if args.data:
        from ladd.data.shards import ShardDataset

        data = ShardDataset.load(args.data)
        latents, cond = data.latents[:args.n].float(), data.text_of(range(args.n))
        source = f"{args.data} ({len(latents)} latents)"
    else:
        latents, cond = teacher_samples(cfg.paths.teacher, args.n, args.gen_steps)
        source = f"teacher samples, {args.gen_steps} Euler steps ({len(latents)} latents)"
    cond = cond.to(torch.float32)
    tasks = {"blur 3x3": ((latents, cond), (blur_latents(latents), cond)),
             "shuffled prompts": ((latents, cond), (latents, shuffled_prompts(cond)))}
    rows = []
    for name, (real, fake) in tasks.items():
        for m in args.m:
            torch.manual_seed(0)
            disc = build_discriminator(teacher, cfg.ladd.disc)
            t0 = time.perf_counter()
            res = train_probe(teacher, disc, real, fake, m=m, s=cfg.ladd.disc.noise_s, steps=args.steps,
                              batch_size=args.batch_size, lr=args.lr or cfg.optim["heads"].lr)
            rows.append({"task": name, "m": m, "s": cfg.ladd.disc.noise_s, "accuracy": res.accuracy, "steps": res.steps,
                         "history": res.history, "seconds": time.perf_counter() - t0})
            print(f"{name:17s} m={m:+.1f}: accuracy {res.accuracy:.3f} after {res.steps} steps "
                  f"({rows[-1]['seconds']:.0f} s)", flush=True)
    head = f"| task | m | accuracy after {args.steps} steps | best | s |\n|---|---|---|---|---|\n"
    table = head + "".join(f"| {r['task']} | {r['m']:+.1f} | {r['accuracy']:.3f} | "
                           f"{max(a for _, a in r['history']):.3f} | {r['seconds']:.0f} |\n" for r in rows)
    disc = cfg.ladd.disc
    print(f"\n{source}; heads: {disc.blocks} blocks, width {disc.head_width}, depth {disc.head_depth}, "
          f"batch {args.batch_size}\n\n{table}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"source": source, "disc": vars(disc), "rows": rows}, indent=2)
                                      + "\n")
    (out / "results.md").write_text(table)
    print(f"wrote {out}/results.json and {out}/results.md")


if __name__ == "__main__":
    main()
