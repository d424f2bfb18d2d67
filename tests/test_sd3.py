"""SD3 / SD3.5 pipeline folders (ladd.models.sd3) against diffusers' own StableDiffusion3Pipeline, on a tiny random
pipeline built here: every component (4-block MMDiT, 16-channel VAE with SD3's scaling and shift factors, CLIP-L and
CLIP-G with projections, T5, BERT WordPiece tokenizers from the MiniLM folder, the shift-3 scheduler), saved with
``save_pretrained`` as a real download would be. CPU, offline."""

import json
import shutil

import pytest
import torch

from ladd.config import ConfigError
from ladd.models.io import AssetError

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPTS = ["a red fox in the snow", "two cups of coffee", ""]
# widths: CLIP-L 8 + CLIP-G 16 = pooled 24; both zero-padded to T5's 32 = the transformer's joint_attention_dim
CLIP_L, CLIP_G, T5_WIDTH = 8, 16, 32


# the transformer's architecture options of each SD3 release (diffusers' SD3Transformer2DModel): SD3.5-medium is
# MMDiT-X (dual attention in its first blocks) with qk RMS norm, SD3.5-large adds qk RMS norm to SD3's MMDiT
VARIANTS = {"sd3-medium": {}, "sd3.5-medium": {"dual_attention_layers": (0, 1), "qk_norm": "rms_norm"},
            "sd3.5-large": {"qk_norm": "rms_norm"}}


def build_tiny_pipeline(t5: bool = True, variant: str = "sd3-medium"):
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, \
        StableDiffusion3Pipeline
    from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from ladd.models.text_encoder import minilm_path

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(minilm_path(), model_max_length=16, local_files_only=True)

    def clip(width):
        return CLIPTextModelWithProjection(CLIPTextConfig(
            vocab_size=tok.vocab_size, hidden_size=width, projection_dim=width, intermediate_size=2 * width,
            num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=16, eos_token_id=tok.sep_token_id,
            bos_token_id=tok.cls_token_id, pad_token_id=tok.pad_token_id))

    t5_model = T5EncoderModel(T5Config(vocab_size=tok.vocab_size, d_model=T5_WIDTH, d_ff=40, d_kv=8, num_layers=1,
                                       num_heads=2, relative_attention_num_buckets=8)) if t5 else None
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=4, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=T5_WIDTH, caption_projection_dim=16,
        pooled_projection_dim=CLIP_L + CLIP_G, pos_embed_max_size=16, **VARIANTS[variant])
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
                        up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[8, 8, 8, 8], layers_per_block=1,
                        latent_channels=16, norm_num_groups=4, sample_size=64,
                        scaling_factor=1.5305, shift_factor=0.0609)  # SD3's
    pipe = StableDiffusion3Pipeline(
        transformer=transformer.eval(), vae=vae.eval(), scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        text_encoder=clip(CLIP_L).eval(), tokenizer=tok, text_encoder_2=clip(CLIP_G).eval(), tokenizer_2=tok,
        text_encoder_3=t5_model and t5_model.eval(), tokenizer_3=tok if t5 else None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def sd3(tmp_path_factory):
    """(folder, the pipeline as built in memory)."""
    folder = tmp_path_factory.mktemp("sd3") / "tiny-sd3"
    pipe = build_tiny_pipeline()
    pipe.save_pretrained(folder)
    return folder, pipe


def copy_without(folder, dest, *parts):
    shutil.copytree(folder, dest, ignore=lambda d, names: [n for n in names if n in parts])
    return dest


def test_shifted_grids_are_diffusers_shift():
    """ladd.flow's shifted grids equal FlowMatchEulerDiscreteScheduler(shift)'s sigmas for the uniform grid."""
    import numpy as np
    from diffusers import FlowMatchEulerDiscreteScheduler

    from ladd import flow

    torch.testing.assert_close(flow.student_grid(4, 3.0), torch.tensor([1.0, 0.9, 0.75, 0.5]))
    for steps in (1, 4, 28):
        scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps).tolist())
        torch.testing.assert_close(flow.sampling_times("euler", steps, 3.0), scheduler.sigmas, rtol=0, atol=1e-6)
        torch.testing.assert_close(flow.sampling_times("renoise", steps, 3.0), scheduler.sigmas, rtol=0, atol=1e-6)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_the_diffusers_grid_is_the_stock_schedulers_default(shift):
    """student.grid=diffusers: the times the student's scheduler samples with nothing passed; the uniform grid for
    shift 1 and for 1-2 steps, another one for 4 steps shifted by 3 (SD3.5-Large-Turbo's setting); both samplers
    run over it, and the student's scheduler given the card's unshifted sigmas samples the shifted uniform grid."""
    from ladd import flow
    from ladd.distill.pipeline import default_grid_is_exact, student_scheduler

    for steps in (1, 2, 4):
        scheduler = student_scheduler(steps, shift)
        scheduler.set_timesteps(steps)
        diffusers = flow.student_grid(steps, shift, "diffusers")
        torch.testing.assert_close(diffusers, scheduler.sigmas[:-1], rtol=0, atol=1e-6)
        for sampler in ("euler", "renoise"):
            torch.testing.assert_close(flow.sampling_times(sampler, steps, shift, "diffusers"), scheduler.sigmas)
        same = shift == 1.0 or steps < 4
        assert torch.allclose(diffusers, flow.student_grid(steps, shift), atol=1e-5) == same
        assert default_grid_is_exact(steps, shift, "diffusers") and default_grid_is_exact(steps, shift) == same
        scheduler.set_timesteps(sigmas=flow.student_grid(steps).tolist())
        torch.testing.assert_close(scheduler.sigmas[:-1], flow.student_grid(steps, shift), rtol=0, atol=1e-6)
    torch.testing.assert_close(flow.student_grid(4, 3.0, "diffusers"), torch.tensor([1.0, 0.92821, 0.79928, 0.5]),
                               rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="grid must be one of"):
        flow.student_grid(4, shift, "karras")


# ------------------------------------------------------------------------------------------------ (a) folder check
def test_check_sd3_folder(sd3, tmp_path):
    from ladd.models.sd3 import check_sd3_folder

    folder, _ = sd3
    assert check_sd3_folder(folder)["_class_name"] == "StableDiffusion3Pipeline"
    with pytest.raises(AssetError, match=r"missing or incomplete.*text_encoder_2/ \(CLIP-G text encoder\).*expected"):
        check_sd3_folder(copy_without(folder, tmp_path / "no-clip-g", "text_encoder_2"))
    (tmp_path / "no-clip-g" / "text_encoder_2").mkdir()  # an interrupted download: the folder without weights
    (tmp_path / "no-clip-g" / "text_encoder_2" / "config.json").write_text("{}")
    with pytest.raises(AssetError, match=r"text_encoder_2/"):
        check_sd3_folder(tmp_path / "no-clip-g")
    with pytest.raises(AssetError, match=r"text_encoder_3/ and tokenizer_3/ .*both or neither"):
        check_sd3_folder(copy_without(folder, tmp_path / "half-t5", "tokenizer_3"))
    check_sd3_folder(copy_without(folder, tmp_path / "no-t5", "text_encoder_3", "tokenizer_3"))  # T5 is optional

    other = copy_without(folder, tmp_path / "flux")
    index = json.loads((other / "model_index.json").read_text())
    (other / "model_index.json").write_text(json.dumps({**index, "_class_name": "FluxPipeline"}))
    with pytest.raises(AssetError, match=r"names 'FluxPipeline', expected 'StableDiffusion3Pipeline'"):
        check_sd3_folder(other)
    with pytest.raises(AssetError, match=r"no model_index\.json"):
        check_sd3_folder(folder / "transformer")
    with pytest.raises(AssetError, match=r"does not exist.*huggingface-cli download"):
        check_sd3_folder(tmp_path / "nowhere")


def test_sample_and_eval_default_to_the_models_own_size(sd3, tmp_path):
    """Without --height / --width, `ladd sample` and `ladd eval` make images at the size the model was trained at
    (the transformer's sample_size x the VAE's downsampling), not the nano world's 64."""
    from PIL import Image

    from ladd.cli import main
    from ladd.evaluation.evaluate import EvalConfig, with_size
    from ladd.models.registry import native_size

    folder, _ = sd3
    assert native_size("nano-teacher") == (64, 64) and native_size(str(folder)) == (64, 64)
    wide = copy_without(folder, tmp_path / "sd3-96")
    config = json.loads((wide / "transformer" / "config.json").read_text())
    (wide / "transformer" / "config.json").write_text(json.dumps({**config, "sample_size": 12}))
    assert native_size(str(wide)) == (96, 96)
    assert (with_size(EvalConfig(model=str(wide))).height, with_size(EvalConfig(model="real")).width) == (96, 64)
    assert with_size(EvalConfig(model=str(wide), height=32)).height == 32
    assert main(["sample", "--model", str(wide), "--prompt", PROMPTS[0], "--n", "1", "--steps", "1",
                 "--out", str(tmp_path / "s.png")]) == 0
    assert Image.open(tmp_path / "s.png").size == ((96 + 4) * 2,) * 2  # one image in a 2-pixel frame, upscaled 2x


# ------------------------------------------------------------------------------------------ (b) the prompt encoder
def test_prompt_encoder_equals_encode_prompt_and_caches(sd3, tmp_path, monkeypatch):
    from ladd.models.sd3 import SD3PromptEncoder
    from ladd.models.text_encoder import load_text_encoder

    folder, pipe = sd3
    enc = load_text_encoder(name="sd3", path=str(folder), max_length=8, device="cpu", cache_dir=tmp_path / "cache")
    assert isinstance(enc, SD3PromptEncoder)
    emb = enc.encode(PROMPTS)
    with torch.no_grad():
        tokens, _, pooled, _ = pipe.encode_prompt(PROMPTS, None, None, do_classifier_free_guidance=False,
                                                  max_sequence_length=8)
    assert emb.tokens.shape == (3, 16 + 8, T5_WIDTH) and emb.pooled.shape == (3, CLIP_L + CLIP_G)
    torch.testing.assert_close(emb.tokens, tokens, rtol=0, atol=1e-6)
    torch.testing.assert_close(emb.pooled, pooled, rtol=0, atol=1e-6)

    calls = []
    monkeypatch.setattr(enc.pipe, "encode_prompt", lambda *a, **k: calls.append(a))
    again = enc.encode([PROMPTS[1], PROMPTS[0]])  # in-memory cache
    assert calls == [] and torch.equal(again.tokens, emb.tokens[[1, 0]])
    enc.release()
    assert enc._pipe is None

    fresh = SD3PromptEncoder(folder, max_length=8, device="cpu", cache_dir=tmp_path / "cache")
    disk = fresh.encode(PROMPTS)  # on-disk cache: the encoders are never loaded
    assert fresh._pipe is None and len(list((tmp_path / "cache").rglob("*.safetensors"))) == 3
    assert torch.equal(disk.tokens, emb.tokens) and torch.equal(disk.pooled, emb.pooled)
    other = SD3PromptEncoder(folder, max_length=4, device="cpu", cache_dir=tmp_path / "cache")
    assert other.encode(PROMPTS[:1]).tokens.shape == (1, 16 + 4, T5_WIDTH)  # another T5 length: not a cache hit


def test_prompt_encoder_without_t5(sd3, tmp_path, caplog):
    """SD3 without T5: the pipeline zero-fills T5's tokens; ours equal diffusers' own pipeline loaded that way,
    and the log says T5 is missing."""
    from diffusers import StableDiffusion3Pipeline

    from ladd.models.sd3 import SD3PromptEncoder

    folder = copy_without(sd3[0], tmp_path / "no-t5", "text_encoder_3", "tokenizer_3")
    with caplog.at_level("WARNING", logger="ladd.models.sd3"):
        emb = SD3PromptEncoder(folder, max_length=8, device="cpu").encode(PROMPTS[:2])
    assert "has no T5" in caplog.text
    pipe = StableDiffusion3Pipeline.from_pretrained(sd3[0], text_encoder_3=None, tokenizer_3=None)
    with torch.no_grad():
        tokens, _, pooled, _ = pipe.encode_prompt(PROMPTS[:2], None, None, do_classifier_free_guidance=False,
                                                  max_sequence_length=8)
    assert emb.tokens[:, 16:].abs().sum() == 0
    torch.testing.assert_close(emb.tokens, tokens, rtol=0, atol=1e-6)
    torch.testing.assert_close(emb.pooled, pooled, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------- (c) the teacher's velocity
def test_teacher_velocity_is_the_transformer_at_1000t(sd3):
    from ladd.models.teacher import load_teacher
    from ladd.models.text_encoder import TextEmbeddings

    folder, pipe = sd3
    teacher = load_teacher(folder).eval()
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 16, 8, 8, generator=g), torch.tensor([0.9, 0.25])
    cond = TextEmbeddings(torch.randn(2, 24, T5_WIDTH, generator=g), torch.randn(2, CLIP_L + CLIP_G, generator=g))
    with torch.no_grad():
        ours = teacher.velocity(x, t, cond)
        ref = pipe.transformer(hidden_states=x, encoder_hidden_states=cond.tokens, pooled_projections=cond.pooled,
                               timestep=1000 * t, return_dict=False)[0]
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    assert teacher.features(x, t, cond, [3])[0].shape == (2, 16, 4, 4)  # patch 2: a 4x4 token grid


# ----------------------------------------------------------------- (d) ladd's teacher sampler vs diffusers' pipeline
def test_teacher_sampler_reproduces_the_pipeline(sd3):
    """Euler + CFG over ladd.flow.euler_grid(steps, shift 3) equals StableDiffusion3Pipeline given the unshifted
    uniform sigmas (its scheduler shifts them); latents and the decoded images (VAE scaling and shift) agree.
    Note: without ``sigmas`` the pipeline's own grid ends at shift(1/1000)-based times (e.g. 4 steps:
    [1, .86, .60, .009, 0]), not ours ([1, .9, .75, .5, 0])."""
    import numpy as np

    from ladd import flow
    from ladd.generate import generate
    from ladd.models.registry import load_generator
    from ladd.sampling import euler

    folder, pipe = sd3
    gen = load_generator(str(folder))
    assert gen.recommended == {"steps": 28, "guidance": 7.0, "sampler": "euler", "shift": 3.0}
    steps, guidance, seed = 4, 5.0, 123
    noise = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(seed))  # as ladd.generate draws it
    kwargs = dict(prompt=PROMPTS[0], num_inference_steps=steps, guidance_scale=guidance, height=64, width=64,
                  sigmas=np.linspace(1.0, 1 / steps, steps).tolist(), latents=noise.clone())
    with torch.no_grad():
        ref = pipe(output_type="latent", **kwargs).images
        images = pipe(output_type="np", **kwargs).images  # [1, 64, 64, 3] in [0, 1]
    torch.testing.assert_close(pipe.scheduler.sigmas, flow.euler_grid(steps, 3.0), rtol=0, atol=1e-6)
    cond, uncond = gen.text_encoder.encode([PROMPTS[0]]), gen.text_encoder.encode([""])
    ours = euler(gen.model, noise, flow.euler_grid(steps, gen.recommended["shift"]), cond, uncond, guidance)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    assert (ours - noise).abs().mean() > 0.1  # the sampler moved

    ladd_images, _ = generate(gen, [PROMPTS[0]], [seed], steps, guidance, "euler", 64, 64)  # uint8, shift applied
    assert np.abs(ladd_images / 255.0 - images).max() <= 1 / 255 + 1e-3


# ---------------------------------------------------------------------------------------- (e) ladd distill on it
def test_distill_on_an_sd3_folder(sd3, tmp_path):
    from safetensors.torch import load_file

    from ladd.cli import main
    from ladd.data import shards
    from ladd.distill.run import distill

    folder = sd3[0]
    prompts = ["a lighthouse at dusk", "a bowl of ramen", "an owl on a branch"]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n\n")
    overrides = [f"paths.teacher={folder}", f"paths.vae={folder / 'vae'}", f"paths.data={tmp_path / 'data'}",
                 f"paths.run_dir={tmp_path / 'run'}", f"paths.text_cache={tmp_path / 'text-cache'}",
                 f"data.prompts={tmp_path / 'prompts.txt'}", "data.num_samples=4", "data.shard_size=4",
                 "data.batch_size=4", "data.steps=2", "train.steps=2", "train.batch_size=2", "train.grad_accum=1",
                 "train.ckpt_every=2", "train.sample_every=2", "student.shift=3", "eval.enabled=false"]
    summary = distill("configs/tiny.yaml", overrides)
    run, export = tmp_path / "run", tmp_path / "run" / "export"
    assert summary["steps"] == 2 and (run / "samples" / "000002.png").is_file()

    data = shards.ShardDataset.load(tmp_path / "data")
    assert [r["prompt"] for r in data.records] == prompts + prompts[:1] and data.records[0]["spec"] == []
    # text states once per distinct prompt: 3 rows for 4 samples, the 4th sample's prompt is the 1st's
    assert data.latent_shape == (16, 8, 8) and data.text.tokens.shape == (3, 16 + 256, T5_WIDTH)
    assert data.text_index.tolist() == [0, 1, 2, 0] and data.text_of([3]).tokens.shape == (1, 16 + 256, T5_WIDTH)
    gen = data.generation
    assert (gen["steps"], gen["guidance"], gen["shift"], gen["prompts"]["count"]) == (2, 7.0, 3.0, 3)
    assert gen["text_encoder"] == {"name": "sd3", "path": str(folder.resolve()), "max_length": 256}
    # the data's prompts and "": the previews show the data's prompts (not ShapeWorld captions), already cached
    assert len(list((tmp_path / "text-cache").rglob("*.safetensors"))) == 3 + 1

    config = json.loads((export / "ladd.json").read_text())
    assert not any(k.startswith("ladd_") for k in json.loads((export / "config.json").read_text()))
    assert config["ladd_recommended"] == {"steps": 4, "guidance": 1.0, "sampler": "renoise", "shift": 3.0,
                                          "grid": "uniform"}
    assert config["ladd_text_encoder"]["name"] == "sd3"
    assert json.loads((export / "scheduler" / "scheduler_config.json").read_text())["shift"] == 3.0
    assert "teacher samples of 3 prompts of data.prompts, 2 euler steps, guidance 7" in (export / "card.md").read_text()
    assert load_file(export / "diffusion_pytorch_model.safetensors").keys() == \
        load_file(folder / "transformer" / "diffusion_pytorch_model.safetensors").keys()
    assert main(["sample", "--model", str(export), "--prompt", prompts[0], "--n", "2",
                 "--out", str(tmp_path / "s.png")]) == 0  # its own SD3 text encoders, VAE and shifted grid

    # data from other prompts is not reused
    (tmp_path / "other.txt").write_text("a castle\n")
    with pytest.raises(shards.DataError, match="prompts"):
        distill("configs/tiny.yaml", overrides + [f"data.prompts={tmp_path / 'other.txt'}"])


@pytest.mark.parametrize("method", ["lcm", "dmd2", "add"])
def test_every_method_on_an_sd3_folder(method, sd3, tmp_path):
    """The baselines train on an SD3 pipeline folder by method=... with the same presets mechanism (ADD with a
    tiny random DINOv2 folder as its feature network), and export a student the pipeline path loads."""
    from ladd.distill.run import distill

    folder = sd3[0]
    (tmp_path / "prompts.txt").write_text("a lighthouse at dusk\nan owl on a branch\n")
    extra = {"lcm": ["lcm.solver_steps=8"], "dmd2": ["dmd2.critic_updates=1", "dmd2.gan_head_width=16"],
             "add": [f"add.feature_net={tiny_dino(tmp_path / 'dino')}", "add.head_width=16"]}[method]
    overrides = [f"method={method}", f"paths.teacher={folder}", f"paths.vae={folder / 'vae'}",
                 f"paths.data={tmp_path / 'data'}", f"paths.run_dir={tmp_path / 'run'}",
                 f"paths.text_cache={tmp_path / 'text-cache'}", f"data.prompts={tmp_path / 'prompts.txt'}",
                 "data.num_samples=2", "data.shard_size=2", "data.batch_size=2", "data.steps=2", "train.steps=2",
                 "train.batch_size=2", "train.grad_accum=1", "train.ckpt_every=2", "train.sample_every=0",
                 "eval.enabled=false", *extra]
    summary = distill("configs/tiny.yaml", overrides)
    export = tmp_path / "run" / "export"
    assert summary["steps"] == 2 and (export / "diffusion_pytorch_model.safetensors").is_file()
    assert json.loads((export / "ladd.json").read_text())["ladd_text_encoder"]["name"] == "sd3"


def tiny_dino(path):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32,
                             patch_size=14, image_size=224)).save_pretrained(path)
    return path


def distill_variant(sd3, tmp_path, variant: str, *extra: str):
    """A 2-sample ``ladd distill`` run (``tmp_path/run``) on the tiny pipeline of ``variant`` (VARIANTS; built
    into ``tmp_path`` unless it is the module's SD3-medium one); returns the teacher's folder."""
    from ladd.distill.run import distill

    folder = sd3[0]
    if variant != "sd3-medium":
        folder = tmp_path / variant
        build_tiny_pipeline(variant=variant).save_pretrained(folder)
    (tmp_path / "prompts.txt").write_text("a lighthouse at dusk\n")
    distill("configs/tiny.yaml", [f"paths.teacher={folder}", f"paths.vae={folder / 'vae'}",
                                  f"paths.data={tmp_path / 'data'}", f"paths.run_dir={tmp_path / 'run'}",
                                  f"paths.text_cache={tmp_path / 'text-cache'}",
                                  f"data.prompts={tmp_path / 'prompts.txt'}", "data.num_samples=2",
                                  "data.shard_size=2", "data.batch_size=2", "data.steps=2", "train.batch_size=2",
                                  "train.grad_accum=1", "train.sample_every=0", "eval.enabled=false", *extra])
    return folder


def as_pipeline_images(gen, latents):
    """What a diffusers pipeline's ``output_type="np"`` gives for ``latents``: the VAE's decode in [0, 1], NHWC."""
    return ((gen.vae.decode(latents).clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_pipeline_export_of_an_sd3_student_loads_with_nothing_else(sd3, tmp_path, variant):
    """ladd export --pipeline on an SD3 / SD3.5-medium / SD3.5-large run: from_pretrained(DIR) alone (text encoders
    linked to the teacher's) and the default 4-step, no-guidance call reproduce ladd's re-noising sampler on the
    student grid: the same latents, and images within 1/255."""
    import numpy as np
    from diffusers import StableDiffusion3Pipeline

    from ladd import flow
    from ladd.cli import main
    from ladd.distill.pipeline import default_grid_is_exact
    from ladd.models.registry import load_generator
    from ladd.sampling import renoise

    distill_variant(sd3, tmp_path, variant, "train.steps=1")
    out = tmp_path / "shipped"
    assert main(["export", str(tmp_path / "run"), "--out", str(out), "--pipeline"]) == 0
    assert (out / "text_encoder_3").is_symlink() and (out / "tokenizer").is_symlink()
    pipe = StableDiffusion3Pipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    noise = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(3)
    latents = pipe(PROMPTS[0], num_inference_steps=4, guidance_scale=1.0, height=64, width=64,
                   latents=noise.clone(), output_type="latent").images
    gen = load_generator(str(out))
    cond = gen.text_encoder.encode([PROMPTS[0]])
    ours = renoise(gen.model, noise, torch.cat([flow.student_grid(4), torch.zeros(1)]), cond,
                   generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(latents, ours, atol=1e-4, rtol=1e-4)
    torch.manual_seed(3)
    images = pipe(PROMPTS[0], num_inference_steps=4, guidance_scale=1.0, height=64, width=64,
                  latents=noise.clone(), output_type="np").images
    ref = as_pipeline_images(gen, ours)
    assert np.abs(images - ref).max() < 1 / 255 and images.std() > 1e-3
    if variant == "sd3.5-medium":
        assert pipe.transformer.config.dual_attention_layers == [0, 1]
    # a shifted uniform grid is no diffusers default: the card gives the sigmas to pass
    assert default_grid_is_exact(4, 1.0) and default_grid_is_exact(2, 1.0) and default_grid_is_exact(1, 1.0)
    assert not default_grid_is_exact(4, 3.0)


@pytest.mark.parametrize("grid", ["diffusers", "uniform"])
def test_a_shifted_student_samples_its_grid_through_the_pipeline_export(sd3, tmp_path, grid):
    """A student with student.shift=3 (SD3.5-Large-Turbo's): with student.grid=diffusers the exported pipeline's
    default 4-step call is the trained grid; with the uniform grid the card's sigmas give it. Either way the
    latents are ladd's re-noising sampler's over the grid the student trained on."""
    from diffusers import StableDiffusion3Pipeline

    from ladd import flow
    from ladd.cli import main
    from ladd.models.io import LADD_META
    from ladd.models.registry import load_generator
    from ladd.sampling import renoise

    distill_variant(sd3, tmp_path, "sd3-medium", "train.steps=1", "student.shift=3", f"student.grid={grid}")
    out = tmp_path / "shipped"
    assert main(["export", str(tmp_path / "run"), "--out", str(out), "--pipeline"]) == 0
    meta = json.loads((out / LADD_META).read_text())
    assert meta["ladd_recommended"]["grid"] == grid
    card, exact = (out / "card.md").read_text(), meta["ladd_pipeline_grid"]["exact"]
    assert exact == (grid == "diffusers") and ("sigmas=[1.0, 0.75, 0.5, 0.25]" in card) == (not exact)
    pipe = StableDiffusion3Pipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    noise = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(3)
    extra = {} if exact else {"sigmas": meta["ladd_pipeline_grid"]["sigmas"]}
    latents = pipe(PROMPTS[0], num_inference_steps=4, guidance_scale=1.0, height=64, width=64,
                   latents=noise.clone(), output_type="latent", **extra).images
    gen = load_generator(str(out))
    times = flow.sampling_times("renoise", 4, 3.0, grid)
    assert torch.allclose(times, flow.sampling_times("renoise", 4, 3.0, "diffusers"), atol=1e-4) == (grid != "uniform")
    ours = renoise(gen.model, noise, times, gen.text_encoder.encode([PROMPTS[0]]),
                   generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(latents, ours, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_lora_recipe_on_the_teachers_pipeline_is_the_student(sd3, tmp_path, variant):
    """A LoRA student of an SD3 / SD3.5-medium / SD3.5-large teacher, used as docs/real-models.md says: the
    teacher's pipeline, ``load_lora_weights(<export>/lora)`` and the scheduler beside it; the default 4-step call is
    the student (ladd's sampler on the merged export): the same latents, images within 1/255."""
    import numpy as np
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline
    from safetensors.torch import load_file

    from ladd import flow
    from ladd.models.registry import load_generator
    from ladd.sampling import renoise

    folder = distill_variant(sd3, tmp_path, variant, "train.steps=2", "student.lora_rank=4", "optim.student.lr=1e-2")
    out = tmp_path / "run" / "export"
    adapters = load_file(next((out / "lora").glob("*.safetensors")))
    assert max(v.abs().max() for k, v in adapters.items() if "lora_B" in k) > 0  # trained: the LoRA is not a no-op
    teacher = StableDiffusion3Pipeline.from_pretrained(folder)
    teacher.set_progress_bar_config(disable=True)
    noise = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    call = dict(prompt=PROMPTS[0], num_inference_steps=4, guidance_scale=1.0, height=64, width=64)
    torch.manual_seed(3)
    before = teacher(latents=noise.clone(), output_type="latent", **call).images
    teacher.load_lora_weights(out / "lora")
    teacher.scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(out / "lora", subfolder="scheduler")
    torch.manual_seed(3)
    latents = teacher(latents=noise.clone(), output_type="latent", **call).images
    gen = load_generator(str(out))
    ours = renoise(gen.model, noise, torch.cat([flow.student_grid(4), torch.zeros(1)]),
                   gen.text_encoder.encode([PROMPTS[0]]), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(latents, ours, atol=1e-4, rtol=1e-4)
    assert (latents - before).abs().max() > 1e-3  # the adapters and the scheduler changed the call
    torch.manual_seed(3)
    images = teacher(latents=noise.clone(), output_type="np", **call).images
    ref = as_pipeline_images(gen, ours)
    assert np.abs(images - ref).max() < 1 / 255


# ------------------------------------------------------------------------------------------------ presets, errors
@pytest.mark.parametrize("preset", ["configs/sd3-medium.yaml", "configs/sd3.5-large.yaml"])
def test_presets_pass_check_config_on_the_tiny_pipeline(preset, sd3, tmp_path):
    from ladd.distill.config import load_distill_config
    from ladd.distill.run import check_config

    folder = sd3[0]
    cfg = load_distill_config(preset)
    assert cfg.data.prompts is None and not cfg.eval.enabled and cfg.train.mixed_precision == "bf16"
    assert (cfg.data.height, cfg.data.width) == (1024, 1024) and cfg.ladd.disc.blocks == "spaced:4"
    large = "3.5-large" in preset  # as SD3.5-Large-Turbo: shift 3; its teacher's card: CFG 3.5
    assert (cfg.student.shift, cfg.data.guidance) == ((3.0, 3.5) if large else (1.0, None))
    assert cfg.student.grid == ("diffusers" if large else "uniform")  # the exported pipeline's default call
    assert cfg.ladd.disc.resolve_blocks(38 if large else 24) == ([9, 18, 27, 37] if large else [5, 11, 17, 23])
    with pytest.raises(ConfigError, match=rf"paths\.teacher: {cfg.paths.teacher} does not exist"):
        check_config(cfg)  # the placeholder teacher path

    (tmp_path / "p.txt").write_text("a cat\n")
    paths = [f"paths.teacher={folder}", f"paths.vae={folder / 'vae'}", f"paths.data={tmp_path / 'data'}"]
    gen = check_config(load_distill_config(preset, paths + [f"data.prompts={tmp_path / 'p.txt'}"]))
    assert gen["latent_shape"] == [16, 128, 128] and gen["shift"] == 3.0
    with pytest.raises(ConfigError, match=r"data\.prompts: the SD3 teacher .* needs a prompt file"):
        check_config(load_distill_config(preset, paths))
    with pytest.raises(ConfigError, match=r"data\.prompts: .*missing\.txt does not exist"):
        check_config(load_distill_config(preset, paths + [f"data.prompts={tmp_path / 'missing.txt'}"]))
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ConfigError, match=r"data\.prompts: .*empty\.txt holds no prompts"):
        check_config(load_distill_config(preset, paths + [f"data.prompts={tmp_path / 'empty.txt'}"]))
    with pytest.raises(ConfigError, match=r"eval\.enabled"):
        check_config(load_distill_config(preset, paths + [f"data.prompts={tmp_path / 'p.txt'}", "eval.enabled=true"]))


def test_transformer_subfolder_or_a_foreign_vae_is_one_line(sd3, tmp_path):
    """paths.teacher=D/transformer names the pipeline folder to give; a 16-channel VAE with other factors (another
    model family's) is refused against the teacher's own VAE."""
    import json as json_

    from ladd.distill.config import load_distill_config
    from ladd.distill.run import check_config

    folder = sd3[0]
    (tmp_path / "p.txt").write_text("a cat\n")
    base = [f"paths.data={tmp_path / 'data'}", f"data.prompts={tmp_path / 'p.txt'}", "eval.enabled=false"]
    with pytest.raises(ConfigError, match=rf"set paths.teacher={folder} "):
        check_config(load_distill_config("configs/tiny.yaml", base + [f"paths.teacher={folder / 'transformer'}",
                                                                      f"paths.vae={folder / 'vae'}"]))
    flux = shutil.copytree(folder / "vae", tmp_path / "flux-vae")
    config = json_.loads((flux / "config.json").read_text())
    config.update(scaling_factor=0.3611, shift_factor=0.1159)  # FLUX's factors, SD3's 16 channels
    (flux / "config.json").write_text(json_.dumps(config))
    with pytest.raises(ConfigError, match="scaling_factor 0.3611 vs 1.5305"):
        check_config(load_distill_config("configs/tiny.yaml", base + [f"paths.teacher={folder}",
                                                                      f"paths.vae={flux}"]))
