"""Latent consistency distillation (ladd.methods.lcm) on a tiny random teacher."""

import json

import pytest
import torch

from ladd import flow
from ladd.distill.config import load_distill_config
from ladd.methods.components.student import freeze, init_student
from ladd.methods.lcm import LCMConfig, consistency_step, solver_grid
from ladd.models.teacher import build_nano_teacher
from ladd.models.text_encoder import TextEmbeddings
from helpers import TINY_TEACHER, make_assets, tiny_overrides

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny():
    torch.manual_seed(0)
    teacher = freeze(build_nano_teacher(**TINY_TEACHER))
    x0 = torch.randn(4, 4, 8, 8)
    cond = TextEmbeddings(torch.randn(4, 5, 32), torch.randn(4, 32))
    uncond = TextEmbeddings(torch.randn(1, 5, 32), torch.randn(1, 32))
    return teacher, init_student(teacher), x0, cond, uncond


def test_solver_grid_holds_the_student_grid_and_ends_at_0_and_1():
    grid = solver_grid(48)
    assert grid[0] == 0 and grid[-1] == 1 and torch.all(grid[1:] > grid[:-1])
    assert all(torch.isclose(grid, t).any() for t in flow.student_grid(4))
    assert torch.allclose(solver_grid(4, 3.0), flow.shift_times(torch.tensor([0, .25, .5, .75, 1.0]), 3.0))


def test_the_student_equal_to_its_target_gets_zero_loss_only_where_the_teacher_agrees():
    """At skip = N (t_n = 1, t_prev = 0) the target is the teacher's one Euler step from pure noise; a student
    that is the teacher itself (no guidance) predicts exactly that, so the loss is ~0; with guidance it is not."""
    teacher, student, x0, cond, uncond = tiny()
    cfg = LCMConfig(solver_steps=4, skip=4, guidance=1.0)
    out = consistency_step(student, teacher, x0, cond, uncond, cfg, torch.Generator().manual_seed(0))
    assert out.loss < 1e-6 and out.metrics["t_n"] == 1
    guided = LCMConfig(solver_steps=4, skip=4, guidance=3.0)
    assert consistency_step(student, teacher, x0, cond, uncond, guided, torch.Generator().manual_seed(0)).loss > 1e-3


def test_consistency_step_trains_the_student_only():
    teacher, student, x0, cond, uncond = tiny()
    out = consistency_step(student, teacher, x0, cond, uncond, LCMConfig(guidance=2.0), torch.Generator().manual_seed(1))
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.loss > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())


@pytest.mark.parametrize("bad, field", [("lcm.skip=0", "lcm.skip"), ("lcm.skip=60", "lcm.skip"),
                                        ("lcm.guidance=0.5", "lcm.guidance"), ("lcm.huber_c=0", "lcm.huber_c")])
def test_bad_settings_name_the_field(bad, field):
    from ladd.config import ConfigError

    with pytest.raises(ConfigError, match=field):
        load_distill_config("configs/nano-lcm.yaml", [bad])


def test_lcm_through_the_pipeline(tmp_path, monkeypatch):
    """ladd distill method=lcm: the teacher's recommended guidance (2 in the tiny assets) resolved before any
    weight loads, the student trained, exported with the re-noising sampler and evaluated like LADD's."""
    from ladd.distill.run import distill
    from ladd.models import text_encoder as te
    from helpers import FakeEncoder

    monkeypatch.setattr(te, "load_text_encoder", lambda name="minilm", max_length=32, **_: FakeEncoder(max_length))
    make_assets(tmp_path)
    summary = distill("configs/tiny.yaml", tiny_overrides(tmp_path, "method=lcm", "lcm.solver_steps=8",
                                                          "eval.enabled=true", "eval.max_prompts=2",
                                                          f"eval.cache_dir={tmp_path / 'cache'}"))
    run = tmp_path / "run"
    lines = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3, 4] and all(x["lcm_loss"] > 0 for x in lines)
    assert "lcm:\n  solver_steps: 8" in (run / "config.yaml").read_text()
    config = json.loads((run / "export" / "ladd.json").read_text())
    assert config["ladd_recommended"]["sampler"] == "renoise" and config["ladd_recommended"]["guidance"] == 1.0
    assert [r["slug"] for r in summary["rows"]][-3:] == ["student-1step", "student-2step", "student-4step"]
