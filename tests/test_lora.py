"""The LoRA student (student.lora_rank > 0; ladd.distill.lora): only the adapters train, the base weights stay the
teacher's; the export's merged weights and its LoRA file (through diffusers' own loader) both reproduce the
student; the checkpoint loads back into a rebuilt student (``ladd export``); bad targets fail before training.
Tiny random models, CPU."""

import pytest
import torch

from ladd.config import ConfigError
from ladd.data.shards import ShardDataset
from ladd.models import lora
from ladd.distill.config import StudentConfig, load_distill_config
from ladd.distill.export import export_run, export_student
from ladd.distill.run import check_config
from ladd.methods.components.student import init_student
from ladd.models.teacher import load_teacher
from ladd.models.text_encoder import TextEmbeddings
from ladd.training.checkpoint import latest_checkpoint, load_module
from ladd.training.trainer import train
from ladd.distill.run import build_method
from helpers import assets_with_data, tiny_overrides

pytestmark = pytest.mark.usefixtures("one_thread")
LORA = ("student.lora_rank=4", "student.lora_alpha=8")  # scale 2: a lost alpha would show in the outputs


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return assets_with_data(tmp_path_factory.mktemp("lora"))


@pytest.fixture(scope="module")
def trained(root):
    """2 LoRA iterations (2 micro-batches each, EMA 0.9, a checkpoint at step 2)."""
    cfg = load_distill_config("configs/tiny.yaml", tiny_overrides(root, "train.steps=2", *LORA))
    teacher = load_teacher(cfg.paths.teacher)
    return cfg, teacher, train(cfg, build_method(cfg, teacher), ShardDataset.load(cfg.paths.data), cfg.paths.run_dir)


def _base_name(name: str) -> str:
    return name.replace(".base_layer", "")


def _output(transformer, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([250.0, 900.0])
    tokens, pooled = torch.randn(2, 6, 32, generator=g), torch.randn(2, 32, generator=g)
    with torch.no_grad():
        return transformer(hidden_states=x, encoder_hidden_states=tokens, pooled_projections=pooled, timestep=t,
                           return_dict=False)[0]


def test_only_adapters_train(root, trained):
    _, teacher, result = trained
    student = result.modules["student"]
    names = [n for n, p in student.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    assert any(".attn.add_q_proj.lora_A." in n for n in names)  # the default targets cover the text stream too
    # B starts at zero (student = teacher at init): every B moved, so every adapter got gradient and an update.
    # All but one: the last block is context_pre_only (its text-token outputs are dropped), so the text queries
    # there (add_q_proj) get an exactly zero gradient, in full fine-tuning too.
    lora_b = {n: p for n, p in student.named_parameters() if "lora_B" in n}
    dead = "transformer.transformer_blocks.1.attn.add_q_proj.lora_B.default.weight"
    assert len(lora_b) == len(names) // 2 and lora_b.pop(dead).abs().max() == 0
    assert all(p.abs().max() > 0 for p in lora_b.values())
    fresh = dict(load_teacher(root / "teacher").named_parameters())
    own = dict(teacher.named_parameters())
    assert fresh.keys() == own.keys() and all(torch.equal(fresh[k], own[k]) for k in fresh)  # teacher untouched
    for model in (student, result.ema.shadow):
        base = {_base_name(n): p for n, p in model.named_parameters() if "lora_" not in n}
        assert base.keys() == fresh.keys()
        assert all(torch.equal(base[k], fresh[k]) for k in fresh), "a base weight of the student moved"


def _set_lora_b(model, seed: int = 1) -> None:
    """Large random B (after 2 steps at lr 1e-4 B is ~1e-4: a wrong export would still pass at 1e-5)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))


def test_export_merged_and_lora_file_match_the_student(root, trained, tmp_path):
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

    cfg, _, result = trained
    student = init_student(load_teacher(root / "teacher"), cfg.student)
    student.load_state_dict(result.modules["student"].state_dict())
    _set_lora_b(student)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    out = export_student(student, tmp_path / "export", steps=4, teacher_dir=root / "teacher", vae_dir=root / "vae",
                         text_encoder={"name": "fake"}, card="test")
    after = student.state_dict()
    assert lora.is_lora(student) and all(torch.equal(before[k], after[k]) for k in before)  # not merged in place
    want = _output(student.transformer)
    assert (want - _output(load_teacher(root / "teacher").transformer)).abs().max() > 1e-2  # LoRA matters here

    merged = SD3Transformer2DModel.from_pretrained(out)  # plain diffusers, no peft layers
    assert not any("lora" in k for k in merged.state_dict())
    torch.testing.assert_close(_output(merged), want, atol=1e-5, rtol=1e-5)

    base = load_teacher(root / "teacher").transformer  # teacher + the LoRA file through diffusers' SD3 loader
    pipe = StableDiffusion3Pipeline(transformer=base, scheduler=None, vae=None, text_encoder=None, tokenizer=None,
                                    text_encoder_2=None, tokenizer_2=None, text_encoder_3=None, tokenizer_3=None)
    pipe.load_lora_weights(out / "lora")
    assert (out / "lora" / lora.LORA_WEIGHTS).is_file()
    torch.testing.assert_close(_output(pipe.transformer), want, atol=1e-5, rtol=1e-5)

    # the documented recipe: the teacher's pipeline (its own scheduler: shift 3, deterministic) + the LoRA + the
    # student's scheduler from the export; the default 4-step call is then the student, sampler and grid included
    from diffusers import FlowMatchEulerDiscreteScheduler

    from ladd import flow
    from ladd.sampling import renoise

    pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(out / "lora", subfolder="scheduler")
    pipe.set_progress_bar_config(disable=True)
    cond = TextEmbeddings(torch.randn(2, 6, 32, generator=torch.Generator().manual_seed(1)),
                          torch.randn(2, 32, generator=torch.Generator().manual_seed(2)))
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(7)
    latents = pipe(prompt_embeds=cond.tokens, pooled_prompt_embeds=cond.pooled, num_inference_steps=4,
                   guidance_scale=1.0, height=64, width=64, latents=noise.clone(), output_type="latent").images
    ours = renoise(student.eval(), noise, torch.cat([flow.student_grid(4), torch.zeros(1)]), cond,
                   generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(latents, ours, atol=1e-4, rtol=1e-4)

    # a student distilled for Euler (student.sampler=euler): the adapters' scheduler is deterministic
    euler = export_student(student, tmp_path / "euler", steps=4, teacher_dir=root / "teacher", vae_dir=root / "vae",
                           text_encoder={"name": "fake"}, card="test",
                           recommended={"steps": 4, "guidance": 1.0, "sampler": "euler", "shift": 1.0})
    assert pipe.scheduler.config.stochastic_sampling
    assert not FlowMatchEulerDiscreteScheduler.from_pretrained(euler / "lora", subfolder="scheduler").config[
        "stochastic_sampling"]


def test_checkpoint_reloads_into_a_rebuilt_student_and_ladd_export(root, trained, tmp_path):
    from diffusers import SD3Transformer2DModel

    cfg, _, result = trained
    ckpt = latest_checkpoint(root / "run" / "checkpoints")
    rebuilt = init_student(load_teacher(root / "teacher"), cfg.student)
    load_module(rebuilt, ckpt / "student.safetensors")  # peft keys, checked one by one
    for k, v in result.modules["student"].state_dict().items():
        assert torch.equal(rebuilt.state_dict()[k], v), k
    out = export_run(root / "run", tmp_path / "shipped")  # EMA weights, rebuilt from the run's config
    torch.testing.assert_close(_output(SD3Transformer2DModel.from_pretrained(out)),
                               _output(result.ema.shadow.transformer), atol=1e-5, rtol=1e-5)
    assert (out / "lora" / lora.LORA_WEIGHTS).is_file()


def test_bad_targets_fail_before_training(root):
    cfg = load_distill_config("configs/tiny.yaml", tiny_overrides(
        root, f"paths.run_dir={root / 'bad'}", "student.lora_rank=4", "student.lora_targets=[attn.to_q,attn.nope]"))
    message = r"student.lora_targets: \['attn.nope'\] match no .*attn.to_k"
    with pytest.raises(ConfigError, match=message):  # ladd distill's checks, before data and weights are loaded
        check_config(cfg)
    with pytest.raises(ConfigError, match=message):
        train(cfg, build_method(cfg), ShardDataset.load(cfg.paths.data), root / "bad")
    assert not (root / "bad" / "checkpoints").exists()


def test_config():
    cfg = load_distill_config(None, ["student.lora_rank=16", "student.lora_targets=[attn.to_q,attn.to_out.0]"])
    assert cfg.student.lora_targets == ["attn.to_q", "attn.to_out.0"] and cfg.student.lora_alpha is None
    assert StudentConfig().lora_rank == 0 and "attn.to_add_out" in StudentConfig().lora_targets
    for bad, field in [("student.lora_rank=-1", "lora_rank"), ("student.lora_alpha=0", "lora_alpha"),
                       ("student.lora_targets=[]", "lora_targets")]:
        with pytest.raises(ConfigError, match=f"student.{field}"):
            load_distill_config(None, [bad])


def test_resuming_with_another_rank_names_the_mismatch(root, trained):
    """The run folder holds a rank-4 LoRA checkpoint: resuming it with rank 8 (or as a full student) stops before
    the first iteration with a message about the mismatch and what to do, and writes nothing."""
    from ladd.training.checkpoint import CheckpointError, checkpoint_dirs

    before = [c.name for c in checkpoint_dirs(root / "run" / "checkpoints")]
    for other in (("student.lora_rank=8",), ("student.lora_rank=0",)):
        cfg = load_distill_config("configs/tiny.yaml", tiny_overrides(root, "train.steps=4", *other))
        with pytest.raises(CheckpointError, match=r"does not match the model: .*wrong shapes|does not match the model: "
                                                  r"missing"):
            train(cfg, build_method(cfg), ShardDataset.load(cfg.paths.data), cfg.paths.run_dir)
    assert [c.name for c in checkpoint_dirs(root / "run" / "checkpoints")] == before
