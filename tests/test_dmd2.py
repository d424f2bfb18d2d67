"""DMD2 (ladd.methods.dmd2) on a tiny random teacher."""

import json

import pytest
import torch

from ladd import flow
from ladd.distill.config import load_distill_config
from ladd.draws import Draws
from ladd.methods.components.heads import build_discriminator
from ladd.methods.components.student import freeze, init_student
from ladd.methods.components.student import rollout
from ladd.methods.dmd2 import DMD2Config, critic_step, generator_step
from ladd.models.teacher import build_nano_teacher
from ladd.models.text_encoder import TextEmbeddings
from ladd.sampling import euler
from helpers import TINY_TEACHER, make_assets, tiny_overrides

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**cfg):
    torch.manual_seed(0)
    teacher = freeze(build_nano_teacher(**TINY_TEACHER))
    cfg = DMD2Config(guidance=2.0, **cfg)
    student, fake = init_student(teacher), init_student(teacher)
    heads = build_discriminator(teacher, cfg.heads())
    x0 = torch.randn(4, 4, 8, 8)
    cond = TextEmbeddings(torch.randn(4, 5, 32), torch.randn(4, 32))
    uncond = TextEmbeddings(torch.randn(1, 5, 32), torch.randn(1, 32))
    student_cfg = load_distill_config("configs/tiny.yaml").student
    return cfg, student_cfg, teacher, student, fake, heads, x0, cond, uncond


def test_rollout_is_the_students_own_renoising_sampler():
    """Sample b is taken through idx[b] re-noising steps of the student (x0 prediction, then fresh noise to the
    next grid time); idx = 0 keeps the noise. The noise of each step is drawn for the whole batch."""
    *_, student, _, _, x0, cond, _ = tiny()
    grid, noise = flow.student_grid(4), torch.randn_like(x0)
    out = rollout(student, noise, cond, grid, torch.tensor([0, 2, 1, 0]), Draws(torch.Generator().manual_seed(0)))
    g, x, states = torch.Generator().manual_seed(0), noise.clone(), [noise]
    with torch.no_grad():
        for j in range(2):
            eps = torch.randn(x.shape, generator=g)
            x = flow.add_noise(flow.x0_from_v(x, student(x, grid[j].expand(4), cond), grid[j]), eps, grid[j + 1])
            states.append(x)
    assert torch.equal(out[[0, 3]], noise[[0, 3]])
    assert torch.allclose(out[1], states[2][1], atol=1e-5) and torch.allclose(out[2], states[1][2], atol=1e-5)


def test_euler_rollout_is_the_students_euler_sampler():
    """student.sampler=euler: the rollout to grid time k is the deterministic Euler sampler run for k steps on the
    student grid (the noise drawn for each step is not used), so it differs from the re-noising rollout."""
    *_, student, _, _, x0, cond, _ = tiny()
    grid, noise, idx = flow.student_grid(4), torch.randn_like(x0), torch.tensor([0, 2, 1, 3])
    out = rollout(student, noise, cond, grid, idx, Draws(torch.Generator().manual_seed(0)), "euler")
    times = torch.cat([grid, torch.zeros(1)])
    for b, k in enumerate(idx.tolist()):
        expected = euler(student, noise[b:b + 1], times[:k + 1], cond[b:b + 1])
        assert torch.allclose(out[b], expected[0], atol=1e-5)
    renoised = rollout(student, noise, cond, grid, idx, Draws(torch.Generator().manual_seed(0)))
    assert torch.equal(out[0], renoised[0]) and not torch.allclose(out[1:], renoised[1:], atol=1e-3)


def test_rollouts_along_the_samplers_paths():
    """paths="samplers": a rollout to grid time 0.5 of {1, .75, .5, .25} is either the 2-step sampler's jump
    1 -> 0.5 or the 4-step sampler's 1 -> .75 -> .5, both drawn; a rollout to 0.25 or 0.75 only has the grid's
    path; "grid" is the grid's path for all."""
    *_, student, _, _, x0, cond, _ = tiny()
    grid, noise = flow.student_grid(4), torch.randn_like(x0)
    jump = euler(student, noise, torch.stack([grid[0], grid[2]]), cond)
    chain = euler(student, noise, grid[:3], cond)
    idx = torch.tensor([2, 2, 2, 2])
    seen = set()
    for seed in range(8):
        out = rollout(student, noise, cond, grid, idx, Draws(torch.Generator().manual_seed(seed)), "euler", "samplers")
        for b in range(4):
            took = [torch.allclose(out[b], ref[b], atol=1e-5) for ref in (jump, chain)]
            assert sum(took) == 1
            seen.add(took.index(True))
    assert seen == {0, 1}
    out = rollout(student, noise, cond, grid, idx, Draws(torch.Generator().manual_seed(0)), "euler", "grid")
    assert torch.allclose(out, chain, atol=1e-5)
    late = rollout(student, noise, cond, grid, torch.tensor([3, 1, 3, 1]), Draws(torch.Generator().manual_seed(0)),
                   "euler", "samplers")
    assert torch.allclose(late[0], euler(student, noise[:1], grid, cond[:1])[0], atol=1e-5)
    assert torch.allclose(late[1], euler(student, noise[1:2], grid[:2], cond[1:2])[0], atol=1e-5)



@pytest.mark.parametrize("paths, calls", [("grid", 3), ("samplers", 4)])
def test_rollouts_make_the_same_calls_whatever_the_times(paths, calls):
    """A DDP or FSDP student syncs in its forward, so every process must call it as often as the others, though
    its own samples' times differ: the calls are fixed by the grid, not by the batch."""
    *_, student, _, _, x0, cond, _ = tiny()
    grid, noise = flow.student_grid(4), torch.randn_like(x0)
    counts = []
    hook = student.register_forward_pre_hook(lambda m, args: counts.append(1))
    for idx in ([0, 0, 0, 0], [3, 3, 3, 3], [2, 1, 0, 2]):
        counts.clear()
        out = rollout(student, noise, cond, grid, torch.tensor(idx), Draws(torch.Generator().manual_seed(0)),
                      "renoise", paths)
        assert len(counts) == calls
    hook.remove()
    assert torch.equal(out[2], noise[2])  # idx 0: the noise itself


def test_generator_step_gives_the_student_the_distribution_matching_gradient():
    """With F equal to the unguided teacher and no guidance, x0_real = x0_fake: the DM gradient is zero; with
    guidance it is not, and only the student gets gradients."""
    cfg, student_cfg, teacher, student, fake, heads, x0, cond, uncond = tiny(gan_weight_g=0.0)
    cfg.guidance = 1.0
    out = generator_step(student, teacher, fake, heads, x0, cond, uncond, cfg, student_cfg, 0,
                         torch.Generator().manual_seed(0))
    out.loss.backward()
    assert out.loss.abs() < 1e-10
    student.zero_grad(set_to_none=True)
    cfg.guidance, cfg.gan_weight_g = 3.0, 5e-3
    out = generator_step(student, teacher, fake, heads, x0, cond, uncond, cfg, student_cfg, 0,
                         torch.Generator().manual_seed(0))
    out.loss.backward()
    assert out.metrics["g_dm"] > 0 and "g_gan" in out.metrics
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None for m in (teacher, fake, heads) for p in m.parameters())
    assert all(p.requires_grad for m in (fake, heads) for p in m.parameters())


def test_critic_step_trains_the_fake_score_and_heads_only():
    cfg, student_cfg, teacher, student, fake, heads, x0, cond, _ = tiny()
    out = critic_step(student, fake, heads, x0, cond, cfg, student_cfg, 0, torch.Generator().manual_seed(0))
    out.loss.backward()
    assert out.metrics["critic_flow"] > 0 and 0 <= out.metrics["d_acc"] <= 1
    assert all(p.grad is None for p in student.parameters())
    for m in (fake, heads):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())


@pytest.mark.parametrize("bad, field", [("dmd2.critic_updates=0", "critic_updates"), ("dmd2.t_min=0.99", "t_min"),
                                        ("dmd2.guidance=0.5", "guidance"), ("dmd2.backward_simulation=2", "backward")])
def test_bad_settings_name_the_field(bad, field):
    from ladd.config import ConfigError

    with pytest.raises(ConfigError, match=field):
        load_distill_config("configs/nano-dmd2.yaml", [bad])


def test_dmd2_through_the_pipeline(tmp_path, monkeypatch):
    """ladd distill method=dmd2: per iteration 2 critic updates and one student update, all three modules
    checkpointed, the student exported."""
    from ladd.distill.run import distill
    from ladd.models import text_encoder as te
    from helpers import FakeEncoder

    monkeypatch.setattr(te, "load_text_encoder", lambda name="minilm", max_length=32, **_: FakeEncoder(max_length))
    make_assets(tmp_path)
    distill("configs/tiny.yaml", tiny_overrides(tmp_path, "method=dmd2", "dmd2.critic_updates=2",
                                                "dmd2.gan_head_width=16"))
    run = tmp_path / "run"
    lines = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3, 4] and all(x["critic_flow"] > 0 and "g_dm" in x for x in lines)
    assert {p.name for p in (run / "checkpoints" / "step-000004").glob("*.safetensors")} >= \
        {"student.safetensors", "fake_score.safetensors", "heads.safetensors", "ema.safetensors"}
    assert (run / "export" / "diffusion_pytorch_model.safetensors").is_file()


def test_ladd_with_a_distribution_matching_term_through_the_pipeline(tmp_path, monkeypatch):
    """ladd.loss.dm_weight: LADD's run gains the fake score (module and optimizer 'critic'), trained every
    iteration beside the heads, and checkpointed."""
    from ladd.distill.run import distill
    from ladd.models import text_encoder as te
    from helpers import FakeEncoder

    monkeypatch.setattr(te, "load_text_encoder", lambda name="minilm", max_length=32, **_: FakeEncoder(max_length))
    make_assets(tmp_path)
    distill("configs/tiny.yaml", tiny_overrides(tmp_path, "ladd.loss.dm_weight=1", "ladd.loss.distill_guidance=2"))
    run = tmp_path / "run"
    lines = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(x["critic_flow"] > 0 and x["g_dm"] > 0 and "d_loss" in x for x in lines)
    assert (run / "checkpoints" / "step-000004" / "fake_score.safetensors").is_file()


def test_ladd_fake_score_updates_per_iteration(tmp_path, monkeypatch):
    """ladd.critic_updates=3: per iteration the fake score steps three times (two updates of its own, on samples
    the student draws under no_grad, then the D step's), the student and the heads once; refused without the DM
    term."""
    from safetensors.torch import load_file

    from ladd.config import ConfigError
    from ladd.distill.run import distill
    from ladd.models import text_encoder as te
    from helpers import FakeEncoder

    with pytest.raises(ConfigError, match=r"ladd\.critic_updates.*set ladd\.loss\.dm_weight above 0"):
        load_distill_config("configs/tiny.yaml", ["ladd.critic_updates=3"])
    with pytest.raises(ConfigError, match=r"ladd\.critic_updates: got 0"):
        load_distill_config("configs/tiny.yaml", ["ladd.loss.dm_weight=1", "ladd.critic_updates=0"])
    monkeypatch.setattr(te, "load_text_encoder", lambda name="minilm", max_length=32, **_: FakeEncoder(max_length))
    make_assets(tmp_path)
    distill("configs/tiny.yaml", tiny_overrides(tmp_path, "ladd.loss.dm_weight=1", "ladd.loss.distill_guidance=2",
                                                "ladd.critic_updates=3", "ladd.backward_simulation=true",
                                                "train.steps=2", "train.ckpt_every=2"))
    optim = load_file(tmp_path / "run" / "checkpoints" / "step-000002" / "optim.safetensors")
    assert optim["critic/0/step"].item() == 6
    assert optim["student/0/step"].item() == 2 and optim["heads/0/step"].item() == 2
