"""Can a student fit its teacher's noise -> sample map, and does what it learns carry to new noise?

A copy of the teacher is trained on the regression alone (its 1-step output from each latent's own starting noise
against the teacher's sample of that noise; LADD's ``ladd.loss.regression_weight`` term without heads) on the first
``--n-train`` pairs of a synthetic set made with a deterministic sampler, and the MSE is reported on those pairs
(fitting) and on the last ``--held`` pairs, never trained on (generalisation), every 100 iterations. Prints one
line per report and writes JSON. docs/experiments/student-gap.md, session 23.

    python benchmarks/map_fit.py --data /tmp/baserun/synth --steps 1500 --out runs/s23/fit-1e-3.json
    python benchmarks/map_fit.py --data runs/s17/synth4k --n-train 1920 --steps 600 --out runs/s23/fit-1920.json
    python benchmarks/map_fit.py --data runs/nano-synth --steps 600 --extra-blocks 5 --extra-gate 0.1 \
        --out runs/s56/fit-deep5g.json      # a deeper copy (session 56)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ladd import flow
from ladd.data.shards import ShardDataset
from ladd.methods.base import StudentConfig
from ladd.methods.components.student import freeze, init_student
from ladd.models.grow import check_growth
from ladd.models.io import read_config
from ladd.models.teacher import load_teacher


def pair_arguments(p: argparse.ArgumentParser, lr: float, steps: int, held: int) -> None:
    """The arguments of a fit of a teacher copy on a paired set (this script's and benchmarks/reflow.py's)."""
    p.add_argument("--data", required=True, help="synthetic shards with pairs (made by a deterministic sampler)")
    p.add_argument("--teacher", default="assets/nano/teacher")
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--n-train", type=int, default=None, help="train on the first N pairs (default: all but --held)")
    p.add_argument("--held", type=int, default=held, help="the last HELD pairs are held out")
    p.add_argument("--extra-blocks", type=int, default=0,
                   help="a deeper copy: student.extra_blocks (docs/method.md, 'A deeper student')")
    p.add_argument("--extra-gate", type=float, default=0.0, help="student.extra_gate of the inserted blocks")


def pairs_and_copy(p: argparse.ArgumentParser, a: argparse.Namespace):
    """The paired set of ``a.data``, the number of pairs to train on, a trainable copy of ``a.teacher`` and its
    AdamW; argument errors through ``p``."""
    torch.manual_seed(0)  # the teacher's random init before its weights load draws from it too
    data = ShardDataset.load(a.data, pairs=True)
    if not data.paired:
        p.error(f"{a.data} has no pairs: make it with a deterministic sampler (data.sampler euler)")
    n_train = a.n_train or len(data) - a.held
    if not 0 < n_train <= len(data) - a.held:
        p.error(f"--n-train {n_train} and --held {a.held} do not fit in {len(data)} samples")
    try:
        student_cfg = StudentConfig(extra_blocks=a.extra_blocks, extra_gate=a.extra_gate)
        check_growth(read_config(a.teacher), a.extra_blocks)
    except ValueError as e:  # ConfigError too
        p.error(str(e))
    model = init_student(freeze(load_teacher(a.teacher)), student_cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.99), weight_decay=0.0)
    return data, n_train, model, opt


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    pair_arguments(p, lr=1e-3, steps=800, held=128)
    p.add_argument("--out", required=True, help="the JSON file to write")
    a = p.parse_args()
    data, n_train, student, opt = pairs_and_copy(p, a)
    x0, noise = data.latents, data.noise

    def predict(idx):
        t = torch.ones(len(idx))
        return flow.x0_from_v(noise[idx], student(noise[idx], t, data.text_of(idx)), t)

    def mse(idx) -> float:
        with torch.no_grad():
            return torch.cat([(predict(c) - x0[c]).pow(2).flatten(1).mean(1) for c in idx.split(128)]).mean().item()

    train, held = torch.arange(n_train), torch.arange(len(data) - a.held, len(data))
    rows, start = [{"step": 0, "train": mse(train), "held": mse(held), "seconds": 0.0}], time.time()
    print(rows[-1], flush=True)
    for step in range(1, a.steps + 1):
        b = train[torch.randint(0, n_train, (a.batch_size,))]
        loss = (predict(b) - x0[b]).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        if step % 100 == 0:
            rows.append({"step": step, "train": mse(train), "held": mse(held),
                         "seconds": round(time.time() - start, 1)})
            print(rows[-1], flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"data": a.data, "n_train": n_train, "held": a.held, "lr": a.lr,
                                       "extra_blocks": a.extra_blocks, "extra_gate": a.extra_gate,
                                       "rows": rows}, indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
