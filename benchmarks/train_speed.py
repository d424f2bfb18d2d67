"""One training iteration of a method against one teacher training step at the same batch, side by side in one
run, and where the iteration's time goes. Prints a Markdown table and writes JSON.

    python benchmarks/train_speed.py --batch-size 32 --repeats 20 --out runs/bench-train-speed
    python benchmarks/train_speed.py --random                    # a random nano-sized teacher, no assets needed

Timed parts (each repeated ``--repeats`` times after ``--warmup`` untimed runs, interleaved so that machine noise
hits all of them alike; medians reported):
- teacher step: rectified-flow loss, backward, clipping, AdamW (ladd.nano.train_teacher's step, without its EMA)
- iteration: ``ladd.training.trainer.iteration``, the code ``ladd distill`` runs (for LADD: generator phase +
  backward, discriminator phase + backward, clipping, both AdamW steps and schedules, EMA)
- its phases, each with its backward (LADD: generator = student forward, re-noise, teacher forward with grad,
  heads; discriminator = teacher forward on the real batch under no_grad, heads on real and cached fake), and
  the student's forward alone
- for methods with heads on the frozen teacher: the teacher's feature pass with the backward to its input (what the
  generator phase needs on the fakes) and without (the real batch), the heads alone on a D step's batch, and the
  *floor* of the same computation: a teacher step (the student's forward and backward) on the rows the student runs
  (with the game on part of the batch, its share and the rest's rows at t_s = 1) + the adversarial share of
  one teacher pass with the backward to the input + (real share + misaligned share) no-grad passes every
  ``ladd.disc_every`` iterations, i.e. the iteration with free heads, optimizers and EMA. No setting that keeps these
  passes can get below it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from ladd.data.batch import Batch
from ladd.distill.config import load_distill_config
from ladd.distill.run import build_method
from ladd.draws import Draws
from ladd.methods import method_class
from ladd.methods.components.student import freeze, init_student, student_forward
from ladd.methods.ladd import rows_below_one
from ladd.models.text_encoder import TextEmbeddings
from ladd.models.wrap import unwrap
from ladd.training.contract import Context
from ladd.training.trainer import iteration, make_accelerator, prepare


class FixedData:
    """One fixed batch in the trainer's data interface."""

    def __init__(self, x0, cond, noise):
        self.x0, self.cond, self.noise = x0, cond, noise

    def to(self, device):
        return FixedData(self.x0.to(device), self.cond.to(device), self.noise.to(device))

    def batch(self, size, *keys):
        return Batch(self.x0[:size], self.cond, self.noise[:size])


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
    p.add_argument("overrides", nargs="*", help="dotted overrides of the preset, e.g. ladd.disc.head_width=128")
    args = p.parse_args()
    cfg = load_distill_config(args.config, [*args.overrides, f"train.batch_size={args.batch_size}",
                                            "train.grad_accum=1"])
    from ladd.models.teacher import build_nano_teacher, load_teacher
    from ladd.nano.train_teacher import rf_loss

    torch.manual_seed(0)
    teacher = freeze(build_nano_teacher() if args.random else load_teacher(cfg.paths.teacher))
    c = teacher.config
    b = args.batch_size
    x0 = torch.randn(b, c.in_channels, c.sample_size, c.sample_size)
    cond = TextEmbeddings(torch.randn(b, 40, c.joint_attention_dim), torch.randn(b, c.pooled_projection_dim))
    noise = torch.randn_like(x0)  # each latent's starting noise, for a regression term (paired data)
    gen = torch.Generator().manual_seed(0)

    # the teacher step, on its own trainable copy
    trainee = init_student(teacher)
    opt_t = torch.optim.AdamW(trainee.parameters(), lr=1e-5, betas=(0.9, 0.99))

    def teacher_step():
        loss = rf_loss(trainee, x0, cond, gen)
        opt_t.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainee.parameters(), 1.0)
        opt_t.step()

    uncond = None  # the empty prompt's embedding, for a guided target: random, like the batch's prompts
    if method_class(cfg.method).needs_uncond(cfg.section):
        uncond = TextEmbeddings(torch.randn(1, 40, c.joint_attention_dim), torch.randn(1, c.pooled_projection_dim))
    method = build_method(cfg, teacher, uncond)
    acc = make_accelerator(cfg)
    run = prepare(acc, cfg, method)
    data = FixedData(x0, cond, noise)
    update = method.updates(0)[0]
    store = {}

    def phase(name):
        def fn():
            ctx = Context(0, Draws(gen), run.ema, store)
            method.loss(name, data.batch(b), ctx).loss.backward()
        return fn

    def student_alone():
        with torch.no_grad():
            student_forward(run.modules[method.export], x0, cond, torch.tensor([1.0]), torch.tensor([1.0]), gen)

    count = {"step": 0}
    cycle = getattr(cfg.section, "disc_every", 1)  # a phase run every N iterations: time N, report 1/N of it

    def one_iteration():
        for _ in range(cycle):
            iteration(acc, method, run, data, cfg, count["step"], b)
            count["step"] += 1

    parts = {"teacher training step": teacher_step, f"{cfg.method} iteration": one_iteration,
             "  student forward (no grad)": student_alone,
             **{f"  {name} phase + backward": phase(name) for name in update.phases}}
    heads = run.modules.get("heads")
    if heads is not None:  # the frozen teacher's two passes an iteration cannot do without, heads aside
        blocks = unwrap(heads).blocks
        t_feat = torch.rand(b)

        def teacher_through():
            x = x0.clone().requires_grad_(True)
            sum(f.mean() for f in teacher(x, t_feat, cond, blocks)).backward()

        def teacher_real():
            with torch.no_grad():
                teacher(x0, t_feat, cond, blocks)
        parts["  frozen teacher features + backward to the input"] = teacher_through
        parts["  frozen teacher features (no grad)"] = teacher_real
    if heads is not None:  # LADD's heads alone, forward + backward on a D step's batch (real, fake, misaligned)
        n = 3 * b
        feats = [torch.randn(n, teacher.feature_dim, c.sample_size, c.sample_size, requires_grad=True)
                 for _ in unwrap(heads).blocks]
        t_hat, pooled = torch.rand(n), torch.randn(n, c.pooled_projection_dim)

        def heads_alone():
            sum(lg.mean() for lg in heads(feats, t_hat, pooled)).backward()
        parts[f"  heads alone, batch {n}, + backward"] = heads_alone
    times = {k: [] for k in parts}
    for r in range(args.warmup + args.repeats):
        for name, fn in parts.items():
            dt = _timed(fn) / (cycle if fn is one_iteration else 1)
            if r >= args.warmup:
                times[name].append(dt)
        for opt in run.optimizers.values():
            opt.zero_grad(set_to_none=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["teacher training step"]
    where = (f"{torch.cuda.get_device_name()}" if torch.cuda.is_available()
             else f"CPU, {torch.get_num_threads()} threads")
    n_params = sum(p.numel() for p in teacher.parameters())
    trained = ", ".join(f"{k} {sum(q.numel() for q in m.parameters()) / 1e6:.2f}M" for k, m in run.modules.items())
    lines = [f"batch {b}, teacher {n_params / 1e6:.2f}M parameters ({'random' if args.random else cfg.paths.teacher}), "
             f"method {cfg.method} (trained: {trained}), {where}, median of {args.repeats}", "",
             "| part | ms | x teacher step |", "|---|---|---|"]
    lines += [f"| {k} | {1000 * v:.1f} | {v / base:.2f} |" for k, v in med.items()]
    table = "\n".join(lines)
    print(table)
    ratio = med[f"{cfg.method} iteration"] / base
    print(f"\n{cfg.method} iteration / teacher step: {ratio:.2f}x")
    loss = getattr(cfg.section, "loss", None)
    extra = loss is not None and (getattr(loss, "distill_weight", 0) > 0 or getattr(loss, "dm_weight", 0) > 0)
    if heads is not None and extra:  # their teacher passes are not among the parts timed here
        print("floor: not computed with ladd.loss.distill_weight or dm_weight (their passes are not timed apart)")
        floor = None
    elif heads is not None:
        # what any iteration that computes the same terms costs, with free heads, optimizers and EMA: the
        # student's forward + backward (a teacher step's), one teacher pass with the backward to its input (its
        # adversarial share) and one without (the real batch's share, plus its misaligned share) every
        # ladd.disc_every iterations
        mis = cfg.section.loss.misaligned_fraction if cfg.section.loss.misaligned_weight > 0 else 0.0
        reals = cfg.section.loss.real_fraction
        adv = cfg.section.loss.adversarial_fraction
        # the student runs the rows that reach a loss: below t_s = 1 only these (the grid's first time is 1)
        rows = rows_below_one(cfg.section, b)
        share = 1.0 if rows is None else rows.float().mean().item()
        student = share + (1 - share) * cfg.student.probs[0]
        floor = (student * base + adv * med["  frozen teacher features + backward to the input"]
                 + (reals + mis) * med["  frozen teacher features (no grad)"] / cycle)
        print(f"floor of the same computation (heads, optimizers, EMA free): {floor / base:.2f}x")
    else:
        floor = None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"batch_size": b, "device": where, "n_params": n_params,
                                                  "method": cfg.method, "median_seconds": med, "ratio": ratio,
                                                  "floor_ratio": floor / base if floor else None,
                                                  "all_seconds": times}, indent=2) + "\n")
    (out / "results.md").write_text(table + "\n")
    print(f"wrote {out}/results.json and {out}/results.md")


if __name__ == "__main__":
    main()
