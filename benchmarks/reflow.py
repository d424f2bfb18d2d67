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
from ladd.models.io import read_config, save_model
from ladd.sampling import euler  # no_grad

from map_fit import pair_arguments, pairs_and_copy  # benchmarks/, the folder of this script


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    pair_arguments(p, lr=1e-4, steps=2000, held=512)
    p.add_argument("--euler-steps", type=int, default=25, help="the reflowed model's own multi-step sample")
    p.add_argument("--report-every", type=int, default=500)
    p.add_argument("--out", required=True, help="the model folder to write (and OUT.json)")
    a = p.parse_args()
    data, n_train, model, opt = pairs_and_copy(p, a)
    x0, noise = data.latents, data.noise
    held = torch.arange(len(data) - a.held, len(data))
    one_step, own_steps = flow.euler_grid(1), flow.euler_grid(a.euler_steps)

    def report(step: int, seconds: float) -> dict:
        model.eval()
        one, own = [], []
        for c in held.split(128):
            cond = data.text_of(c)
            first = euler(model, noise[c], one_step, cond)
            one.append((first - x0[c]).pow(2).flatten(1).mean(1))
            own.append((first - euler(model, noise[c], own_steps, cond)).pow(2).flatten(1).mean(1))
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
