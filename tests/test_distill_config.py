"""DistillConfig validation: errors name the field and come before any model is loaded."""

from pathlib import Path

import pytest

from ladd.config import ConfigError
from ladd.distill.config import DistillConfig, load_distill_config
from ladd.methods import method_class
from ladd.methods.base import DEFAULT_PROBS
from ladd.methods.components.heads import DiscriminatorConfig


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
    assert (cfg.ladd.disc.noise_m, cfg.ladd.disc.noise_s, cfg.ladd.disc.shared_t) == (1.0, 1.0, False)
    assert cfg.ladd.disc.blocks == "all" and cfg.ladd.loss.kind == "hinge"
    assert cfg.ladd.loss.r1_weight == cfg.ladd.loss.misaligned_weight == cfg.ladd.loss.distill_weight == 0.0


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_default_probs_per_grid(steps):
    cfg = load_distill_config(None, [f"student.steps={steps}"])
    assert cfg.student.probs == DEFAULT_PROBS[steps] and len(cfg.student.probs) == steps


@pytest.mark.parametrize("preset", ["configs/nano.yaml", "configs/nano-1step.yaml", "configs/nano-ladd-hybrid-long.yaml",
                                    "configs/nano-ladd-real.yaml", "configs/nano-ladd-long-reals.yaml",
                                    "configs/nano-ladd-8k.yaml", "configs/nano-1step-start.yaml",
                                    "configs/nano-ladd-fast.yaml", "configs/nano-ladd-plain.yaml",
                                    "configs/tiny.yaml"])
def test_presets_load(preset):
    cfg = load_distill_config(preset)
    assert cfg.optim["heads"].lr > cfg.optim["student"].lr > 0
    assert cfg.train.micro_batch(1) * cfg.train.grad_accum == cfg.train.batch_size


def test_one_step_preset_is_the_long_reals_recipe_on_a_one_step_grid():
    one, base = (load_distill_config(f"configs/{name}.yaml") for name in ("nano-1step", "nano-ladd-long-reals"))
    assert (one.student.steps, one.student.probs, one.eval.student_steps) == (1, [1.0], [1])
    assert base.student.sample_shifts and one.student.sample_shifts == {}  # `{}` clears the base's 2-step grid
    assert one.ladd == base.ladd and (one.paths.data, one.paths.reals) == (base.paths.data, base.paths.reals)
    assert one.optim == base.optim and one.train == base.train and one.paths.run_dir != base.paths.run_dir


def test_start_time_preset_is_the_one_step_preset_from_the_shipped_student_read_at_0_9():
    start, one = (load_distill_config(f"configs/{name}.yaml") for name in ("nano-1step-start", "nano-1step"))
    assert (start.student.start_time, start.student.init, start.train.steps) == (0.9, "assets/nano/student", 800)
    assert start.ladd == one.ladd and start.optim == one.optim and start.student.steps == 1
    assert start.student.times().tolist() == [pytest.approx(0.9)]


def test_default_run_and_fast_preset_are_plain_ladd_with_a_cheaper_game_and_the_free_terms():
    default, fast, plain = (load_distill_config(f"configs/{name}.yaml") for name in ("nano", "nano-ladd-fast",
                                                                                      "nano-ladd-plain"))
    loss = plain.ladd.loss
    assert (plain.ladd.disc.blocks, plain.ladd.disc_every, plain.paths.reals) == ("all", 1, None)
    shares = (loss.misaligned_fraction, loss.real_fraction, loss.adversarial_fraction)
    assert shares == (1, 1, 1) and loss.regression_weight == 0
    for cfg in (default, fast):
        assert cfg.ladd.disc.blocks == [0, 1, 2, 3, 4] and cfg.paths.reals == "runs/nano-real"
        assert cfg.ladd.loss.misaligned_fraction == 0.25 and cfg.ladd.loss.regression_weight == 1.0
        # nothing else differs from plain LADD: heads' width, noise, learning rates, budget, data
        assert cfg.ladd.disc.head_width == plain.ladd.disc.head_width
        assert cfg.ladd.disc.noise_m == plain.ladd.disc.noise_m
        assert cfg.optim == plain.optim and cfg.train == plain.train and cfg.data == plain.data
        assert cfg.student == plain.student and cfg.paths.data == plain.paths.data
    # the default run: the heads every iteration, the game's passes on part of the batch; the fast preset: the heads
    # every third iteration on the whole batch
    for cfg, expected in ((default, (1, .5, .5)), (fast, (3, 1, 1))):
        assert (cfg.ladd.disc_every, cfg.ladd.loss.real_fraction, cfg.ladd.loss.adversarial_fraction) == expected
    # the default run's student meets its own rollouts below t_s = 1 (session 45); plain LADD and the fast preset the
    # noised data latents
    assert default.ladd.backward_simulation and not (plain.ladd.backward_simulation or fast.ladd.backward_simulation)


def test_guided_preset_is_the_default_run_with_the_guided_target_and_mixed_noise():
    guided, default = (load_distill_config(f"configs/{name}.yaml") for name in ("nano-ladd-guided", "nano"))
    loss = guided.ladd.loss
    assert (loss.distill_weight, loss.distill_guidance, loss.distill_target) == (2.5, 3.0, "x0")
    assert guided.ladd.disc.noise_m == [1, 0] and default.ladd.disc.noise_m == 1
    assert guided.ladd.backward_simulation and default.ladd.backward_simulation  # the default run's since session 45
    # nothing else differs from the default run
    for name in ("distill_weight", "distill_guidance"):
        setattr(loss, name, getattr(default.ladd.loss, name))
    guided.ladd.disc.noise_m = default.ladd.disc.noise_m
    assert guided.ladd == default.ladd and guided.optim == default.optim and guided.train == default.train
    assert guided.student == default.student and guided.data == default.data
    assert guided.paths.reals == default.paths.reals and guided.paths.run_dir != default.paths.run_dir


def test_long_preset_is_the_hybrid_at_twice_the_iterations_with_cosine_decay():
    long, base = (load_distill_config(f"configs/{name}.yaml") for name in ("nano-ladd-hybrid-long", "nano-ladd-hybrid"))
    assert long.train.steps == 2 * base.train.steps
    for name in ("student", "heads"):
        assert (long.optim[name].schedule, long.optim[name].warmup_steps) == ("cosine", 100)
        assert long.optim[name].lr == base.optim[name].lr
    assert long.ladd == base.ladd and long.student == base.student and long.paths.data == base.paths.data
    assert long.paths.run_dir != base.paths.run_dir


def test_real_preset_is_the_long_hybrid_on_real_images_without_regression():
    real, long = (load_distill_config(f"configs/{name}.yaml") for name in ("nano-ladd-real", "nano-ladd-hybrid-long"))
    assert (real.data.source, real.ladd.loss.regression_weight, real.paths.data) == ("real", 0.0, "runs/nano-real")
    assert real.ladd.disc == long.ladd.disc and real.ladd.loss.distill_weight == long.ladd.loss.distill_weight
    assert real.optim == long.optim and real.train == long.train and real.student == long.student
    assert real.paths.run_dir != long.paths.run_dir
    assert not method_class(real.method).needs_pairs(real.section)  # real images have no teacher noise


def test_long_reals_preset_is_the_long_hybrid_with_real_reals_for_the_heads():
    reals, long = (load_distill_config(f"configs/nano-ladd-{name}.yaml") for name in ("long-reals", "hybrid-long"))
    assert (reals.paths.reals, reals.paths.data, reals.data.source) == ("runs/nano-real", long.paths.data, "synthetic")
    assert reals.ladd == long.ladd and reals.optim == long.optim
    assert reals.student.sample_shifts == {2: 3.0}  # the card's 2-step grid, {1, .75}; training never reads it
    reals.student.sample_shifts = {}
    assert reals.student == long.student
    assert reals.train == long.train and reals.paths.run_dir != long.paths.run_dir
    assert reals.ladd.loss.regression_weight > 0  # the teacher's pairs stay; only the heads' reals are real


def test_8k_preset_is_the_long_reals_recipe_on_8x_the_pairs_at_half_the_regression_weight():
    big, reals = (load_distill_config(f"configs/nano-ladd-{name}.yaml") for name in ("8k", "long-reals"))
    assert (big.data.num_samples, reals.data.num_samples) == (8192, 1024)
    assert big.ladd.loss.regression_weight == reals.ladd.loss.regression_weight / 2 > 0
    big.ladd.loss.regression_weight = reals.ladd.loss.regression_weight
    assert big.ladd == reals.ladd and big.optim == reals.optim and big.train == reals.train
    assert big.student == reals.student and big.paths.reals == reals.paths.reals
    assert big.paths.data != reals.paths.data and big.paths.run_dir != reals.paths.run_dir  # 8,192 pairs elsewhere


def test_numeric_strings_from_the_command_line():
    # PyYAML reads 3e-4 (no dot) as a string; the config accepts it as the number it means.
    cfg = load_distill_config("configs/nano.yaml", ["optim.heads.lr=3e-4", "ladd.disc.blocks=[0, 5]"])
    assert cfg.optim["heads"].lr == pytest.approx(3e-4) and cfg.ladd.disc.blocks == [0, 5]


@pytest.mark.parametrize("override, field", [
    ("ladd.disc.blocks=[0, -1]", "ladd.disc.blocks"),
    ("ladd.disc.blocks=[0, 1.5]", "ladd.disc.blocks"),
    ("ladd.disc.blocks=[]", "ladd.disc.blocks"),
    ("ladd.disc.blocks=first", "ladd.disc.blocks"),
    ("ladd.disc.noise_m=7", "ladd.disc.noise_m"),
    ("ladd.disc.noise_m=[1, 7]", "ladd.disc.noise_m"),
    ("ladd.disc.noise_m=[]", "ladd.disc.noise_m"),
    ("ladd.disc.noise_m=[1, high]", "ladd.disc.noise_m"),
    ("ladd.disc.noise_s=0", "ladd.disc.noise_s"),
    ("ladd.disc.noise_s=-1", "ladd.disc.noise_s"),
    ("student.steps=0", "student.steps"),
    ("student.probs=[]", "student.probs"),
    ("student.probs=[0.5, 0.5]", "student.probs"),
    ("student.probs=[0.5, 0.2, 0.2, 0.2]", "student.probs"),
    ("student.steps=3", "student.probs"),
    ("student.sampler=heun", "student.sampler"),
    ("student.grid=karras", "student.grid"),
    ("student.start_time=0.75", "student.start_time"),
    ("student.start_time=1.5", "student.start_time"),
    ("student.sample_shifts=3", "student.sample_shifts"),
    ("student.sample_shifts={0: 3}", "student.sample_shifts"),
    ("student.sample_shifts={2: 0}", r"student.sample_shifts\[2\]"),
    ("eval.sampler=heun", "eval.sampler"),
    ("train.batch_size=30", "train.batch_size"),
    ("optim.student.lr=0", "optim.student.lr"),
    ("optim.heads.lr=-1e-4", "optim.heads.lr"),
    ("ladd.loss.kind=wasserstein", "ladd.loss.kind"),
    ("ladd.loss.r1_weight=-1", "ladd.loss.r1_weight"),
    ("ladd.loss.misaligned_weight=1", "ladd.loss.misaligned_weight"),
    ("train.mixed_precision=fp8", "train.mixed_precision"),
    ("data.precision=fp16", "data.precision"),
])
def test_errors_name_the_field(override, field):
    overrides = [override, "train.grad_accum=4"] if "batch_size" in override else [override]
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_distill_config("configs/nano.yaml", overrides)


def test_unknown_block_index_is_named_against_the_teacher_depth():
    cfg = DiscriminatorConfig(blocks=[0, 7])
    with pytest.raises(ConfigError, match=r"ladd\.disc\.blocks.*\[7\].*6 blocks"):
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
    with pytest.raises(ConfigError, match="ladd.disc.head_widht"):
        load_distill_config(None, ["ladd.disc.head_widht=64"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("ladd:\n  disc:\n    noise_s: 0.0\n")
    with pytest.raises(ConfigError, match=r"ladd\.disc\.noise_s"):
        load_distill_config(bad)


def test_sample_shifts_reach_the_cards_recommended_setting(tmp_path):
    import yaml

    from ladd.config import to_dict

    cfg = load_distill_config("configs/nano.yaml", ["student.sample_shifts={2: 3}"])
    assert cfg.student.sample_shifts == {2: 3.0}
    rec = method_class(cfg.method).recommended(cfg.section, cfg.student, {})
    assert rec["shifts"] == {"2": 3.0} and rec["shift"] == 1.0
    plain = load_distill_config("configs/nano.yaml")
    assert "shifts" not in method_class(plain.method).recommended(plain.section, plain.student, {})
    # the teacher with few steps takes them too (its sampler's grid at that step count), beside its own shift
    few = load_distill_config("configs/nano-few-step.yaml", ["student.sample_shifts={2: 3}"])
    teacher = {"guidance": 3.0, "sampler": "euler", "shift": 1.5}
    rec = method_class(few.method).recommended(few.section, few.student, teacher)
    assert rec["shifts"] == {"2": 3.0} and rec["shift"] == 1.5
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg)))  # a run folder's config reloads the same
    assert load_distill_config(tmp_path / "config.yaml").student.sample_shifts == {2: 3.0}


def test_the_card_names_the_grids_of_sample_shifts():
    from ladd.distill.export import model_card

    info = dict(n_params=1e6, teacher="t", command="c", steps_trained=1, batch_size=2, ema_decay=0.9, seconds=60,
                device="cpu", student_steps=4, data={"source": "real", "num_samples": 1, "seed": 0, "vae": "v"})
    assert "sample_shifts" not in model_card(info)
    card = model_card({**info, "sample_shifts": {2: 3.0}, "student_grid": "uniform"})
    assert "at 2 steps its grid shifted by 3 (times 1, 0.75; `student.sample_shifts`)" in card


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
    assert cfg.paths.data == base.paths.data and cfg.ladd.disc == base.ladd.disc and cfg.train.batch_size == base.train.batch_size
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("base: b.yaml\n")
    b.write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_distill_config(a)


def test_an_fsdp_launch_refuses_the_ema_before_loading_anything(monkeypatch, tmp_path):
    from ladd.distill.run import check_config

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch` with an FSDP config sets
    data = f"paths.data={tmp_path / 'data'}"  # not the checkout's runs/nano-synth, which may hold older data
    for ema in ([], ["train.ema_decay=0", "train.extra_emas=[[0.999, 3]]"]):
        with pytest.raises(ConfigError, match=r"train\.ema_decay / train\.extra_emas: .*FSDP"):
            check_config(load_distill_config("configs/nano.yaml", [*ema, data]))
    check_config(load_distill_config("configs/nano.yaml", ["train.ema_decay=0", data]))


def test_the_regression_term_refuses_data_without_pairs_before_loading_anything(tmp_path):
    from ladd.distill.run import check_config

    data = f"paths.data={tmp_path / 'data'}"
    check_config(load_distill_config("configs/nano.yaml", ["ladd.loss.regression_weight=1", data]))
    for unpaired in ("data.sampler=renoise", "data.source=real"):
        with pytest.raises(ConfigError, match="regression_weight.*data.sampler=euler") as e:
            check_config(load_distill_config("configs/nano.yaml", ["ladd.loss.regression_weight=1", unpaired, data]))
        # real data asked for with a regression preset: most likely the heads' reals, which have their own folder
        assert ("paths.reals" in str(e.value)) == (unpaired == "data.source=real")
    # the feature-space regression reads the same pairs
    unpaired = ["ladd.loss.regression_weight=0", "ladd.loss.feature_weight=1", "data.sampler=renoise", data]
    with pytest.raises(ConfigError, match="feature_weight.*data.sampler=euler"):
        check_config(load_distill_config("configs/nano.yaml", unpaired))


def test_yaml_1_1_words_stay_strings():
    """`train.mixed_precision=no` (what the NaN error suggests) is the string 'no', not YAML 1.1's False."""
    cfg = load_distill_config("configs/nano.yaml", ["train.mixed_precision=no"])
    assert cfg.train.mixed_precision == "no"
    with pytest.raises(ConfigError, match="eval.enabled must be bool, got 'no'"):
        load_distill_config("configs/nano.yaml", ["eval.enabled=no"])


def test_method_selects_its_section_and_optimizers():
    cfg = load_distill_config("configs/nano.yaml")
    # critic: the fake score of the optional distribution-matching term (ladd.loss.dm_weight)
    assert cfg.method == "ladd" and set(cfg.optim) == {"student", "heads", "critic"}
    assert cfg.optim["student"].lr == pytest.approx(5e-5) and cfg.optim["heads"].lr == pytest.approx(2e-4)
    assert cfg.optim["student"].schedule == "constant"  # fields a preset leaves out keep the method's defaults
    few = load_distill_config("configs/nano.yaml", ["method=few_step", "few_step.guidance=2"])
    assert few.method == "few_step" and few.few_step.guidance == 2.0 and few.optim == {}
    saved = few.to_dict()
    assert saved["method"] == "few_step" and saved["few_step"]["guidance"] == 2.0 and "ladd" not in saved


@pytest.mark.parametrize("overrides, message", [
    (["method=dmd3"], r"method: got 'dmd3'; use one of"),
    (["method=few_step", "ladd.disc.noise_m=9"], r"ladd\.disc\.noise_m"),  # set-aside sections are checked too
    (["optim.lr_student=1e-5"], r"optim\.lr_student: .* use optim\.<name>\.<field>.*optim\.student\.lr"),
    (["optim.generator.lr=1e-5"], r"optim\.generator: method ladd has no optimizer 'generator'"),
    (["optim.student.schedule=cosine_with_restarts"], r"optim\.student\.schedule"),
    (["optim.heads.warmup_steps=10"], r"optim\.heads\.warmup_steps: is ignored by schedule 'constant'"),
    (["disc.noise_m=0"], r"disc: is now the section ladd\.disc"),
    (["train.steps=true"], r"train\.steps must be int, got True"),
    (["method=lcm", "student.start_time=0.9"], r"student\.start_time: got 0\.9 with method=lcm"),
])
def test_method_and_optimizer_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_distill_config("configs/nano.yaml", overrides)


def test_warmup_schedule_scales_the_learning_rate():
    import torch

    from ladd.training.optim import build_optimizer, build_schedule

    cfg = load_distill_config(None, ["optim.student.schedule=linear", "optim.student.warmup_steps=2",
                                     "train.steps=6"]).optim["student"]
    opt = build_optimizer([torch.nn.Linear(1, 1)], cfg)
    schedule, lrs = build_schedule(opt, cfg, 6), []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"] / cfg.lr)
        opt.step()
        schedule.step()
    assert lrs == pytest.approx([0.0, 0.5, 1.0, 0.75, 0.5, 0.25])


def test_a_sampling_shift_that_puts_the_start_below_the_second_time_fails_at_config_time():
    """The start time is the first time of every sampling grid: at 2 steps, shift 10 puts the second at 0.91."""
    with pytest.raises(ConfigError, match=r"student\.sample_shifts\[2\]: got 10 with student\.start_time=0\.9"):
        load_distill_config("configs/nano.yaml", ["student.start_time=0.9", "student.sample_shifts={2: 10}"])
    cfg = load_distill_config("configs/nano.yaml", ["student.start_time=0.9", "student.sample_shifts={2: 3}"])
    assert cfg.student.sample_shifts == {2: 3.0}
