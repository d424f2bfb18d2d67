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


def test_a_library_bug_keeps_its_traceback(monkeypatch, capsys):
    """Only the errors a user can fix become one line; an unexpected ValueError is a bug and propagates."""
    from ladd import commands

    def buggy(args):
        raise ValueError("an internal invariant broke")

    monkeypatch.setattr(commands, "run_sample", buggy)
    with pytest.raises(ValueError, match="internal invariant"):
        main(["sample", "--prompt", "a circle"])


def test_flags_come_from_the_typed_configs(capsys):
    """ladd eval / ladd sample flags are generated from EvalConfig / SampleConfig (ladd.config.add_arguments)."""
    from ladd.cli import build_parser
    from ladd.commands import SampleConfig
    from ladd.config import from_args
    from ladd.evaluation.evaluate import EvalConfig

    args = build_parser().parse_args(["eval", "--per-prompt", "2", "--save-images", "--sampler", "euler"])
    cfg = from_args(EvalConfig, args)
    assert (cfg.per_prompt, cfg.save_images, cfg.sampler, cfg.steps) == (2, True, "euler", None)
    args = build_parser().parse_args(["sample", "--prompt", "a red circle", "--n", "3"])
    assert from_args(SampleConfig, args).n == 3
    with pytest.raises(SystemExit):
        build_parser().parse_args(["sample"])  # --prompt is required
    assert "--prompt" in capsys.readouterr().err


def test_outputs_are_checked_before_any_work(tmp_path, capsys):
    """An --out that cannot be written fails in one line before a model loads or an image is made."""
    import os

    a_file = tmp_path / "taken"
    a_file.write_text("x")
    code, err = run(["eval", "--model", "real", "--limit", "2", "--out", str(a_file)], capsys)
    assert code == 2 and "is a file" in err
    code, err = run(["sample", "--prompt", "a red circle", "--out", str(tmp_path)], capsys)
    assert code == 2 and "is a folder" in err and not list(tmp_path.glob("*.tmp.png"))
    if os.geteuid() != 0:  # root writes anywhere: the read-only case means nothing there
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        code, err = run(["eval", "--model", "real", "--limit", "2", "--out", str(locked / "o")], capsys)
        assert code == 2 and "not a writable folder" in err


@pytest.mark.parametrize("args, flag", [
    (["eval", "--limit", "0"], "--limit"), (["eval", "--limit", "-358"], "--limit"),
    (["eval", "--batch-size", "0"], "--batch-size"), (["eval", "--per-prompt", "0"], "--per-prompt"),
    (["sample", "--prompt", "a", "--steps", "0"], "--steps"), (["sample", "--prompt", "a", "--n", "0"], "--n"),
])
def test_counts_must_be_positive(args, flag, capsys, tmp_path):
    code, err = run([*args, "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and f"{flag} must be an integer >= 1" in err and not (tmp_path / "o").exists()


def test_yaml_errors_wrong_model_kind_and_flag_order(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  steps: [1,\n")
    code, err = run(["distill", "--config", str(bad)], capsys)
    assert code == 2 and str(bad) in err and "not valid YAML" in err
    code, err = run(["distill", "paths.teacher=assets/nano/vae", "--no-eval", f"paths.run_dir={tmp_path / 'r'}",
                     f"paths.data={tmp_path / 'd'}"], capsys)  # overrides after a flag too
    assert code == 2 and "is not a teacher" in err and "assets/nano/vae" in err


@pytest.mark.parametrize("rank, shown", [("0", True), ("1", False)])
def test_only_process_zero_logs_progress(tmp_path, rank, shown):
    """Under torchrun / accelerate launch (RANK set) each INFO line comes once, from process 0."""
    import os
    import subprocess
    import sys

    code = ("import logging; from ladd.cli import main; "
            f"main(['nano', 'make-prompts', '--per-category', '1', '--out', {str(tmp_path / 'p.jsonl')!r}]); "
            "logging.getLogger('ladd.distill.run').info('PROBE'); logging.getLogger('ladd').warning('WARN')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "RANK": rank})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert ("PROBE" in proc.stderr) == shown and "WARN" in proc.stderr
