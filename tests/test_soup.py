"""benchmarks/soup.py: the weight average of exported students, a folder that loads like any export."""

import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file

from helpers import make_assets
from ladd.models.registry import model_settings, vae_folder

ROOT = Path(__file__).parents[1]
WEIGHTS = "diffusion_pytorch_model.safetensors"


def _soup(*args):
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "soup.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)


def _two_exports(tmp_path):
    from ladd.distill.export import export_student
    from ladd.models.teacher import load_teacher

    paths = make_assets(tmp_path / "assets")
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        export_student(load_teacher(paths["teacher"]), out, steps=4, teacher_dir=paths["teacher"],
                       vae_dir=paths["vae"], text_encoder={"name": "fake", "max_length": 6}, card="# a student\n",
                       recommended={"steps": 4, "guidance": 1.0, "sampler": "renoise", "shift": 1.0,
                                    "grid": "uniform", "shifts": {"2": 3.0}})
    return a, b


def test_soup_is_the_weighted_mean_with_the_first_folders_setting(tmp_path):
    a, b = _two_exports(tmp_path)
    state = load_file(a / WEIGHTS)
    save_file({k: v + 1.0 for k, v in state.items()}, b / WEIGHTS)  # b = a + 1 everywhere
    proc = _soup(a, b, "--weights", "0.25,0.75", "--out", tmp_path / "nested" / "soup")
    assert proc.returncode == 0, proc.stderr
    soup = tmp_path / "nested" / "soup"
    mixed = load_file(soup / WEIGHTS)
    for k, v in state.items():
        assert (mixed[k] - (v + 0.75)).abs().max() < 1e-5, k
    assert model_settings(soup)[0] == model_settings(a)[0]  # the first's card setting
    assert vae_folder(soup).resolve() == vae_folder(a).resolve()  # its relative paths still reach the VAE
    assert "0.75 x" in (soup / "card.md").read_text()


def test_soup_refuses_mismatched_students_and_writes_nothing(tmp_path):
    a, b = _two_exports(tmp_path)
    state = load_file(a / WEIGHTS)
    save_file(dict(list(state.items())[1:]), b / WEIGHTS)  # one tensor fewer
    proc = _soup(a, b, "--out", tmp_path / "soup")
    assert proc.returncode != 0 and "names or shapes differ" in proc.stderr
    assert not (tmp_path / "soup").exists()
    proc = _soup(a, b, "--weights", "0.5,0.6", "--out", tmp_path / "soup")
    assert proc.returncode != 0 and "summing to 1" in proc.stderr
