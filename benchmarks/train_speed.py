"""One LADD iteration against one teacher training step at the same batch, side by side in one run, and where the
LADD iteration's time goes. Prints a Markdown table and writes JSON.

    python benchmarks/train_speed.py --batch-size 32 --repeats 20 --out runs/bench-train-speed
    python benchmarks/train_speed.py --random                    # a random nano-sized teacher, no assets needed

Timed parts (each repeated ``--repeats`` times after ``--warmup`` untimed runs, interleaved so that machine noise
hits all of them alike; medians reported):
- teacher step: rectified-flow loss, backward, clipping, AdamW (ladd.nano.train_teacher's step, without its EMA)
- LADD iteration: generator step + backward, discriminator step + backward, clipping, both AdamW steps, EMA
- its parts: student forward, G step (student forward, re-noise, teacher forward with grad, heads, backward),
  D step (teacher forward on the real batch under no_grad, heads on real and cached fake, backward)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from ladd.distill.config import load_distill_config
from ladd.distill.discriminator import build_discriminator
from ladd.distill import steps as S
from ladd.models.text_encoder import TextEmbeddings
from ladd.training.ema import EMA


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/nano.yaml")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--random", action="store_true", help="random weights of the nano teacher's shape")
    p.add_argument("--out", default="runs/bench-train-speed")
    p.add_argument("overrides", nargs="*", help="dotted overrides of the preset, e.g. disc.head_width=128")
    args = p.parse_args()
    cfg = load_distill_config(args.config, args.overrides)
    from ladd.models.teacher import build_nano_teacher, load_teacher
    from ladd.nano.train_teacher import rf_loss

    torch.manual_seed(0)
    teacher = S.freeze(build_nano_teacher() if args.random else load_teacher(cfg.paths.teacher))
    c = teacher.config
    b = args.batch_size
    x0 = torch.randn(b, c.in_channels, c.sample_size, c.sample_size)
    cond = TextEmbeddings(torch.randn(b, 40, c.joint_attention_dim), torch.randn(b, c.pooled_projection_dim))
    gen = torch.Generator().manual_seed(0)

    # the teacher step, on its own trainable copy
    trainee = S.init_student(teacher)
    opt_t = torch.optim.AdamW(trainee.parameters(), lr=1e-5, betas=(0.9, 0.99))

    def teacher_step():
        loss = rf_loss(trainee, x0, cond, gen)
        opt_t.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainee.parameters(), 1.0)
        opt_t.step()

    student = S.init_student(teacher)
    disc = build_discriminator(teacher, cfg.disc)
    opt_g, opt_d = S.build_optimizers(student, disc, cfg.optim)
    ema = EMA(student, cfg.train.ema_decay)

    def g_step():
        g = S.generator_step(student, teacher, disc, x0, cond, cfg, gen)
        g.loss.backward()
        return g

    fake = g_step().fake

    def d_step():
        loss, _ = S.discriminator_step(teacher, disc, x0, cond, fake, cfg, gen)
        loss.backward()

    def student_forward():
        with torch.no_grad():
            S.student_forward(student, x0, cond, torch.tensor([1.0]), torch.tensor([1.0]), gen)

    def ladd_iteration():
        g = g_step()
        loss, _ = S.discriminator_step(teacher, disc, x0, cond, g.fake, cfg, gen)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.optim.grad_clip)
        torch.nn.utils.clip_grad_norm_(disc.parameters(), cfg.optim.grad_clip)
        opt_g.step()
        opt_d.step()
        opt_g.zero_grad(set_to_none=True)
        opt_d.zero_grad(set_to_none=True)
        ema.update(student)

    parts = {"teacher training step": teacher_step, "LADD iteration": ladd_iteration,
             "  student forward (no grad)": student_forward, "  G step + backward": g_step,
             "  D step + backward": d_step}
    times = {k: [] for k in parts}
    for r in range(args.warmup + args.repeats):
        for name, fn in parts.items():
            dt = _timed(fn)
            if r >= args.warmup:
                times[name].append(dt)
        opt_g.zero_grad(set_to_none=True)
        opt_d.zero_grad(set_to_none=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["teacher training step"]
    where = (f"{torch.cuda.get_device_name()}" if torch.cuda.is_available()
             else f"CPU, {torch.get_num_threads()} threads")
    n_params = sum(p.numel() for p in teacher.parameters())
    lines = [f"batch {b}, teacher {n_params / 1e6:.2f}M parameters ({'random' if args.random else cfg.paths.teacher}), "
             f"{len(disc.heads)} heads width {cfg.disc.head_width} depth {cfg.disc.head_depth}, {where}, "
             f"median of {args.repeats}", "", "| part | ms | x teacher step |", "|---|---|---|"]
    lines += [f"| {k} | {1000 * v:.1f} | {v / base:.2f} |" for k, v in med.items()]
    table = "\n".join(lines)
    print(table)
    print(f"\nLADD iteration / teacher step: {med['LADD iteration'] / base:.2f}x")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"batch_size": b, "device": where, "n_params": n_params,
                                                  "median_seconds": med, "ratio": med["LADD iteration"] / base,
                                                  "all_seconds": times}, indent=2) + "\n")
    (out / "results.md").write_text(table + "\n")
    print(f"wrote {out}/results.json and {out}/results.md")


if __name__ == "__main__":
    main()
