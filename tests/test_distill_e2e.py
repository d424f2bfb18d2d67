"""`ladd distill` end to end on tiny random models (CPU, seconds): synth, a few LADD steps, export, load the export
and sample it, evaluate student and teacher with the real nano evaluator on 3 prompts, the comparison table;
and bad config values fail with a message naming the field before any model is loaded."""

import json
import shutil

import pytest
import torch
from PIL import Image

from ladd.cli import main
from ladd.config import ConfigError
from ladd.data import shards
from ladd.distill.run import distill
from helpers import FakeEncoder, make_assets, tiny_overrides


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def fake_text_encoder(monkeypatch):
    """The registry and `ladd distill` load text encoders through this function; the tiny teacher takes 32-d."""
    from ladd.models import text_encoder as te

    monkeypatch.setattr(te, "load_text_encoder", lambda name="minilm", max_length=32, **_: FakeEncoder(max_length))


def test_distill_end_to_end(tmp_path, fake_text_encoder, monkeypatch):
    from safetensors.torch import load_file

    from ladd.models.registry import load_generator
    from ladd.models.teacher import load_teacher
    from ladd.sampling import renoise

    make_assets(tmp_path)
    overrides = tiny_overrides(tmp_path, "eval.enabled=true", "eval.max_prompts=3", "eval.per_prompt=1",
                               "eval.grid_prompts=3", f"eval.cache_dir={tmp_path / 'cache'}", "train.sample_every=2")
    summary = distill("configs/tiny.yaml", overrides)
    run = tmp_path / "run"
    for name in ("config.yaml", "log.txt", "metrics.jsonl", "samples/000002.png", "samples/000004.png",
                 "checkpoints/step-000004/state.json", "export/config.json",
                 "export/diffusion_pytorch_model.safetensors", "export/scheduler/scheduler_config.json",
                 "export/card.md", "comparison.md", "comparison.json", "comparison.png"):
        assert (run / name).is_file(), name
    log = (run / "log.txt").read_text()
    assert "writing 3 of 3 shards" in log and "exported the student" in log

    # the export is the EMA student, loadable by load_teacher and by the registry with the student's defaults
    student = load_teacher(run / "export")
    ema = load_file(run / "checkpoints" / "step-000004" / "ema.safetensors")
    for k, v in student.state_dict().items():
        assert torch.equal(v, ema["shadow." + k]), k
    scheduler = json.loads((run / "export" / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "FlowMatchEulerDiscreteScheduler" and scheduler["shift"] == 1.0
    # the student's scheduler (ladd.distill.pipeline): its default 4-step call is the grid and the re-noising sampler
    assert scheduler["shift_terminal"] == 0.25 and scheduler["stochastic_sampling"]
    gen = load_generator(str(run / "export"))
    assert gen.recommended == {"steps": 4, "guidance": 1.0, "sampler": "renoise", "shift": 1.0, "grid": "uniform"}
    # ladd's keys live in ladd.json: diffusers reads a config.json of its own keys (no "not expected" warning)
    assert not [k for k in json.loads((run / "export" / "config.json").read_text()) if k.startswith("ladd_")]
    assert json.loads((run / "export" / "ladd.json").read_text())["ladd_trained_steps"] == 4
    cond = FakeEncoder().encode(["a red circle", "two blue squares"])
    x0 = renoise(student, torch.randn(2, 4, 8, 8), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]), cond,
                 generator=torch.Generator().manual_seed(0))
    assert x0.shape == (2, 4, 8, 8) and torch.isfinite(x0).all()
    assert gen.vae.decode(x0).shape == (2, 3, 64, 64)

    # the comparison: teacher at its recommended setting (3 Euler steps, cfg 2) and at 4 steps, student 1/2/4
    rows = summary["rows"]
    assert [r["slug"] for r in rows] == ["teacher-recommended", "teacher-4step", "student-1step", "student-2step",
                                         "student-4step"]
    assert [r["nfe_per_image"] for r in rows] == [6, 8, 1, 2, 4] and rows[0]["speedup"] == 1.0
    assert all(r["n_images"] == 3 and r["alignment"] * 3 == pytest.approx(round(r["alignment"] * 3)) for r in rows)
    md = (run / "comparison.md").read_text()
    assert "student 4 steps" in md and "speedup" in md and "s/img" in md
    assert json.loads((run / "comparison.json").read_text())[2]["steps"] == 1
    assert Image.open(run / "comparison.png").size == (2 * (5 * 66 + 2), 2 * (3 * 66 + 2))  # 5 models x 3 prompts
    assert "## Evaluation" in (run / "export" / "card.md").read_text()

    # re-running the same command reuses everything: no training, no re-export, no re-evaluation
    stamps = {p: p.stat().st_mtime_ns for p in [run / "export" / "config.json", *run.glob("eval/*/metrics.json")]}
    assert distill("configs/tiny.yaml", overrides)["steps"] == 4
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    # a newer VAE (it decodes every evaluated sample) makes the evaluations run again, but not the training
    import os
    import time

    later = time.time() + 5
    os.utime(tmp_path / "vae" / "model.safetensors", (later, later))
    assert distill("configs/tiny.yaml", overrides)["steps"] == 4
    assert all(p.stat().st_mtime_ns != t for p, t in stamps.items() if p.parent.parent.name == "eval")
    assert (run / "export" / "config.json").stat().st_mtime_ns == stamps[run / "export" / "config.json"]

    # `ladd export` writes the same student (and the run's card) to another folder
    assert main(["export", str(run), "--out", str(tmp_path / "shipped")]) == 0
    again = load_file(tmp_path / "shipped" / "diffusion_pytorch_model.safetensors")
    first = load_file(run / "export" / "diffusion_pytorch_model.safetensors")
    assert again.keys() == first.keys() and all(torch.equal(again[k], first[k]) for k in first)
    assert (tmp_path / "shipped" / "card.md").read_text() == (run / "export" / "card.md").read_text()
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "x")]) == 2  # not a run folder
    assert main(["export", str(run), "--out", str(tmp_path / "shipped")]) == 0  # an earlier export of this run
    assert main(["export", str(run), "--out", str(tmp_path / "x"), "--ema", "0.9:3"]) == 2  # no train.extra_emas
    assert main(["export", str(run), "--out", str(tmp_path / "raw"), "--raw"]) == 0
    assert "the raw student weights" in (tmp_path / "raw" / "card.md").read_text()  # not the EMA's card

    # exports never lose data: not into the run folder (or one holding it), not over other files
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    assert main(["export", str(run), "--out", str(run)]) == 2
    assert main(["export", str(run), "--out", str(tmp_path)]) == 2
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before
    notes = tmp_path / "mine"
    notes.mkdir()
    (notes / "notes.md").write_text("keep me")
    assert main(["export", str(run), "--out", str(notes)]) == 2
    assert (notes / "notes.md").read_text() == "keep me"
    assert main(["export", str(run), "--out", str(notes), "--overwrite"]) == 0
    assert (notes / "config.json").is_file() and not (notes / "notes.md").exists()

    # a damaged newest checkpoint: the export takes the previous one and says so; the run folder is not changed
    ema = run / "checkpoints" / "step-000004" / "ema.safetensors"
    ema.write_bytes(ema.read_bytes()[:100])
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    assert main(["export", str(run), "--out", str(tmp_path / "older")]) == 0
    assert json.loads((tmp_path / "older" / "ladd_export.json").read_text())["trained_steps"] == 2
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before

    # a relative run folder is named relative to the export: no machine's path in a shipped folder
    monkeypatch.chdir(tmp_path)
    assert main(["export", "run", "--out", "out/rel"]) == 0
    assert json.loads((tmp_path / "out" / "rel" / "ladd_export.json").read_text())["run_dir"] == "../../run"


@pytest.fixture
def no_model_loading(monkeypatch):
    """Any attempt to build or load a model (or a text encoder) fails the test."""
    import diffusers

    from ladd.models import text_encoder as te

    def boom(*args, **kwargs):
        raise AssertionError("a model was loaded before the config was validated")

    for cls in (diffusers.SD3Transformer2DModel, diffusers.AutoencoderKL):
        monkeypatch.setattr(cls, "from_pretrained", boom)
        monkeypatch.setattr(cls, "from_config", boom)
    monkeypatch.setattr(te, "load_text_encoder", boom)


@pytest.mark.parametrize("override, field", [
    ("ladd.disc.blocks=[0, 5]", r"ladd\.disc\.blocks: unknown block index \[5\]: the teacher has 2 blocks"),
    ("train.batch_size=3", r"train\.batch_size"),
    ("data.source=web", r"data\.source"),
    ("data.height=50", r"data\.height"),
    ("eval.sampler=ddim", r"eval\.sampler"),
    ("eval.student_steps=[0]", r"eval\.student_steps"),
    ("eval.prompts=nowhere.jsonl", r"nowhere\.jsonl does not exist"),
    ("student.init=nowhere", r"student\.init: nowhere does not exist"),
])
def test_bad_config_fails_before_any_model_is_loaded(tmp_path, override, field, request):
    make_assets(tmp_path)
    request.getfixturevalue("no_model_loading")
    with pytest.raises((ConfigError, ValueError), match=field):
        distill("configs/tiny.yaml", tiny_overrides(tmp_path, "eval.enabled=true", override))
    assert not (tmp_path / "run").exists() and not (tmp_path / "data").exists()


def test_vae_that_does_not_fit_the_teacher(tmp_path, request):
    make_assets(tmp_path)
    request.getfixturevalue("no_model_loading")
    with pytest.raises(ConfigError, match=r"paths\.vae.*latent_channels 16 vs 4.*set paths\.vae="):
        distill("configs/tiny.yaml", tiny_overrides(tmp_path) + ["paths.vae=assets/nano/vae"])


def test_student_init_of_another_architecture_fails_before_any_model_is_loaded(tmp_path, request):
    make_assets(tmp_path)
    config = json.loads((tmp_path / "teacher" / "config.json").read_text())
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({**config, "num_layers": 3}))
    request.getfixturevalue("no_model_loading")
    with pytest.raises(ConfigError, match=r"student\.init: .*other is not a model of the teacher's architecture "
                                          r"\(num_layers 3 vs 2\)"):
        distill("configs/tiny.yaml", tiny_overrides(tmp_path, f"student.init={tmp_path / 'other'}"))
    with pytest.raises(ConfigError, match=r"student\.init: .*vae is not a teacher"):
        distill("configs/tiny.yaml", tiny_overrides(tmp_path, f"student.init={tmp_path / 'vae'}"))
    assert not (tmp_path / "run").exists()


def test_student_init_starts_the_student_from_that_model(tmp_path, fake_text_encoder):
    """student.init: the student (of every method, through init_student) starts from the folder's weights, not the
    teacher's; its export rebuilds the student from the teacher and the checkpoint (the init folder not read)."""
    import shutil

    from ladd.distill.config import load_distill_config
    from ladd.distill.run import build_method
    from ladd.models.teacher import load_teacher

    make_assets(tmp_path)
    distill("configs/tiny.yaml", tiny_overrides(tmp_path, "train.steps=2"))
    first = tmp_path / "first"
    shutil.move(tmp_path / "run" / "export", first)
    init = load_teacher(first).state_dict()
    teacher = load_teacher(tmp_path / "teacher").state_dict()
    assert any(not torch.equal(init[k], teacher[k]) for k in init)
    overrides = tiny_overrides(tmp_path, f"student.init={first}", "train.steps=2", f"paths.run_dir={tmp_path / 'b'}")
    for method in ("method=ladd", "method=lcm lcm.guidance=1"):
        cfg = load_distill_config("configs/tiny.yaml", [*overrides, *method.split()])
        student = build_method(cfg).modules("cpu")["student"]
        assert all(torch.equal(v, init[k]) for k, v in student.state_dict().items())
    distill("configs/tiny.yaml", overrides)
    shutil.rmtree(first)
    assert main(["export", str(tmp_path / "b"), "--out", str(tmp_path / "again")]) == 0
    assert load_teacher(tmp_path / "again").state_dict().keys() == init.keys()


def test_cli_bad_config_exit_code(tmp_path, capsys, request):
    make_assets(tmp_path)
    request.getfixturevalue("no_model_loading")
    code = main(["distill", "--config", "configs/tiny.yaml", *tiny_overrides(tmp_path, "ladd.disc.blocks=[7]")])
    assert code == 2 and "ladd.disc.blocks" in capsys.readouterr().err
    code = main(["synth", "--config", "configs/tiny.yaml", *tiny_overrides(tmp_path, "data.num_samples=0")])
    assert code == 2 and "data.num_samples" in capsys.readouterr().err


def test_synth_makes_real_images_under_a_preset_whose_method_needs_pairs(tmp_path, capsys, fake_text_encoder):
    """The heads' reals folder as ladd distill's message says to make it: `ladd synth --config <a preset with the
    regression term> --source real paths.data=<folder>`, also the folder the preset's paths.reals names (the pairs
    rule and the reals' checks bind training on the data, not making them);
    the same preset still refuses to synthesise teacher samples that have no pairs."""
    make_assets(tmp_path)
    reals = tmp_path / "reals"
    # the folder the preset names as its heads' reals (configs/nano.yaml's paths.reals): made under that preset
    common = ["ladd.loss.regression_weight=1", "data.num_samples=4", "data.shard_size=4", f"paths.reals={reals}"]
    code = main(["synth", "--config", "configs/tiny.yaml", "--source", "real",
                 *tiny_overrides(tmp_path, f"paths.data={reals}", *common)])
    assert code == 0 and (reals / "dataset.json").is_file()
    code = main(["synth", "--config", "configs/tiny.yaml",
                 *tiny_overrides(tmp_path, "data.sampler=renoise", *common)])
    assert code == 2 and "regression" in capsys.readouterr().err


def test_few_step_method_trains_nothing_and_exports_the_teacher_at_few_steps(tmp_path, fake_text_encoder):
    """The interface is not LADD-shaped: a method without trainable modules runs through the same pipeline."""
    from ladd.models.registry import load_generator

    make_assets(tmp_path)
    summary = distill("configs/tiny.yaml", tiny_overrides(tmp_path, "method=few_step", "few_step.guidance=1.5",
                                                          "student.steps=2"))
    run = tmp_path / "run"
    assert summary["steps"] == 0 and not (run / "checkpoints").exists()
    assert (run / "config.yaml").read_text().startswith("method: few_step")
    gen = load_generator(str(run / "export"))  # the teacher's weights, set to sample like the few-step baseline
    assert gen.recommended == {"steps": 2, "guidance": 1.5, "sampler": "euler", "shift": 1.0}
    teacher = load_generator(str(tmp_path / "teacher")).model.state_dict()
    for k, v in gen.model.state_dict().items():
        assert torch.equal(v, teacher[k]), k


def test_validation_during_training_writes_curves_and_selects_the_best(tmp_path, fake_text_encoder):
    """eval.val_every: the student is evaluated on the validation prompts during training (val.jsonl, val.png);
    eval.select_best exports the best validated state; validating does not change what is trained."""
    from ladd.models.teacher import load_teacher

    make_assets(tmp_path)
    val = ["eval.val_every=2", "eval.val_prompts=prompts/nano-val.jsonl", "eval.student_steps=[1,4]",
           f"eval.cache_dir={tmp_path / 'cache'}", "eval.select_best=true"]
    distill("configs/tiny.yaml", tiny_overrides(tmp_path, *val, f"paths.run_dir={tmp_path / 'val'}"))
    distill("configs/tiny.yaml", tiny_overrides(tmp_path, f"paths.run_dir={tmp_path / 'plain'}"))
    run = tmp_path / "val"
    rows = [json.loads(line) for line in (run / "val.jsonl").read_text().splitlines()]
    assert [(r["step"], r["steps"]) for r in rows] == [(2, 1), (2, 4), (4, 1), (4, 4)]
    assert all(set(r["alignment_by_category"]) == {"single_object", "two_objects", "counting", "colors", "position",
                                                   "color_attr"} for r in rows)
    assert Image.open(run / "val.png").size[0] > 500
    best = json.loads((run / "best" / "best.json").read_text())
    four = [r for r in rows if r["steps"] == 4]
    assert best["alignment"] == max(r["alignment"] for r in four)
    # the same training with and without validation: identical checkpoints
    from safetensors.torch import load_file

    a = load_file(run / "checkpoints" / "step-000004" / "student.safetensors")
    b = load_file(tmp_path / "plain" / "checkpoints" / "step-000004" / "student.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # validation time is not training time: train_seconds leaves it out, seconds (wall time) does not
    line = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    plain = json.loads((tmp_path / "plain" / "metrics.jsonl").read_text().splitlines()[-1])
    assert 0 < line["train_seconds"] < line["seconds"] - 0.5 and plain["train_seconds"] <= plain["seconds"]
    # the export holds the selected state
    exported = load_teacher(run / "export").state_dict()
    kept = load_file(run / "best" / "model.safetensors")
    assert all(torch.equal(exported[k], kept[k]) for k in exported)


def test_a_second_run_on_the_same_folder_stops_at_once(tmp_path, capsys):
    """While a run (or a synth) holds its folder, another one exits 2 naming the holder, before any model loads;
    the lock is the OS's, so it is gone with the process (here: when the block ends)."""
    import os

    from ladd.runtime import folder_lock

    make_assets(tmp_path)
    args = ["distill", "--config", "configs/tiny.yaml", *tiny_overrides(tmp_path)]
    with folder_lock(tmp_path / "run", "a test"):
        assert main(args) == 2
    assert f"in use by process {os.getpid()}" in capsys.readouterr().err
    with folder_lock(tmp_path / "data", "a test"):
        assert main(["synth", "--config", "configs/tiny.yaml", *tiny_overrides(tmp_path)]) == 2
    assert "in use by process" in capsys.readouterr().err
    assert not (tmp_path / "data" / "dataset.json").exists() and not (tmp_path / "run" / "checkpoints").exists()


def test_guided_distillation_term_through_the_pipeline(tmp_path, fake_text_encoder):
    """ladd.loss.distill_guidance > 1: ladd distill encodes the empty prompt for the method and trains with it."""
    make_assets(tmp_path)
    distill("configs/tiny.yaml", tiny_overrides(tmp_path, "ladd.loss.distill_weight=1",
                                                "ladd.loss.distill_guidance=3", "train.steps=2"))
    line = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert line["step"] == 2 and line["g_distill"] > 0


def test_regression_term_through_the_pipeline(tmp_path, fake_text_encoder):
    """ladd.loss.regression_weight > 0: ladd distill loads the data with their noise and trains on the pairs."""
    make_assets(tmp_path)
    distill("configs/tiny.yaml", tiny_overrides(tmp_path, "ladd.loss.regression_weight=1", "student.probs=[1,0,0,0]",
                                                "train.steps=2", "train.log_every=1"))
    lines = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "g_regression" in x] == [1, 2] and lines[-1]["g_regression"] > 0


def test_reals_from_their_own_folder_through_the_pipeline(tmp_path, fake_text_encoder):
    """paths.reals: ladd distill makes the missing reals (ShapeWorld images through the VAE), trains on the
    teacher's pairs with them as the heads' reals, and the export's card names both."""
    make_assets(tmp_path)
    distill("configs/tiny.yaml", tiny_overrides(tmp_path, f"paths.reals={tmp_path / 'real'}", "train.steps=2",
                                                "ladd.loss.regression_weight=1", f"paths.run_dir={tmp_path / 'r'}"))
    line = json.loads((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()[-1])
    assert line["step"] == 2 and line["g_regression"] > 0 and "d_real" in line
    card = (tmp_path / "r" / "export" / "card.md").read_text()
    assert "teacher samples" in card and "the discriminator's reals: 10 real ShapeWorld images" in card
    assert shards.complete_generation(tmp_path / "real")["source"] == "real"


def test_an_export_folder_knows_its_run_wherever_the_checkout_moves(tmp_path, monkeypatch):
    """ladd_export.json names a relative run folder relative to the export (no machine's path in a shipped
    folder): re-exporting the same run into it is allowed from a moved checkout; older absolute markers still
    count; another run's folder is refused."""
    from ladd.distill.export import MARKER, check_export_target

    for name in ("runs/r", "runs/other", "assets/s"):
        (tmp_path / "a" / name).mkdir(parents=True)
    (tmp_path / "a" / "assets/s" / MARKER).write_text(json.dumps({"run_dir": "../../runs/r"}))
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    for checkout in ("a", "b"):
        monkeypatch.chdir(tmp_path / checkout)
        check_export_target("runs/r", "assets/s")
        with pytest.raises(ConfigError, match="not an export of runs/other"):
            check_export_target("runs/other", "assets/s")
    (tmp_path / "b" / "assets/s" / MARKER).write_text(json.dumps({"run_dir": str(tmp_path / "b" / "runs/r")}))
    check_export_target("runs/r", "assets/s")
