"""`ladd bench` on the tiny random assets: every method through the same pipeline, one report, resumable."""

import json
from pathlib import Path

import pytest

from ladd.bench.config import BenchConfig
from ladd.config import ConfigError
from helpers import FakeEncoder, make_assets, save_tiny_featnet

pytestmark = pytest.mark.slow  # ~1 min: five methods trained and evaluated


def tiny(root, *extra):
    return [f"paths.teacher={root / 'teacher'}", f"paths.vae={root / 'vae'}", "data.num_samples=8",
            "data.shard_size=8", "data.batch_size=8", "train.batch_size=4", "ladd.disc.head_width=16",
            "dmd2.gan_head_width=16", "dmd2.critic_updates=2", "lcm.solver_steps=8", "add.head_width=16",
            f"add.feature_net={save_tiny_featnet(root / 'featnet')}", f"eval.cache_dir={root / 'cache'}", *extra]


@pytest.fixture
def fake_encoder(monkeypatch):
    from ladd.models import text_encoder as te

    monkeypatch.setattr(te, "load_text_encoder", lambda name="minilm", max_length=32, **_: FakeEncoder(max_length))


def test_quick_bench_of_every_method_writes_one_report_and_resumes(tmp_path, fake_encoder):
    from ladd.bench.run import bench

    make_assets(tmp_path)
    cfg = BenchConfig(quick=True, max_prompts=3, data=str(tmp_path / "data"), out=str(tmp_path / "bench"),
                      prompts="prompts/nano-eval.jsonl,prompts/nano-unseen.jsonl", steps="1,4",
                      cache_dir=str(tmp_path / "cache"))
    bench(cfg, tiny(tmp_path))
    out = tmp_path / "bench"
    report = json.loads((out / "bench.json").read_text())
    keys = [(r["prompt_file"].split("/")[-1], r["method"], r["steps"]) for r in report["rows"]]
    for f in ("nano-eval.jsonl", "nano-unseen.jsonl"):
        assert (f, "teacher", 3) in keys  # the tiny teacher's recommended 3 steps
        for m in ("few_step", "ladd", "lcm", "dmd2", "add"):
            assert (f, m, 1) in keys and (f, m, 4) in keys
    assert all(r["n_images"] == 3 for r in report["rows"])
    runs = {r["method"]: r for r in report["runs"]}
    assert runs["few_step"]["iterations"] == 0 and runs["ladd"]["iterations"] == 3
    assert runs["dmd2"]["seconds_per_iteration"] > 0 and runs["lcm"]["train_seconds"] > 0
    if Path("/proc/self/clear_refs").exists():  # Linux: the process's peak resident memory per method's run
        assert all(0.1 < r["peak_host_gib"] < 64 for r in runs.values())
    md = (out / "bench.md").read_text()
    assert "## prompts/nano-unseen.jsonl" in md and "vs teacher" in md and "| dmd2 | 4 | 4 |" in md
    for png in ("bench_quality.png", "bench_grid.png"):
        assert (out / png).stat().st_size > 1000
    # re-running reuses the trainings and the evaluations
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/eval/*/*/metrics.json")}
    assert len(stamps) == 2 * 5 * 2
    bench(cfg, tiny(tmp_path))
    again = json.loads((out / "bench.json").read_text())
    assert again["rows"] == report["rows"] and again["runs"] == report["runs"]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_bench_folders_share_the_teachers_rows(tmp_path, fake_encoder, caplog):
    """The teacher's row is evaluated once per teacher, prompt file and number of images, then every bench folder
    reuses it (the teacher is the slowest row: 50 steps with CFG)."""
    from ladd.bench.run import bench, teacher_row_dir

    make_assets(tmp_path)
    kw = dict(quick=True, methods="few_step", max_prompts=2, steps="1", data=str(tmp_path / "data"),
              prompts="prompts/nano-eval.jsonl", cache_dir=str(tmp_path / "cache"))
    first = bench(BenchConfig(out=str(tmp_path / "a"), **kw), tiny(tmp_path))["rows"][0]
    assert first["method"] == "teacher" and Path(first["out"]).parent == tmp_path / "cache" / "bench-teacher"
    stamp = (Path(first["out"]) / "metrics.json").stat().st_mtime_ns
    second = bench(BenchConfig(out=str(tmp_path / "b"), **kw), tiny(tmp_path))["rows"][0]
    assert second == first and (Path(first["out"]) / "metrics.json").stat().st_mtime_ns == stamp
    assert not (tmp_path / "b" / "teacher").exists()
    # a folder that holds another entry's run: the report will cover the listed methods only, and says so
    (tmp_path / "b" / "ladd" / "export").mkdir(parents=True)
    with caplog.at_level("WARNING", logger="ladd.bench.run"):
        bench(BenchConfig(out=str(tmp_path / "b"), **kw), tiny(tmp_path))
    assert "also holds ladd, not in --methods" in caplog.text
    teacher = str(tmp_path / "teacher")
    other = BenchConfig(out=str(tmp_path / "c"), **{**kw, "max_prompts": 3})
    assert teacher_row_dir(other, kw["prompts"], teacher) != teacher_row_dir(
        BenchConfig(out=str(tmp_path / "c"), **kw), kw["prompts"], teacher)


def test_equal_seconds_budget_is_sized_from_a_timed_probe(tmp_path, fake_encoder):
    from ladd.bench.run import train_method

    make_assets(tmp_path)
    cfg = BenchConfig(methods="ladd", budget="seconds", seconds=1e-3, probe=2, val_points=0,
                      data=str(tmp_path / "data"), out=str(tmp_path / "bench"))
    run = train_method(cfg, "ladd", tiny(tmp_path))
    budget = json.loads((tmp_path / "bench" / "ladd" / "bench_budget.json").read_text())
    assert budget["iterations"] == 2 and budget["seconds_per_iteration"] > 0  # at least the probe
    assert run["iterations"] == 2 and run["train_seconds"] > 0


def test_quality_curves_keep_validations_between_logged_steps(tmp_path):
    """A validation at step 135 with metrics logged every 10 steps is drawn at the interpolated training seconds."""
    from ladd.bench.report import curve_points

    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "train_seconds": s * 2.0}) + "\n"
                                                    for s in (10, 130, 140, 270)))
    val = [{"step": s, "steps": k, "alignment": 0.5, "fd": 3.0} for s in (270, 135) for k in (1, 4)]
    (tmp_path / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in val))
    top, seconds, rows = curve_points(tmp_path)
    assert top == 4 and [r["step"] for r in rows] == [135, 270] and seconds == [270.0, 540.0]
    assert curve_points(tmp_path / "missing") is None


def test_data_modes(tmp_path):
    """same: every method on --data's synthetic data (ADD's preset says real: overridden); native: ADD on real
    images in OUT/data-real, the others on --data."""
    same = BenchConfig(data=str(tmp_path / "syn"), out=str(tmp_path / "b"))
    assert same.data_overrides("add") == [f"paths.data={tmp_path / 'syn'}", "data.source=synthetic"]
    native = BenchConfig(data=str(tmp_path / "syn"), out=str(tmp_path / "b"), data_mode="native")
    assert native.data_overrides("add") == [f"paths.data={tmp_path / 'b' / 'data-real'}"]
    assert native.data_overrides("ladd") == [f"paths.data={tmp_path / 'syn'}"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(methods="ladd,gan"), "--methods"), (dict(steps="1,0"), "--steps"), (dict(per_prompt=0), "--per-prompt"),
    (dict(seconds=0), "--seconds"),
])
def test_bad_options_are_one_line(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        BenchConfig(**kwargs)


def test_a_named_recipe_runs_beside_its_method(tmp_path, fake_encoder):
    """--methods ladd-hybrid: configs/nano-ladd-hybrid.yaml (method: ladd, with the regression, guided and
    backward-simulation terms) trains and is evaluated like a method, under its own name."""
    from ladd.bench.config import method_of, preset_of
    from ladd.bench.run import bench

    assert method_of("ladd-hybrid") == "ladd" and method_of("lcm") == "lcm"
    assert (preset_of("ladd"), preset_of("ladd-default")) == ("configs/nano-ladd-plain.yaml", "configs/nano.yaml")
    assert method_of("ladd-default") == "ladd"
    make_assets(tmp_path)
    cfg = BenchConfig(quick=True, methods="ladd-hybrid", max_prompts=2, steps="1", data=str(tmp_path / "data"),
                      out=str(tmp_path / "bench"), prompts="prompts/nano-eval.jsonl", cache_dir=str(tmp_path / "cache"))
    report = bench(cfg, tiny(tmp_path))
    assert [r["method"] for r in report["runs"]] == ["ladd-hybrid"] and report["runs"][0]["iterations"] == 3
    lines = [json.loads(s) for s in (tmp_path / "bench" / "ladd-hybrid" / "metrics.jsonl").read_text().splitlines()]
    assert {"g_regression", "g_distill"} <= set(lines[-1])  # the recipe's terms were trained
    assert ("ladd-hybrid", 1) in {(r["method"], r["steps"]) for r in report["rows"]}


def test_an_evaluation_is_not_reused_once_its_prompt_file_is_edited(tmp_path):
    """ladd.distill.compare.reuse: a cached row is stale when its prompt file is newer (edited in place, it keeps
    its name and so the row's settings); a prompt subset that is asked for again is not rewritten."""
    import os
    from dataclasses import asdict

    from ladd.distill.compare import prompt_subset, reuse
    from ladd.evaluation.evaluate import EvalConfig, with_size
    from ladd.models.registry import resolve

    prompts = prompt_subset("prompts/nano-eval.jsonl", 4, tmp_path / "p" / "subset.jsonl")
    ecfg = EvalConfig(model=str(resolve("nano-teacher")), prompts=str(prompts), out=str(tmp_path / "row"))
    Path(ecfg.out).mkdir()
    row = {"alignment": 0.5, "steps": 50, "guidance": 3.0, "sampler": "euler", "shift": 1.0}  # the card's setting
    (Path(ecfg.out) / "metrics.json").write_text(json.dumps({**row, "config": asdict(with_size(ecfg))}))
    assert reuse(ecfg, ecfg.model) == row
    stamp = prompts.stat().st_mtime_ns
    os.utime(prompts, ns=(stamp - 10**10, stamp - 10**10))  # older than the row
    old = prompts.stat().st_mtime_ns
    assert prompt_subset("prompts/nano-eval.jsonl", 4, prompts).stat().st_mtime_ns == old  # the same subset
    assert reuse(ecfg, ecfg.model) is not None
    prompt_subset("prompts/nano-eval.jsonl", 5, prompts)  # another subset under the same name
    assert prompts.stat().st_mtime_ns != old
    os.utime(prompts, ns=(stamp + 10**10, stamp + 10**10))  # surely newer than the row
    assert reuse(ecfg, ecfg.model) is None
    prompts.unlink()  # gone: nothing to reuse (evaluate() then names the missing file)
    assert reuse(ecfg, ecfg.model) is None


def test_an_evaluation_is_not_reused_once_the_models_card_samples_otherwise(tmp_path):
    """ladd.distill.compare.reuse: a row sampled otherwise than the model's card says now (here the shipped
    student's 2-step grid, ``ladd_recommended.shifts``; a card edited beside unchanged weights) is stale."""
    from dataclasses import asdict

    from ladd.distill.compare import reuse
    from ladd.evaluation.evaluate import EvalConfig, with_size
    from ladd.models.registry import resolve

    ecfg = EvalConfig(model=str(resolve("nano-student")), prompts="prompts/nano-eval.jsonl", steps=2,
                      out=str(tmp_path / "row"))
    Path(ecfg.out).mkdir()
    for shift, reused in ((1.0, False), (3.0, True)):
        row = {"alignment": 0.5, "steps": 2, "guidance": 1.0, "sampler": "renoise", "shift": shift}
        (Path(ecfg.out) / "metrics.json").write_text(json.dumps({**row, "config": asdict(with_size(ecfg))}))
        assert (reuse(ecfg, ecfg.model) is not None) == reused


def test_every_plot_of_a_bench_draws_a_method_in_one_colour():
    from ladd.bench.report import method_colors

    runs = [{"method": m} for m in ("ladd-hybrid", "lcm", "few_step")]
    assert method_colors(runs) == {"teacher": "C0", "ladd-hybrid": "C1", "lcm": "C2", "few_step": "C3"}
