"""``student.frozen``: the parameters named by the patterns keep the teacher's values through training (in the
student and its EMA), every other one trains; a pattern that matches nothing, or frozen parameters beside LoRA,
fail before any work starts. Tiny random models, CPU."""

import pytest
import torch

from helpers import assets_with_data, tiny_overrides
from ladd.config import ConfigError
from ladd.data.shards import ShardDataset
from ladd.distill.config import load_distill_config
from ladd.distill.run import build_method, check_config
from ladd.models.teacher import load_teacher
from ladd.training.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")
TEXT = "student.frozen=[context,attn.add_,to_add_out,norm_added,text_embedder]"  # the text stream


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return assets_with_data(tmp_path_factory.mktemp("frozen"))


def test_frozen_parameters_keep_the_teachers_values_and_the_rest_trains(root):
    cfg = load_distill_config("configs/tiny.yaml", tiny_overrides(root, "train.steps=2", TEXT))
    teacher = load_teacher(cfg.paths.teacher)
    result = train(cfg, build_method(cfg, teacher), ShardDataset.load(cfg.paths.data), cfg.paths.run_dir)
    fresh = dict(load_teacher(root / "teacher").named_parameters())
    student = result.modules["student"]
    frozen = {n for n, p in student.named_parameters() if not p.requires_grad}
    blocks = "transformer.transformer_blocks.0"
    assert {"transformer.context_embedder.weight", f"{blocks}.ff_context.net.2.weight", f"{blocks}.attn.add_k_proj.weight",
            f"{blocks}.attn.to_add_out.weight", f"{blocks}.attn.norm_added_q.weight"} <= frozen
    assert f"{blocks}.ff.net.2.weight" not in frozen and f"{blocks}.attn.to_q.weight" not in frozen
    for model in (student, result.ema.shadow):
        own = dict(model.named_parameters())
        assert all(torch.equal(own[n], fresh[n]) for n in frozen), "a frozen weight moved"
    moved = [n for n, p in student.named_parameters() if n not in frozen and not torch.equal(p, fresh[n])]
    assert f"{blocks}.ff.net.2.weight" in moved


@pytest.mark.parametrize("overrides, message", [
    (("student.frozen=[context,nope]",), "student.frozen: 'nope' is in no parameter name"),
    (("student.frozen=[context]", "student.lora_rank=4"), "only the adapters train already"),
])
def test_bad_frozen_settings_fail_before_training(root, overrides, message):
    with pytest.raises(ConfigError, match=message):  # ladd distill's checks, before data and weights are loaded
        check_config(load_distill_config("configs/tiny.yaml", tiny_overrides(
            root, f"paths.run_dir={root / 'bad'}", *overrides)))
    assert not (root / "bad" / "checkpoints").exists()
