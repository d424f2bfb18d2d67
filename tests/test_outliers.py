"""benchmarks/outliers.py: the FD with and without the images further than any real one, and without some words."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from outliers import uses_any  # noqa: E402


def test_uses_any_matches_whole_words_only():
    assert uses_any("we see a single tile", ["tile"]) and uses_any("two Tiles", ["tiles"])
    assert not uses_any("a tiled floor", ["tile"]) and not uses_any("a circle", [])
    assert uses_any("a plus symbol", ["plus symbol"]) and not uses_any("a plus sign", ["plus symbol"])


def test_outliers_script_reports_the_fd_without_the_prompts_using_a_word(tmp_path):
    prompts = [json.loads(line) for line in (ROOT / "prompts" / "nano-unseen.jsonl").read_text().splitlines()][:150]
    with_tile = sum(uses_any(p["prompt"], ["tile"]) for p in prompts)
    assert 0 < with_tile < len(prompts) - 100  # some left out, enough kept for a covariance
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "outliers.py"), "s=nano-student:1:1:renoise",
                           "--prompts", "prompts/nano-unseen.jsonl", "--max-prompts", "150", "--per-prompt", "2",
                           "--without", "tile", "--out", str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    row = json.loads((tmp_path / "results.json").read_text())["rows"][0]
    assert row["images"] == 300 and row["images_without_words"] == 2 * (150 - with_tile)
    assert np.isfinite(row["fd_without_words"]) and row["fd_without_words"] != row["fd"]
    header = (tmp_path / "results.md").read_text().splitlines()[2]
    assert header.endswith("| median distance | FD without prompts using tile |")
    few = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "outliers.py"), "s=nano-student:1:1:renoise",
                          "--prompts", "prompts/nano-unseen.jsonl", "--max-prompts", "150", "--per-prompt", "2",
                          "--without", "a", "--out", str(tmp_path / "few")], capture_output=True, text=True, cwd=ROOT)
    assert few.returncode != 0 and "too few" in few.stderr
