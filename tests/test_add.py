"""ADD (ladd.methods.add) and its frozen feature networks (ladd.models.feature_net) on tiny random models."""

import json

import pytest
import torch
from diffusers import AutoencoderKL

from ladd.config import ConfigError
from ladd.distill.config import load_distill_config
from ladd.methods.add import ADDConfig, build_heads, discriminator_step, generator_step
from ladd.methods.components.student import freeze, init_student
from ladd.models.feature_net import load_feature_net
from ladd.models.io import AssetError
from ladd.models.teacher import build_nano_teacher
from ladd.models.text_encoder import TextEmbeddings
from ladd.models.vae import VAE
from helpers import TINY_TEACHER, TINY_VAE, changed, make_assets, save_tiny_featnet, snapshot, tiny_overrides

pytestmark = pytest.mark.usefixtures("one_thread")
save_featnet = save_tiny_featnet


def tiny(tmp_path, **cfg):
    torch.manual_seed(0)
    teacher = freeze(build_nano_teacher(**TINY_TEACHER))
    cfg = ADDConfig(feature_net=str(save_featnet(tmp_path / "featnet")), guidance=2.0, head_width=16, **cfg)
    net = load_feature_net(cfg.feature_net)
    vae = freeze(VAE(AutoencoderKL.from_config(TINY_VAE)))
    student, heads = init_student(teacher), build_heads(net, 32, cfg)
    x0 = torch.randn(4, 4, 8, 8)
    cond = TextEmbeddings(torch.randn(4, 5, 32), torch.randn(4, 32))
    uncond = TextEmbeddings(torch.randn(1, 5, 32), torch.randn(1, 32))
    student_cfg = load_distill_config("configs/tiny.yaml").student
    return cfg, student_cfg, teacher, vae, net, student, heads, x0, cond, uncond


def test_feature_net_loads_frozen_and_passes_gradients_to_images(tmp_path):
    net = load_feature_net(save_featnet(tmp_path / "f"))
    assert not any(p.requires_grad for p in net.parameters()) and not net.training
    images = torch.rand(2, 3, 64, 64, requires_grad=True)
    feats = net(images * 2 - 1)
    assert [f.shape[1:] for f in feats] == [(8, 32, 32), (8, 16, 16), (16, 8, 8), (16, 4, 4)]
    sum(f.sum() for f in feats).backward()
    assert images.grad.abs().sum() > 0
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text(json.dumps({"num_layers": 6}))
    with pytest.raises(AssetError, match="not a feature network"):
        load_feature_net(tmp_path / "bad")


def test_dinov2_folder_as_feature_net(tmp_path):
    """A tiny random transformers DINOv2 from a local folder: patch-token maps of four layers, 224 px input."""
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                             patch_size=14, image_size=224)).save_pretrained(tmp_path / "dino")
    net = load_feature_net(tmp_path / "dino")
    feats = net(torch.rand(2, 3, 64, 64) * 2 - 1)
    assert net.layers == [1, 2, 3, 4] and net.channels == [32] * 4
    assert all(f.shape == (2, 32, 16, 16) for f in feats)


def test_generator_step_reaches_the_student_through_decoder_and_feature_net(tmp_path):
    cfg, student_cfg, teacher, vae, net, student, heads, x0, cond, uncond = tiny(tmp_path)
    out, fake = generator_step(student, teacher, vae, net, heads, x0, cond, uncond, cfg, student_cfg, 0,
                               torch.Generator().manual_seed(0))
    out.loss.backward()
    assert {"g_adv", "g_distill", "g_loss"} <= set(out.metrics) and out.metrics["g_distill"] > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None for m in (teacher, vae, net, heads) for p in m.parameters())
    assert all(p.requires_grad for p in heads.parameters())
    assert len(fake.features) == 4 and not any(f.requires_grad for f in fake.features)
    # without the distillation term only the adversarial gradient is left: still through the decoder
    student.zero_grad(set_to_none=True)
    cfg.distill_weight = 0.0
    out, _ = generator_step(student, teacher, vae, net, heads, x0, cond, None, cfg, student_cfg, 0,
                            torch.Generator().manual_seed(0))
    out.loss.backward()
    assert "g_distill" not in out.metrics
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


def test_distillation_weighting_is_one_minus_t(tmp_path):
    """c(t) = 1 - t < 1 for every draw: on the same draws the weighted term is below the unweighted one."""
    cfg, student_cfg, teacher, vae, net, student, heads, x0, cond, uncond = tiny(tmp_path)
    vals = {}
    for w in ("exponential", "uniform"):
        cfg.weighting = w
        out, _ = generator_step(student, teacher, vae, net, heads, x0, cond, uncond, cfg, student_cfg, 0,
                                torch.Generator().manual_seed(0))
        vals[w] = out.metrics["g_distill"]
    assert 0 < vals["exponential"] < vals["uniform"]


def test_discriminator_step_trains_heads_only_with_r1(tmp_path):
    cfg, student_cfg, teacher, vae, net, student, heads, x0, cond, uncond = tiny(tmp_path, image_conditioning=True)
    g = torch.Generator().manual_seed(0)
    calls = []
    decode = vae.decode
    vae.decode = lambda z: calls.append(z) or decode(z)
    _, fake = generator_step(student, teacher, vae, net, heads, x0, cond, uncond, cfg, student_cfg, 0, g)
    assert fake.source is not None and fake.source.shape == (4, 16)
    before = snapshot(heads)
    out = discriminator_step(vae, net, heads, x0, cond, fake, cfg)
    assert len(calls) == 2  # the fakes and the reals, each decoded once (the G step's reals serve the D step)
    out.loss.backward()
    assert out.metrics["r1"] >= 0 and 0 <= out.metrics["d_acc"] <= 1
    assert all(p.grad is None for m in (student, vae, net) for p in m.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in heads.parameters())
    torch.optim.SGD(heads.parameters(), lr=0.1).step()
    assert changed(heads, before)


@pytest.mark.parametrize("bad, field", [("add.t_min=0.99", "t_min"), ("add.guidance=0.5", "guidance"),
                                        ("add.weighting=snr", "weighting"), ("add.layers=[9]", "blocks"),
                                        ("add.r1_weight=-1", "r1_weight")])
def test_bad_settings_name_the_field(bad, field, tmp_path):
    from ladd.distill.run import check_config

    make_assets(tmp_path)
    with pytest.raises(ConfigError, match=field):
        cfg = load_distill_config("configs/tiny.yaml", tiny_overrides(
            tmp_path, "method=add", f"add.feature_net={save_featnet(tmp_path / 'featnet')}", bad))
        check_config(cfg, 1)


def test_missing_feature_net_is_one_line_before_loading(tmp_path):
    from ladd.distill.run import check_config

    make_assets(tmp_path)
    cfg = load_distill_config("configs/tiny.yaml", tiny_overrides(tmp_path, "method=add"))
    with pytest.raises(ConfigError, match="add.feature_net"):
        check_config(cfg, 1)
    cfg = load_distill_config("configs/tiny.yaml", tiny_overrides(tmp_path, "method=add",
                                                                  f"add.feature_net={tmp_path / 'nowhere'}"))
    with pytest.raises(AssetError, match="nowhere"):
        check_config(cfg, 1)


def test_add_through_the_pipeline(tmp_path, monkeypatch):
    """ladd distill method=add: the student and heads trained, checkpointed and the student exported."""
    from ladd.distill.run import distill
    from ladd.models import text_encoder as te
    from helpers import FakeEncoder

    monkeypatch.setattr(te, "load_text_encoder", lambda name="minilm", max_length=32, **_: FakeEncoder(max_length))
    make_assets(tmp_path)
    distill("configs/tiny.yaml", tiny_overrides(tmp_path, "method=add", "add.head_width=16",
                                                f"add.feature_net={save_featnet(tmp_path / 'featnet')}"))
    run = tmp_path / "run"
    lines = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3, 4] and all("g_adv" in x and "d_loss" in x for x in lines)
    assert {p.name for p in (run / "checkpoints" / "step-000004").glob("*.safetensors")} >= \
        {"student.safetensors", "heads.safetensors", "ema.safetensors"}
    assert (run / "export" / "diffusion_pytorch_model.safetensors").is_file()


class _ConstHeads(torch.nn.Module):
    """Stand-in heads: the D step judges reals and fakes in one batch of 8 (reals first), the G step 4 fakes;
    every logit of a real is ``real``, of a fake ``fake``."""

    def __init__(self, real: float, fake: float, n_heads: int = 2):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))
        self.real, self.fake, self.n = real, fake, n_heads

    def forward(self, feats, t, c):
        b = feats[0].shape[0]
        values = torch.tensor([self.real] * (b // 2) + [self.fake] * (b - b // 2)) if b > 4 else \
            torch.full((b,), self.fake)
        return [self.w * values.view(-1, 1, 1, 1).expand(b, 1, 2, 2) for _ in range(self.n)]


@pytest.mark.parametrize("real, fake, expected", [(2.0, -2.0, 0.0), (0.0, 0.0, 4.0), (0.5, 0.5, 2 * (0.5 + 1.5))])
def test_hinge_losses_on_hand_made_logits(real, fake, expected, tmp_path):
    """D: sum over heads of mean(relu(1 - real)) + mean(relu(1 + fake)); G: -sum over heads of mean(fake)."""
    cfg, student_cfg, teacher, vae, net, student, _, x0, cond, uncond = tiny(tmp_path, r1_weight=0.0,
                                                                              distill_weight=0.0)
    heads = _ConstHeads(real, fake)
    out, fake_batch = generator_step(student, teacher, vae, net, heads, x0, cond, None, cfg, student_cfg, 0,
                                     torch.Generator().manual_seed(0))
    assert out.metrics["g_adv"].item() == pytest.approx(-2 * fake)
    d = discriminator_step(vae, net, heads, x0, cond, fake_batch, cfg)
    assert d.metrics["d_loss"].item() == pytest.approx(expected)


def test_add_resumes_to_the_uninterrupted_run(tmp_path, monkeypatch):
    """2 iterations, then resumed to 4, give the 4-iteration run's student and heads bit for bit."""
    from safetensors.torch import load_file

    from ladd.distill.run import distill
    from ladd.models import text_encoder as te
    from helpers import FakeEncoder

    monkeypatch.setattr(te, "load_text_encoder", lambda name="minilm", max_length=32, **_: FakeEncoder(max_length))
    make_assets(tmp_path)
    featnet = save_featnet(tmp_path / "featnet")
    base = ["method=add", "add.head_width=16", f"add.feature_net={featnet}", "train.ckpt_every=2"]
    distill("configs/tiny.yaml", tiny_overrides(tmp_path, *base, "train.steps=2"))
    distill("configs/tiny.yaml", tiny_overrides(tmp_path, *base, "train.steps=4"))
    once = tmp_path / "once"
    once.mkdir()
    distill("configs/tiny.yaml", tiny_overrides(tmp_path, *base, "train.steps=4", f"paths.run_dir={once / 'run'}"))
    for name in ("student", "heads"):
        a = load_file(tmp_path / "run" / "checkpoints" / "step-000004" / f"{name}.safetensors")
        b = load_file(once / "run" / "checkpoints" / "step-000004" / f"{name}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
