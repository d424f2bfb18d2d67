"""``ladd soup``: the weight average of exported students, a folder that loads like any export."""

import json
import shlex
from pathlib import Path

from safetensors.torch import load_file, save_file

from helpers import make_assets
from ladd.cli import main
from ladd.models.registry import model_settings, vae_folder

WEIGHTS = "diffusion_pytorch_model.safetensors"
ROOT = Path(__file__).parents[1]


def _soup(capsys, *args) -> tuple[int, str]:
    code = main(["soup", *map(str, args)])
    return code, capsys.readouterr().err


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


def test_soup_is_the_weighted_mean_with_the_first_folders_setting(tmp_path, capsys):
    a, b = _two_exports(tmp_path)
    state = load_file(a / WEIGHTS)
    save_file({k: v + 1.0 for k, v in state.items()}, b / WEIGHTS)  # b = a + 1 everywhere
    (a / "lora").mkdir()  # a LoRA run's adapters: the first's only, so not the soup's
    soup = tmp_path / "nested" / "soup"
    code, err = _soup(capsys, a, b, "--weights", "0.25,0.75", "--out", soup)
    assert code == 0, err
    mixed = load_file(soup / WEIGHTS)
    for k, v in state.items():
        assert (mixed[k] - (v + 0.75)).abs().max() < 1e-5, k
    assert model_settings(soup)[0] == model_settings(a)[0]  # the first's card setting
    assert vae_folder(soup).resolve() == vae_folder(a).resolve()  # its relative paths still reach the VAE
    assert "0.75 x" in (soup / "card.md").read_text() and not (soup / "lora").exists()
    # re-running replaces the earlier soup (a recipe resumes); another non-empty folder needs --overwrite
    assert _soup(capsys, a, b, "--out", soup)[0] == 0
    again = load_file(soup / WEIGHTS)
    assert all((again[k] - (v + 0.5)).abs().max() < 1e-5 for k, v in state.items())
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    code, err = _soup(capsys, a, b, "--out", other)
    assert code == 2 and "not an earlier soup" in err and (other / "notes.txt").is_file()
    assert _soup(capsys, a, b, "--out", other, "--overwrite")[0] == 0 and (other / WEIGHTS).is_file()


def test_soup_refuses_bad_input_and_writes_nothing(tmp_path, capsys):
    a, b = _two_exports(tmp_path)
    state = load_file(a / WEIGHTS)
    save_file(dict(list(state.items())[1:]), b / WEIGHTS)  # one tensor fewer
    out = tmp_path / "soup"
    for args, message in [((a, b), "names or shapes differ"),
                          ((a, b, "--weights", "0.5,0.6"), "summing to 1"),
                          ((a, b, "--weights", "half,half"), "comma-separated numbers"),
                          ((a,), "at least two"),
                          ((a, tmp_path), "not exported students"),
                          ((a, b, "--out", a), "one of the students")]:
        code, err = _soup(capsys, *args, *(() if "--out" in args else ("--out", out)))
        assert code == 2 and message in err, (args, err)
        assert not out.exists() and not out.with_name("soup.tmp").exists()


def _shard(folder):
    """Re-save ``folder``'s weights as save_pretrained does for a large model: two shards and their index."""
    state = load_file(folder / WEIGHTS)
    names = sorted(state)
    halves = {"diffusion_pytorch_model-00001-of-00002.safetensors": names[::2],
              "diffusion_pytorch_model-00002-of-00002.safetensors": names[1::2]}
    for file, keys in halves.items():
        save_file({k: state[k] for k in keys}, folder / file, metadata={"format": "pt"})
    (folder / f"{WEIGHTS}.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: file for file, keys in halves.items() for k in keys}}))
    (folder / WEIGHTS).unlink()


def test_soup_of_sharded_exports_keeps_the_first_ones_files(tmp_path, capsys):
    """A large model's export is sharded (SD3.5-large): the soup reads and writes it one file at a time, in the
    first student's layout, and loads like it."""
    from ladd.models.teacher import load_teacher

    a, b = _two_exports(tmp_path)
    state = load_file(a / WEIGHTS)
    save_file({k: v + 1.0 for k, v in state.items()}, b / WEIGHTS)
    _shard(b)
    for first, second, out in ((b, a, tmp_path / "sharded"), (a, b, tmp_path / "single")):
        assert _soup(capsys, first, second, "--out", out)[0] == 0
        assert (out / f"{WEIGHTS}.index.json").is_file() == (first == b) and (out / WEIGHTS).is_file() == (first == a)
        mixed = load_teacher(out).transformer.state_dict()
        assert mixed.keys() == state.keys() and all((mixed[k] - (v + 0.5)).abs().max() < 1e-5 for k, v in state.items())
    (b / "diffusion_pytorch_model-00002-of-00002.safetensors").unlink()  # an incomplete copy: said, nothing written
    code, err = _soup(capsys, b, a, "--out", tmp_path / "broken")
    assert code == 2 and "shards that are missing" in err and not (tmp_path / "broken").exists()


def test_the_shipped_students_recipe_runs_two_valid_presets_and_averages_them():
    """recipes/nano-student.sh (the shipped student's one command) stays in step with the presets it names."""
    from ladd.distill.config import load_distill_config

    lines = [shlex.split(line.replace("$OUT", "runs/x")) for line in
             (ROOT / "recipes" / "nano-student.sh").read_text().splitlines() if line.startswith("ladd ")]
    runs = [args for args in lines if args[1] == "distill"]
    weights, exports = [], []
    for args in runs:
        overrides = [a for a in args[2:] if "=" in a]
        cfg = load_distill_config(ROOT / args[args.index("--config") + 1], overrides)
        weights.append(cfg.ladd.loss.regression_weight)
        exports.append(f"{cfg.paths.run_dir}/export")
    assert weights == [0.5, 0.25]
    assert lines[-1][:2] == ["ladd", "soup"] and lines[-1][2:4] == exports
