"""kill -9 at random moments of `ladd synth` and `ladd distill` (tiny preset, real subprocesses): re-running the
same command until it finishes gives the same shards, and the same student, EMA, heads and optimizer state, bit
for bit, as an uninterrupted run; metrics.jsonl holds each logged iteration once.

Kills are timed by progress (a random number of finished shards / logged iterations, then a random delay of up
to half a second), so that they land at every stage: while loading, mid-iteration, mid-checkpoint, mid-shard."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import assets_with_data, make_assets, tiny_overrides

TESTS = Path(__file__).parent
pytestmark = pytest.mark.slow  # ~2 min: ~20 Python processes


def start(args: list[str]) -> subprocess.Popen:
    code = f"import sys; sys.path.insert(0, {str(TESTS)!r}); from helpers import cli_with_fake_encoder; " \
           f"sys.exit(cli_with_fake_encoder(sys.argv[1:]))"
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=TESTS.parent, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def finish(args: list[str]) -> None:
    proc = start(args)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]


def kill_9_until_done(args: list[str], progress, rng: random.Random, kills: int = 3) -> int:
    """Run the command ``kills`` times, each killed (kill -9) once ``progress()`` has advanced by a random 0-2
    units from where it was (0: during start-up) plus a random delay; then once to the end. Returns how many
    runs were killed before finishing (a run may finish first)."""
    killed = 0
    for _ in range(kills):
        target = progress() + rng.randint(0, 2)
        proc = start(args)
        deadline = time.time() + 300
        while progress() < target and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.5))
        if proc.poll() is not None:  # finished first
            _, err = proc.communicate()
            assert proc.returncode == 0, err[-3000:]
            return killed
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        killed += 1
    finish(args)
    return killed


def tensors(path: Path) -> dict:
    """Every tensor of the safetensors files in ``path``, but the saved global RNG states (``rng.safetensors``):
    training draws come from seeded generators (ladd.draws), the global RNG is unseeded and differs between any
    two processes, killed or not."""
    return {p.name + ":" + k: v for p in sorted(path.glob("*.safetensors")) if p.name != "rng.safetensors"
            for k, v in load_file(p).items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kill_9_during_distill_resumes_to_the_same_run(tmp_path, seed):
    assets_with_data(tmp_path)
    steps = 8
    common = ["distill", "--config", "configs/tiny.yaml", f"train.steps={steps}", "train.ckpt_every=1"]
    finish([*common, *tiny_overrides(tmp_path, f"paths.run_dir={tmp_path / 'ref'}")])
    args = [*common, *tiny_overrides(tmp_path, f"paths.run_dir={tmp_path / 'run'}")]
    metrics = tmp_path / "run" / "metrics.jsonl"

    def logged() -> int:
        return len(metrics.read_text().splitlines()) if metrics.is_file() else 0

    assert kill_9_until_done(args, logged, random.Random(seed)) >= 1
    last = f"checkpoints/step-{steps:06d}"
    assert same(tensors(tmp_path / "run" / last), tensors(tmp_path / "ref" / last))
    assert same(tensors(tmp_path / "run" / "export"), tensors(tmp_path / "ref" / "export"))
    assert [json.loads(s)["step"] for s in metrics.read_text().splitlines()] == list(range(1, steps + 1))


@pytest.mark.parametrize("seed", [0, 1])
def test_kill_9_during_synth_resumes_to_the_same_data(tmp_path, seed):
    make_assets(tmp_path)
    common = ["synth", "--config", "configs/tiny.yaml", "data.num_samples=12", "data.shard_size=2",
              "data.batch_size=2"]
    finish([*common, *tiny_overrides(tmp_path, f"paths.data={tmp_path / 'ref'}")])
    args = [*common, *tiny_overrides(tmp_path, f"paths.data={tmp_path / 'data'}")]

    def shards() -> int:
        return len(list((tmp_path / "data").glob("shard-*.safetensors")))

    assert kill_9_until_done(args, shards, random.Random(seed)) >= 1
    assert same(tensors(tmp_path / "data"), tensors(tmp_path / "ref"))
    manifest = [json.loads((tmp_path / d / "dataset.json").read_text()) for d in ("data", "ref")]
    assert manifest[0] == manifest[1]
