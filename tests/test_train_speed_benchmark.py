"""benchmarks/train_speed.py: the cost of one iteration against a teacher training step, for any preset (tiny
batch, random weights of the nano teacher's shape, one repeat: the script's plumbing, not its figures)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.parametrize("config, has_floor", [("configs/nano.yaml", True), ("configs/nano-ladd-guided.yaml", False)])
def test_train_speed_times_a_preset_with_and_without_a_guided_target(tmp_path, config, has_floor):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train_speed.py"), "--config", config,
                           "--random", "--batch-size", "4", "--repeats", "1", "--warmup", "0", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["method"] == "ladd" and result["ratio"] > 0
    # the floor counts the adversarial game's teacher passes only; a guided target's are not timed apart
    assert (result["floor_ratio"] is not None) == has_floor
    assert ("floor: not computed" in proc.stdout) == (not has_floor)
