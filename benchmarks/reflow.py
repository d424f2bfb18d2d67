"""Is the teacher's coupling the obstacle to one step? Reflow it (2-rectified flow) and measure how straight it gets.

The 1-step student's regression target, the teacher's noise -> sample map, does not generalise past a held-out MSE of
~0.30 (benchmarks/map_fit.py). Rectified flow (Liu et al. 2022, arXiv 2209.03003; InstaFlow, arXiv 2309.06380)
straightens a flow by training a copy of it on straight lines between its own pairs: ``x_t = (1 - t) x + t z``,
velocity target ``z - x``, every t. Its own Euler samples then lie closer to its one-step ones, and those new pairs
are the ones InstaFlow distils. This script trains that copy of the teacher on the first pairs of a paired synthetic
set (the teacher's CFG samples: the copy learns the guided coupling and samples without CFG), then reports on the
last ``--held`` noises, never trained on:

- ``onestep_vs_pairs``: its 1-step sample against the teacher's sample of that noise (map_fit's held-out MSE);
- ``onestep_vs_own``: its 1-step sample against its own ``--euler-steps``-step Euler sample of that noise (how
  straight its flow is: the floor a 1-step student of *its* pairs would start from).

and writes it as a model folder (``ladd eval`` / ``benchmarks/student_eval.py`` load it: Euler, no guidance, at
``--euler-steps`` by default) so that its alignment can be measured at 1 and N steps.

    python benchmarks/reflow.py --data runs/synth8k --held 512 --steps 2000 --out runs/s50/reflow
    python benchmarks/student_eval.py --protocol val --steps 1 4 25 --out runs/s50/val-reflow -- rf=runs/s50/reflow
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ladd import flow
from ladd.data.shards import ShardDataset
from ladd.methods.components.student import freeze, init_student
from ladd.models.io import read_config, save_model
from ladd.models.teacher import load_teacher


def euler(model, z, cond, steps: int) -> torch.Tensor:
    times = flow.euler_grid(steps)
    x = z
    for t, t_next in zip(times[:-1], times[1:]):
        x = x + (t_next - t) * model(x, t.expand(len(x)), cond)
    return x


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="synthetic shards with pairs (made by a deterministic sampler)")
    p.add_argument("--teacher", default="assets/nano/teacher")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--held", type=int, default=512, help="the last HELD pairs are held out")
    p.add_argument("--euler-steps", type=int, default=25, help="the reflowed model's own multi-step sample")
    p.add_argument("--report-every", type=int, default=500)
    p.add_argument("--out", required=True, help="the model folder to write (and OUT.json)")
    a = p.parse_args()
    torch.manual_seed(0)
    data = ShardDataset.load(a.data, pairs=True)
    if not data.paired:
        p.error(f"{a.data} has no pairs: make it with a deterministic sampler (data.sampler euler)")
    n_train = len(data) - a.held
    if n_train < a.batch_size:
        p.error(f"--held {a.held} leaves {n_train} of {len(data)} pairs to train on")
    x0, noise = data.latents, data.noise
    model = init_student(freeze(load_teacher(a.teacher)))
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.99), weight_decay=0.0)
    held = torch.arange(n_train, len(data))

    def report(step: int, seconds: float) -> dict:
        model.eval()
        one, own = [], []
        with torch.no_grad():
            for c in held.split(128):
                cond = data.text_of(c)
                first = euler(model, noise[c], cond, 1)
                one.append((first - x0[c]).pow(2).flatten(1).mean(1))
                own.append((first - euler(model, noise[c], cond, a.euler_steps)).pow(2).flatten(1).mean(1))
        model.train()
        row = {"step": step, "onestep_vs_pairs": torch.cat(one).mean().item(),
               "onestep_vs_own": torch.cat(own).mean().item(), "seconds": round(seconds, 1)}
        print(row, flush=True)
        return row

    start = time.time()
    rows = [report(0, 0.0)]
    g = torch.Generator().manual_seed(1)
    for step in range(1, a.steps + 1):
        b = torch.randint(0, n_train, (a.batch_size,), generator=g)
        t = flow.logit_normal(a.batch_size, generator=g)  # the teacher's own training times (SD3's)
        x_t = flow.add_noise(x0[b], noise[b], t.view(-1, 1, 1, 1))
        loss = (model(x_t, t, data.text_of(b)) - flow.velocity(x0[b], noise[b])).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % a.report_every == 0 or step == a.steps:
            rows.append(report(step, time.time() - start))
    config = read_config(a.teacher)
    config["ladd_recommended"] = {"guidance": 1.0, "sampler": "euler", "steps": a.euler_steps}
    card = (f"# Reflowed teacher (diagnostic)\n\n`python benchmarks/reflow.py --data {a.data} --held {a.held} "
            f"--steps {a.steps} --lr {a.lr} --out {a.out}`: a copy of `{a.teacher}` trained on straight lines "
            f"between {n_train} of its CFG pairs; Euler, no guidance.\n")
    save_model(model.transformer.eval(), a.out, config, card)
    Path(str(a.out).rstrip("/") + ".json").write_text(json.dumps(
        {"data": a.data, "n_train": n_train, "held": a.held, "lr": a.lr, "euler_steps": a.euler_steps,
         "rows": rows}, indent=1))
    print(f"wrote {a.out} and {a.out}.json")


if __name__ == "__main__":
    main()
