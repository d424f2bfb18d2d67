"""Host memory of training against the size of the synthetic set: in memory (``data.stream=false``) vs streamed
from the shard files (``data.stream=true``). Prints a Markdown table and writes JSON.

    python benchmarks/data_memory.py --samples 10000,100000 --out runs/bench-data-memory

For each size it writes a nano-format data folder of that many samples (random latents and text states in the
shapes the nano teacher's data have, records with real seeds, the manifest ``ladd distill`` expects for
configs/nano.yaml: the content is noise, the layout and sizes are the real ones; a ladd synth of 100k teacher
samples would take ~7 CPU-hours), then runs ``ladd distill`` for a few iterations on it in a fresh process per
mode and reports that process's peak resident memory (Linux ``VmHWM``) and wall time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

CHILD = """
import sys
from ladd.cli import main
code = main(sys.argv[1:])
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print("PEAK_KB", peak)
sys.exit(code)
"""


def make_data(folder: Path, n: int, shard_size: int) -> None:
    """A complete nano-format data folder of ``n`` random samples (skipped when already complete)."""
    from ladd.data import shards
    from ladd.data.synth import generation_settings, sample_record
    from ladd.distill.config import load_distill_config

    cfg = load_distill_config("configs/nano.yaml", [f"paths.data={folder}", f"data.num_samples={n}",
                                                    f"data.shard_size={shard_size}"])
    gen = generation_settings(cfg)
    todo = shards.missing_shards(folder, n, shard_size)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    c, h, w = gen["latent_shape"]
    length, width = gen["text_encoder"]["max_length"], 384  # MiniLM's token states
    for k in todo:
        rows = shards.shard_range(k, shard_size, n)
        records = [{**sample_record(gen["seed"], i), "spec": []} for i in rows]
        m = len(rows)
        tensors = {"latents": torch.from_numpy(rng.standard_normal((m, c, h, w), dtype=np.float32)),
                   "tokens": torch.from_numpy(rng.standard_normal((m, length, width), dtype=np.float32)).half(),
                   "pooled": torch.from_numpy(rng.standard_normal((m, width), dtype=np.float32)).half()}
        shards.write_shard(shards.shard_path(folder, k), tensors, records, gen)
    shards.write_manifest(folder, gen)


def run(folder: Path, n: int, shard_size: int, stream: bool, steps: int, out: Path) -> dict:
    run_dir = out / f"run-{n}-{'stream' if stream else 'memory'}"
    args = ["distill", f"paths.data={folder}", f"data.num_samples={n}", f"data.shard_size={shard_size}",
            f"paths.run_dir={run_dir}",
            f"data.stream={'true' if stream else 'false'}", f"train.steps={steps}", "train.sample_every=0",
            "train.ckpt_every=1000", "eval.val_every=0", "--no-eval"]
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"ladd {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    peak = int(next(line.split()[1] for line in proc.stdout.splitlines() if line.startswith("PEAK_KB")))
    on_disk = sum(p.stat().st_size for p in folder.glob("shard-*.safetensors"))
    return {"samples": n, "stream": stream, "peak_host_gib": peak / 2**20, "data_gib": on_disk / 2**30,
            "seconds": wall, "iterations": steps}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", default="10000,100000")
    p.add_argument("--shard-size", type=int, default=1024)
    p.add_argument("--steps", type=int, default=5, help="training iterations per run")
    p.add_argument("--data-root", default="runs/bench-data-memory/data", help="where the data folders go")
    p.add_argument("--out", default="runs/bench-data-memory")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in [int(s) for s in args.samples.split(",")]:
        folder = Path(args.data_root) / f"random-{n}"
        make_data(folder, n, args.shard_size)
        for stream in (False, True):
            rows.append(run(folder, n, args.shard_size, stream, args.steps, out))
            print(rows[-1], flush=True)
    lines = [f"`ladd distill` for {args.steps} iterations (configs/nano.yaml, batch 32) on random nano-format data; "
             f"peak resident memory of the process", "", "| samples | data on disk GiB | reader | peak host GiB | "
             "wall s |", "|---|---|---|---|---|"]
    lines += [f"| {r['samples']:,} | {r['data_gib']:.2f} | {'stream' if r['stream'] else 'in memory'} | "
              f"{r['peak_host_gib']:.2f} | {r['seconds']:.0f} |" for r in rows]
    table = "\n".join(lines)
    print(table)
    (out / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
    (out / "results.md").write_text(table + "\n")
    print(f"wrote {out}/results.json and {out}/results.md")


if __name__ == "__main__":
    main()
