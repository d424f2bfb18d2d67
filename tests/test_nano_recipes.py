"""The nano-asset recipes on a tiny pool: the teacher recipe trains, resumes and warm-starts; a decoder-only VAE
fine-tune keeps the latent space (encoder and factors) that the teacher was trained in."""

import json
import os
import signal

import pytest
import torch
from safetensors.torch import load_file

from ladd.models.io import read_config
from ladd.models.teacher import load_teacher
from ladd.nano import recipe
from ladd.nano.train_teacher import TeacherTrainConfig, lr_factor, row_weights, train_teacher
from ladd.nano.train_vae import VAETrainConfig, train_vae


def _teacher_cfg(tmp_path, **kw) -> TeacherTrainConfig:
    return TeacherTrainConfig(out=str(tmp_path / "teacher"), run_dir=str(tmp_path / "run"),
                              cache_dir=str(tmp_path / "cache"), pool_size=16, batch_size=4, warmup=1,
                              sample_every=0, **kw)


def test_teacher_lr_schedule_warms_up_holds_and_decays_to_a_tenth():
    f = [lr_factor(i, steps=100, warmup=10, decay_start=0.5) for i in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == f[49] == 1.0
    assert all(a >= b for a, b in zip(f[10:], f[11:]))  # never rises after the warm-up
    assert f[75] == pytest.approx(0.55) and f[99] == pytest.approx(0.1 + 0.9 / 50)
    assert lr_factor(100, 100, 10, 0.5) == pytest.approx(0.1)  # the last scheduler step ends at 0.1x
    assert lr_factor(5, 10, 0, 0.0) == pytest.approx(0.55)  # decay from the start, no warm-up


def test_bad_decay_start_fails_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="decay_start"):
        train_teacher(_teacher_cfg(tmp_path, steps=1, decay_start=1.5))
    assert not (tmp_path / "cache").exists()


def test_two_shape_weight_weights_captions_naming_two_different_shapes():
    stated = [[{"shape": "circle"}, {"shape": "square"}], [{"shape": "circle"}, {"shape": "circle"}],
              [{"color": "red"}, {"shape": "cross"}], [{"shape": "triangle", "color": "red"}, {}, {"shape": "cross"}]]
    assert row_weights(stated, 3.0).tolist() == [3.0, 1.0, 1.0, 3.0]
    assert row_weights(stated, 1.0).tolist() == [1.0] * 4
    # captions naming two different shapes and no colour (the two_objects prompts' style) get their own weight
    assert row_weights(stated, 2.0, 6.0).tolist() == [6.0, 1.0, 1.0, 2.0]


@pytest.mark.parametrize("bad", [{"two_shape_weight": 0}, {"shapes_only_weight": -1.0}])
def test_bad_two_shape_weight_fails_before_any_work(tmp_path, bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        train_teacher(_teacher_cfg(tmp_path, steps=1, **bad))
    assert not (tmp_path / "cache").exists()


def test_teacher_recipe_trains_and_resumes(tmp_path, one_thread):
    out = train_teacher(_teacher_cfg(tmp_path, steps=2, two_shape_weight=2.0, shapes_only_weight=4.0))
    assert load_teacher(out).num_blocks == 6
    assert "--two-shape-weight 2.0 --shapes-only-weight 4.0" in (out / "card.md").read_text()
    assert "steps done: 2" in (out / "card.md").read_text()
    assert "--pool-size 16" in (out / "card.md").read_text() and "--seed" not in (out / "card.md").read_text()
    # the same run folder: resumes at step 2 and runs step 2 only
    train_teacher(_teacher_cfg(tmp_path, steps=3, two_shape_weight=2.0, shapes_only_weight=4.0))
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2]  # logged at step 0 and at each run's last step; the resumed run did step 2 only


def test_teacher_recipe_warm_starts_from_a_trained_teacher(tmp_path, one_thread):
    out = train_teacher(_teacher_cfg(tmp_path, steps=0, init="assets/nano/teacher"))
    shipped = load_file("assets/nano/teacher/model.safetensors")
    mine = load_file(out / "model.safetensors")
    assert shipped.keys() == mine.keys()
    assert all(torch.equal(shipped[k], mine[k]) for k in shipped)
    assert "--init assets/nano/teacher" in (out / "card.md").read_text()


def test_vae_decoder_only_fine_tune_keeps_the_latent_space(tmp_path, one_thread):
    cfg = VAETrainConfig(out=str(tmp_path / "vae"), run_dir=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"),
                         pool_size=16, steps=2, batch_size=2, decoder_only="assets/nano/vae")
    out = train_vae(cfg)
    base, tuned = load_file("assets/nano/vae/model.safetensors"), load_file(out / "model.safetensors")
    encoder = [k for k in base if k.startswith(("encoder.", "quant_conv."))]
    decoder = [k for k in base if k.startswith("decoder.")]
    assert encoder and all(torch.equal(base[k], tuned[k]) for k in encoder)
    assert any(not torch.equal(base[k], tuned[k]) for k in decoder)
    for key in ("scaling_factor", "shift_factor"):
        assert read_config(out)[key] == read_config("assets/nano/vae")[key]


def test_sigterm_stops_after_the_step_in_progress_with_a_checkpoint_and_resumes(tmp_path):
    """`kill` (SIGTERM) or Ctrl-C mid-step: the step finishes, a checkpoint is written, re-running resumes after it.
    SIGTERM matters because a job started with nohup or & ignores SIGINT."""
    weight = torch.nn.Parameter(torch.zeros(1))
    seen = []

    def step(i):
        seen.append(i)
        if i == 1 and len(seen) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        with torch.no_grad():
            weight.add_(1.0)  # after the signal: must still be in the checkpoint
        return {"loss": float(i)}

    module = torch.nn.ParameterList([weight])
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        recipe.run(step, {"m": module}, tmp_path, steps=5)
    assert seen == [0, 1]
    from ladd.training.checkpoint import latest_checkpoint

    assert latest_checkpoint(tmp_path / "checkpoints").name == "step-000002"
    assert signal.getsignal(signal.SIGTERM) is before  # the previous handler is back
    weight.data.fill_(-100.0)  # resume must load the checkpoint's value (2), not keep this one
    done, _ = recipe.run(step, {"m": module}, tmp_path, steps=5)
    assert done == 5 and seen == [0, 1, 2, 3, 4] and weight.item() == 5.0
