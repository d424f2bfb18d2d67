"""benchmarks/latent_stats.py: latents' energy against a reference model's on the same noises."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from latent_stats import stats  # noqa: E402


def test_stats_measure_spatial_energy_against_the_reference():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(6, 3, 4, 4)) + rng.normal(size=(6, 3, 1, 1))  # per-sample offsets: not spatial energy
    same = stats(ref, ref)
    assert same["spatial_ratio"] == 1.0 and same["mse_to_reference"] == 0.0 and same["channel_ratios"] == [1.0] * 3
    louder = ref.copy()
    louder[:, 1] = 2 * ref[:, 1] - ref[:, 1].mean(axis=(1, 2), keepdims=True)  # twice the texture in channel 1
    s = stats(louder, ref)
    assert np.allclose(s["channel_ratios"], [1.0, 2.0, 1.0], atol=1e-3) and 1 < s["spatial_ratio"] < 2
    assert s["mse_to_reference"] > 0


def test_latent_stats_script_on_the_nano_models(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "latent_stats.py"),
                           "--reference", "teacher=nano-teacher:2:3:euler", "student=nano-student:1:1:renoise",
                           "--max-prompts", "2", "--per-prompt", "1", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [r["name"] for r in rows] == ["teacher", "student"] and rows[0]["spatial_ratio"] == 1.0
    assert rows[1]["spatial_ratio"] > 0 and len(rows[1]["channel_ratios"]) == 16
    assert "| student | 1 | 1 | renoise |" in (tmp_path / "results.md").read_text()
