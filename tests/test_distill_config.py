"""DistillConfig validation: errors name the field and come before any model is loaded."""

from pathlib import Path

import pytest

from ladd.config import ConfigError
from ladd.distill.config import DEFAULT_PROBS, DiscriminatorConfig, DistillConfig, load_distill_config


@pytest.fixture(autouse=True)
def no_model_loading(monkeypatch):
    """Any attempt to build or load a model during config handling fails the test."""
    import diffusers

    def boom(*args, **kwargs):
        raise AssertionError("a model was loaded while parsing the config")

    for cls in (diffusers.SD3Transformer2DModel, diffusers.AutoencoderKL):
        monkeypatch.setattr(cls, "from_pretrained", boom)
        monkeypatch.setattr(cls, "from_config", boom)


def test_defaults_follow_ladd_md():
    cfg = DistillConfig()
    assert cfg.student.steps == 4 and cfg.student.probs == [0.7, 0.1, 0.1, 0.1]
    assert (cfg.disc.noise_m, cfg.disc.noise_s, cfg.disc.shared_t) == (1.0, 1.0, False)
    assert cfg.disc.blocks == "all" and cfg.loss.kind == "hinge"
    assert cfg.loss.r1_weight == cfg.loss.misaligned_weight == cfg.loss.distill_weight == 0.0


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_default_probs_per_grid(steps):
    cfg = load_distill_config(None, [f"student.steps={steps}"])
    assert cfg.student.probs == DEFAULT_PROBS[steps] and len(cfg.student.probs) == steps


@pytest.mark.parametrize("preset", ["configs/nano.yaml", "configs/nano-1step.yaml", "configs/tiny.yaml"])
def test_presets_load(preset):
    cfg = load_distill_config(preset)
    assert cfg.optim.lr_heads > cfg.optim.lr_student > 0
    assert cfg.train.micro_batch(1) * cfg.train.grad_accum == cfg.train.batch_size


def test_one_step_preset_is_nano_with_a_one_step_grid():
    one, base = load_distill_config("configs/nano-1step.yaml"), load_distill_config("configs/nano.yaml")
    assert (one.student.steps, one.student.probs, one.disc.noise_m) == (1, [1.0], 0.0)
    assert one.paths.data == base.paths.data and one.optim == base.optim and one.train == base.train


def test_numeric_strings_from_the_command_line():
    # PyYAML reads 3e-4 (no dot) as a string; the config accepts it as the number it means.
    cfg = load_distill_config("configs/nano.yaml", ["optim.lr_heads=3e-4", "disc.blocks=[0, 5]"])
    assert cfg.optim.lr_heads == pytest.approx(3e-4) and cfg.disc.blocks == [0, 5]


@pytest.mark.parametrize("override, field", [
    ("disc.blocks=[0, -1]", "disc.blocks"),
    ("disc.blocks=[0, 1.5]", "disc.blocks"),
    ("disc.blocks=[]", "disc.blocks"),
    ("disc.blocks=first", "disc.blocks"),
    ("disc.noise_m=7", "disc.noise_m"),
    ("disc.noise_s=0", "disc.noise_s"),
    ("disc.noise_s=-1", "disc.noise_s"),
    ("student.steps=0", "student.steps"),
    ("student.probs=[]", "student.probs"),
    ("student.probs=[0.5, 0.5]", "student.probs"),
    ("student.probs=[0.5, 0.2, 0.2, 0.2]", "student.probs"),
    ("student.steps=3", "student.probs"),
    ("train.batch_size=30", "train.batch_size"),
    ("optim.lr_student=0", "optim.lr_student"),
    ("optim.lr_heads=-1e-4", "optim.lr_heads"),
    ("loss.kind=wasserstein", "loss.kind"),
    ("loss.r1_weight=-1", "loss.r1_weight"),
    ("loss.misaligned_weight=1", "loss.misaligned_weight"),
    ("train.mixed_precision=fp8", "train.mixed_precision"),
    ("data.precision=fp16", "data.precision"),
])
def test_errors_name_the_field(override, field):
    overrides = [override, "train.grad_accum=4"] if "batch_size" in override else [override]
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_distill_config("configs/nano.yaml", overrides)


def test_unknown_block_index_is_named_against_the_teacher_depth():
    cfg = DiscriminatorConfig(blocks=[0, 7])
    with pytest.raises(ConfigError, match=r"disc\.blocks.*\[7\].*6 blocks"):
        cfg.resolve_blocks(6)
    assert DiscriminatorConfig().resolve_blocks(3) == [0, 1, 2]
    assert DiscriminatorConfig(blocks="spaced:4").resolve_blocks(20) == [4, 9, 14, 19]  # ends with the last
    assert DiscriminatorConfig(blocks="spaced:1").resolve_blocks(6) == [5]


def test_batch_must_divide_over_processes():
    cfg = load_distill_config(None, ["train.batch_size=32", "train.grad_accum=2"])
    assert cfg.train.micro_batch(4) == 4
    with pytest.raises(ConfigError, match=r"train\.batch_size"):
        cfg.train.micro_batch(3)


def test_unknown_field_and_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="disc.head_widht"):
        load_distill_config(None, ["disc.head_widht=64"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("disc:\n  noise_s: 0.0\n")
    with pytest.raises(ConfigError, match=r"disc\.noise_s"):
        load_distill_config(bad)


def test_warmup_grid():
    cfg = load_distill_config(None, ["student.warmup_probs=[0, 0, 0.5, 0.5]", "student.warmup_steps=100"])
    assert cfg.student.probs_at(99) == [0.0, 0.0, 0.5, 0.5] and cfg.student.probs_at(100) == [0.7, 0.1, 0.1, 0.1]
    with pytest.raises(ConfigError, match=r"student\.warmup_steps"):
        load_distill_config(None, ["student.warmup_steps=100"])


def test_preset_with_a_base(tmp_path):
    longer = tmp_path / "longer.yaml"
    longer.write_text(f"base: {Path('configs/nano.yaml').resolve()}\ntrain:\n  steps: 2400\npaths:\n  run_dir: runs/x\n")
    cfg, base = load_distill_config(longer), load_distill_config("configs/nano.yaml")
    assert cfg.train.steps == 2400 and cfg.paths.run_dir == "runs/x"
    assert cfg.paths.data == base.paths.data and cfg.disc == base.disc and cfg.train.batch_size == base.train.batch_size
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("base: b.yaml\n")
    b.write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_distill_config(a)


def test_an_fsdp_launch_refuses_the_ema_before_loading_anything(monkeypatch, tmp_path):
    from ladd.distill.run import check_config

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch` with an FSDP config sets
    data = f"paths.data={tmp_path / 'data'}"  # not the checkout's runs/nano-synth, which may hold older data
    with pytest.raises(ConfigError, match=r"train\.ema_decay: .*FSDP"):
        check_config(load_distill_config("configs/nano.yaml", [data]))
    check_config(load_distill_config("configs/nano.yaml", ["train.ema_decay=0", data]))
