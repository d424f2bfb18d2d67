"""``student.extra_blocks`` (ladd.models.grow): the deeper student computes its teacher's function at the start,
its inserted blocks train, and a run with it trains, resumes and exports a model that loads with the extra blocks;
impossible counts fail before any work starts. Tiny random models, CPU."""

import pytest
import torch

from helpers import TINY_TEACHER, assets_with_data, tiny_overrides
from ladd.config import ConfigError
from ladd.data.shards import ShardDataset
from ladd.distill.config import load_distill_config
from ladd.distill.run import build_method, check_config
from ladd.methods.base import StudentConfig
from ladd.methods.components.student import init_student
from ladd.models.grow import insert_blocks, twin_positions
from ladd.models.teacher import build_nano_teacher, load_teacher
from ladd.models.text_encoder import TextEmbeddings
from ladd.training.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return assets_with_data(tmp_path_factory.mktemp("grow"))


def inputs(config, batch=2):
    g = torch.Generator().manual_seed(0)
    size = config.sample_size
    x = torch.randn(batch, config.in_channels, size, size, generator=g)
    cond = TextEmbeddings(torch.randn(batch, 5, config.joint_attention_dim, generator=g),
                          torch.randn(batch, config.pooled_projection_dim, generator=g))
    return x, torch.tensor([0.9, 0.3][:batch]), cond


def test_twin_positions_spread_over_all_blocks_but_the_last():
    assert twin_positions(6, 0) == [] and twin_positions(6, 1) == [2] and twin_positions(6, 2) == [1, 3]
    assert twin_positions(6, 5) == [0, 1, 2, 3, 4] and twin_positions(2, 1) == [0]


@pytest.mark.parametrize("extra", [1, 3])
def test_the_deeper_student_starts_as_the_teachers_function_and_its_new_blocks_train(extra):
    torch.manual_seed(0)
    teacher = build_nano_teacher(**dict(TINY_TEACHER, num_layers=4)).eval().requires_grad_(False)
    student = init_student(teacher, StudentConfig(extra_blocks=extra))
    assert len(student.transformer.transformer_blocks) == 4 + extra == student.config.num_layers
    x, t, cond = inputs(teacher.config)
    with torch.no_grad():
        same = teacher.velocity(x, t, cond)
        assert torch.allclose(student.velocity(x, t, cond), same, atol=1e-6)
    assert len(teacher.transformer.transformer_blocks) == 4  # the teacher is left as it was
    twin = student.transformer.transformer_blocks[twin_positions(4, extra)[0] + 1]
    gate_rows = twin.norm1.linear.weight.view(6, -1, twin.norm1.linear.in_features)[2]
    assert gate_rows.abs().sum() == 0 and twin.norm1.linear.weight.abs().sum() > 0  # only the gates are zero
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    student.velocity(x, t, cond).pow(2).mean().backward()
    opt.step()
    assert gate_rows.abs().sum() > 0  # the gates open: the inserted block now changes the output
    with torch.no_grad():
        assert not torch.allclose(student.velocity(x, t, cond), same, atol=1e-4)


def test_insert_blocks_keeps_every_weight_of_the_original_and_gradient_checkpointing():
    torch.manual_seed(1)
    transformer = build_nano_teacher(**TINY_TEACHER).transformer
    assert not insert_blocks(transformer, 1).is_gradient_checkpointing
    transformer.enable_gradient_checkpointing()
    deeper = insert_blocks(transformer, 1)
    assert deeper.is_gradient_checkpointing
    old, new = transformer.state_dict(), deeper.state_dict()
    assert all(torch.equal(old[k], new[k]) for k in old if not k.startswith("transformer_blocks."))
    assert all(torch.equal(old[f"transformer_blocks.1.{k}"], v) for k, v in
               deeper.transformer_blocks[2].state_dict().items())  # block 1 moved to 2 behind its twin


def test_open_gates_are_a_fraction_of_the_originals():
    torch.manual_seed(2)
    transformer = build_nano_teacher(**TINY_TEACHER).transformer
    deeper = insert_blocks(transformer, 1, gate=0.1)
    rows = lambda block: block.norm1_context.linear.weight.view(6, -1, block.norm1_context.linear.in_features)
    original, twin = rows(deeper.transformer_blocks[0]), rows(deeper.transformer_blocks[1])
    assert torch.allclose(twin[[2, 5]], 0.1 * original[[2, 5]]) and torch.equal(twin[[0, 1, 3, 4]], original[[0, 1, 3, 4]])


def test_a_run_with_extra_blocks_trains_resumes_and_exports_the_deeper_model(root):
    over = ("student.extra_blocks=1", "train.steps=2", "train.ckpt_every=1")
    cfg = load_distill_config("configs/tiny.yaml", tiny_overrides(root, *over))
    check_config(cfg)
    teacher = load_teacher(cfg.paths.teacher)
    train(cfg, build_method(cfg, teacher), ShardDataset.load(cfg.paths.data), cfg.paths.run_dir)
    cfg3 = load_distill_config("configs/tiny.yaml", tiny_overrides(root, *over[:1], "train.steps=3"))
    result = train(cfg3, build_method(cfg3, teacher), ShardDataset.load(cfg3.paths.data), cfg3.paths.run_dir)
    assert result.step == 3  # resumed from step 2's checkpoint of the deeper student
    from ladd.distill.export import export_run

    out = export_run(cfg3.paths.run_dir, root / "export-grow")
    model = load_teacher(out)
    assert model.config.num_layers == TINY_TEACHER["num_layers"] + 1
    x, t, cond = inputs(model.config)
    with torch.no_grad():
        ema = result.ema.shadow.velocity(x, t, cond)
        assert torch.allclose(model.velocity(x, t, cond), ema, atol=1e-5)


def test_the_card_says_how_many_blocks_the_student_has_beyond_its_teacher():
    from ladd.distill.export import model_card

    info = dict(n_params=1e6, teacher="t", command="c", steps_trained=1, batch_size=2, ema_decay=0.9, seconds=60,
                device="cpu", student_steps=1, data={"source": "real", "num_samples": 1, "seed": 0, "vae": "v"})
    assert "joint block" not in model_card(info) and "joint block" not in model_card({**info, "extra_blocks": 0})
    assert "1.00M parameters (5 joint blocks more than its teacher's" in model_card({**info, "extra_blocks": 5})


@pytest.mark.parametrize("extra, message", [
    ("2", "student.extra_blocks: got 2, the teacher has 2 blocks; use 0 to 1"),
    ("-1", "student.extra_blocks: got -1"),
    ("1 student.extra_gate=2", "student.extra_gate: got 2"),
    ("1 student.lora_rank=4", "the inserted blocks' own weights would stay frozen"),
])
def test_impossible_block_counts_fail_before_training(root, extra, message):
    with pytest.raises(ConfigError, match=message):
        check_config(load_distill_config("configs/tiny.yaml", tiny_overrides(
            root, f"paths.run_dir={root / 'bad'}", *f"student.extra_blocks={extra}".split())))
    assert not (root / "bad" / "checkpoints").exists()
