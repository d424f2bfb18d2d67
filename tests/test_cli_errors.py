"""Bad input gets one clear line and exit code 2, before any expensive work, and nothing half-written."""

import json
import shutil

import pytest

from ladd.cli import main


def run(args, capsys):
    code = main(args)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("line, message", [
    ("{oops", "not valid JSON"),
    (json.dumps({"prompt": "x", "objects": [{"shape": "star"}]}), "unknown shape 'star'"),
    (json.dumps({"prompt": "x", "objects": [{"shape": "circle"}] * 4}), "1 to 3 objects"),
    (json.dumps({"prompt": "x", "objects": [{"position": "top"}, {"position": "top"}]}), "two objects in one cell"),
])
def test_bad_prompt_file(tmp_path, capsys, line, message):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "a", "objects": [{"shape": "circle"}]}) + "\n" + line + "\n")
    out = tmp_path / "out"
    code, err = run(["eval", "--model", "real", "--prompts", str(prompts), "--out", str(out)], capsys)
    assert code == 2 and f"{prompts}:2" in err and message in err
    assert not out.exists()


def test_impossible_size(tmp_path, capsys):
    code, err = run(["eval", "--model", "real", "--height", "50", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "multiple of 16" in err and not (tmp_path / "o").exists()


def test_bad_shift(tmp_path, capsys):
    code, err = run(["eval", "--model", "nano-teacher", "--shift", "0", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "--shift must be > 0" in err and not (tmp_path / "o").exists()


def test_missing_model_folder(tmp_path, capsys):
    code, err = run(["sample", "--model", str(tmp_path / "nothing"), "--prompt", "a circle",
                     "--out", str(tmp_path / "x.png")], capsys)
    assert code == 2 and "neither a known name" in err


def test_missing_and_corrupt_assets(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LADD_ASSETS", str(tmp_path / "empty"))
    code, err = run(["eval", "--model", "real", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "nano-evaluator" in err and "LADD_ASSETS" in err

    broken = tmp_path / "broken"
    shutil.copytree(_repo_assets() / "nano" / "evaluator", broken / "x" / "nano" / "evaluator")
    monkeypatch.setenv("LADD_ASSETS", str(broken / "x"))
    weights = broken / "x" / "nano" / "evaluator" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    code, err = run(["eval", "--model", "real", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "corrupt" in err and str(weights) in err
    assert not (tmp_path / "o").exists()


def _repo_assets():
    from pathlib import Path

    return Path(__file__).resolve().parents[1] / "assets"
