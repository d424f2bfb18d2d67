"""benchmarks/map_fit.py: a copy of the teacher (or a deeper one, ``--extra-blocks``) fits its teacher's pairs,
reported on the pairs it trains on and on held-out ones; an impossible depth fails before any work."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import assets_with_data

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return assets_with_data(tmp_path_factory.mktemp("mapfit"))


def map_fit(root, out, *extra):
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "map_fit.py"), "--data", str(root / "data"),
                           "--teacher", str(root / "teacher"), "--steps", "100", "--held", "2", "--batch-size", "4",
                           "--out", str(out), *extra], capture_output=True, text=True, cwd=ROOT)


def test_a_deeper_copy_fits_the_pairs_it_trains_on(root, tmp_path):
    proc = map_fit(root, tmp_path / "fit.json", "--extra-blocks", "1")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "fit.json").read_text())
    assert report["extra_blocks"] == 1 and report["n_train"] == 8
    first, last = report["rows"][0], report["rows"][-1]
    assert (first["step"], last["step"]) == (0, 100) and last["train"] < 0.5 * first["train"]


def test_an_impossible_depth_fails_before_training(root, tmp_path):
    proc = map_fit(root, tmp_path / "bad.json", "--extra-blocks", "5")
    assert proc.returncode != 0 and "student.extra_blocks: got 5, the teacher has 2 blocks" in proc.stderr
    assert not (tmp_path / "bad.json").exists()
