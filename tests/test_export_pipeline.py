"""The exported nano student in diffusers' own StableDiffusion3Pipeline: 4 steps, no guidance, precomputed MiniLM
prompt embeddings; its latents and images match ladd's deterministic Euler sampler on the same noise and grid."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

STUDENT = Path(os.environ.get("LADD_TEST_STUDENT", "assets/nano/student"))
PROMPTS = ["a red circle in the top left", "two blue squares", "a small green triangle"]


@pytest.fixture(scope="module")
def student_pipeline():
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    from ladd.models.registry import load_generator

    if not (STUDENT / "config.json").is_file():
        pytest.fail(f"{STUDENT} is missing: the shipped student is part of the repository")
    config = json.loads((STUDENT / "config.json").read_text())
    assert not [k for k in config if k.startswith("ladd_")]  # ladd's keys are in ladd.json: diffusers warns of none
    transformer = SD3Transformer2DModel.from_pretrained(STUDENT)  # plain diffusers, no ladd code
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(STUDENT / "scheduler")
    gen = load_generator(str(STUDENT))
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=scheduler, vae=gen.vae.model,
                                    text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
                                    text_encoder_3=None, tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe, gen


def test_sd3_pipeline_with_the_exports_scheduler_is_the_shipped_student(student_pipeline):
    """The plain export's transformer and scheduler in a StableDiffusion3Pipeline: the default call (only the step
    count, no guidance) is ladd's re-noising sampler on the student grid (the scheduler's fresh noise from torch's
    global generator, seeded alike), latents and images."""
    from ladd import flow
    from ladd.sampling import get_sampler

    pipe, gen = student_pipeline
    cond = gen.text_encoder.encode(PROMPTS)
    steps, sampler = gen.recommended["steps"], gen.recommended["sampler"]
    noise = torch.randn(len(PROMPTS), 16, 8, 8, generator=torch.Generator().manual_seed(0))
    kwargs = dict(prompt_embeds=cond.tokens, pooled_prompt_embeds=cond.pooled, guidance_scale=1.0,
                  num_inference_steps=steps, height=64, width=64, latents=noise.clone())
    torch.manual_seed(5)
    latents = pipe(output_type="latent", **kwargs).images
    ours = get_sampler(sampler)(gen.model, noise, flow.sampling_times(sampler, steps), cond,
                                generator=torch.Generator().manual_seed(5))
    # the pipeline's latents are in the VAE's scaled space, as ladd's are
    torch.testing.assert_close(latents, ours, atol=1e-4, rtol=1e-4)

    torch.manual_seed(5)
    images = pipe(output_type="np", **kwargs).images  # [B, 64, 64, 3] in [0, 1]
    ref = ((gen.vae.decode(ours).clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()
    assert images.shape == (3, 64, 64, 3)
    assert np.abs(images - ref).max() < 1e-3
    assert images.std() > 0.05  # not a blank image


@pytest.mark.parametrize("sampler", ["renoise", "euler"])
def test_pipeline_export_default_call_is_the_student(tmp_path, monkeypatch, sampler):
    """ladd export --pipeline: StableDiffusion3Pipeline.from_pretrained(DIR) with only the step count and no
    guidance samples the student grid with the student's sampler (student.sampler): the same latents and images as
    ladd's own sampler on the same noise (re-noising: the scheduler's fresh noise from torch's global generator,
    seeded alike; Euler: deterministic)."""
    from diffusers import StableDiffusion3Pipeline

    from ladd import flow
    from ladd.cli import main
    from ladd.distill.run import distill
    from ladd.models import text_encoder as te
    from ladd.models.registry import load_generator
    from ladd.sampling import get_sampler
    from helpers import FakeEncoder, make_assets, tiny_overrides

    monkeypatch.setattr(te, "load_text_encoder", lambda name="minilm", max_length=32, **_: FakeEncoder(max_length))
    make_assets(tmp_path)
    distill("configs/tiny.yaml", tiny_overrides(tmp_path, "train.steps=2", f"student.sampler={sampler}"))
    out = tmp_path / "shipped"
    assert main(["export", str(tmp_path / "run"), "--out", str(out), "--pipeline"]) == 0
    assert {"model_index.json", "transformer", "scheduler", "vae", "ladd.json", "card.md"} <= \
        {p.name for p in out.iterdir()}
    assert "StableDiffusion3Pipeline.from_pretrained" in (out / "card.md").read_text()
    assert {"renoise": "re-noising sampler", "euler": "Euler sampler"}[sampler] in (out / "card.md").read_text()

    # the nano world's MiniLM is not an SD3 text encoder: the export has none (its card says so)
    none = {p: None for p in ("text_encoder", "text_encoder_2", "text_encoder_3", "tokenizer", "tokenizer_2",
                              "tokenizer_3")}
    assert "text_encoder_3=None" in (out / "card.md").read_text()
    assert "shift_terminal=None" in (out / "card.md").read_text()  # how to call it at 1-3 steps (test below)
    pipe = StableDiffusion3Pipeline.from_pretrained(out, **none)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler.set_timesteps(4)
    torch.testing.assert_close(pipe.scheduler.sigmas, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    cond = FakeEncoder().encode(PROMPTS)
    noise = torch.randn(len(PROMPTS), 4, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(7)
    latents = pipe(prompt_embeds=cond.tokens, pooled_prompt_embeds=cond.pooled, num_inference_steps=4,
                   guidance_scale=1.0, height=64, width=64, latents=noise.clone(), output_type="latent").images
    gen = load_generator(str(out))  # ladd loads the pipeline folder like any model: its card's setting
    assert gen.recommended == {"steps": 4, "guidance": 1.0, "sampler": sampler, "shift": 1.0, "grid": "uniform"}
    ours = get_sampler(sampler)(gen.model, noise, flow.sampling_times(sampler, 4), cond,
                                generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(latents, ours, atol=1e-4, rtol=1e-4)


def test_pipeline_export_of_a_student_with_a_start_time(tmp_path, monkeypatch):
    """student.start_time=0.9: the card says so, ladd samples from 0.9, and the pipeline called with the sigmas the
    card gives samples the same latents on the same noise."""
    from diffusers import StableDiffusion3Pipeline

    from ladd import flow
    from ladd.cli import main
    from ladd.distill.run import distill
    from ladd.models import text_encoder as te
    from ladd.models.registry import load_generator
    from ladd.sampling import get_sampler
    from helpers import FakeEncoder, make_assets, tiny_overrides

    monkeypatch.setattr(te, "load_text_encoder", lambda name="minilm", max_length=32, **_: FakeEncoder(max_length))
    make_assets(tmp_path)
    distill("configs/tiny.yaml", tiny_overrides(tmp_path, "train.steps=2", "student.start_time=0.9"))
    out = tmp_path / "shipped"
    assert main(["export", str(tmp_path / "run"), "--out", str(out), "--pipeline"]) == 0
    assert "starting noise read at time 0.9" in (out / "card.md").read_text()
    grid = json.loads((out / "ladd.json").read_text())["ladd_pipeline_grid"]
    assert not grid["exact"] and grid["sigmas"] == [0.9, 0.75, 0.5, 0.25]
    none = {p: None for p in ("text_encoder", "text_encoder_2", "text_encoder_3", "tokenizer", "tokenizer_2",
                              "tokenizer_3")}
    pipe = StableDiffusion3Pipeline.from_pretrained(out, **none)
    pipe.set_progress_bar_config(disable=True)
    cond = FakeEncoder().encode(PROMPTS)
    noise = torch.randn(len(PROMPTS), 4, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(7)
    latents = pipe(prompt_embeds=cond.tokens, pooled_prompt_embeds=cond.pooled, num_inference_steps=4,
                   sigmas=grid["sigmas"], guidance_scale=1.0, height=64, width=64, latents=noise.clone(),
                   output_type="latent").images
    gen = load_generator(str(out))
    assert gen.recommended["start"] == 0.9
    times = flow.sampling_times("renoise", 4, start=gen.recommended["start"])
    torch.testing.assert_close(times, torch.tensor([0.9, 0.75, 0.5, 0.25, 0.0]))
    ours = get_sampler("renoise")(gen.model, noise, times, cond, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(latents, ours, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("shift,grid", [(1.0, "uniform"), (3.0, "uniform"), (3.0, "diffusers")])
def test_the_cards_fewer_step_sigmas_sample_its_grid_in_diffusers(shift, grid):
    """The export's scheduler stretches every call to end where the 4-step grid ends ([1, .5] becomes [1, .25]),
    so the card's fewer-step grids (here 2 steps at shift 3, `student.sample_shifts`; 1 and 3 steps at the
    student's shift) are called on the scheduler loaded with shift_terminal=None and the sigmas the card gives."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from ladd import flow
    from ladd.distill.pipeline import fewer_step_sigmas, student_scheduler, usage
    from ladd.models.registry import recommended_shift

    rec = {"steps": 4, "guidance": 1.0, "sampler": "renoise", "shift": shift, "grid": grid, "shifts": {"2": 3.0}}
    fewer = fewer_step_sigmas(4, shift, rec)
    assert sorted(fewer) == ["1", "2", "3"]
    if shift == 1.0:  # what happens without shift_terminal=None
        stretched = student_scheduler(4, shift)
        stretched.set_timesteps(sigmas=[1.0, 0.5])
        torch.testing.assert_close(stretched.sigmas, torch.tensor([1.0, 0.25, 0.0]))
    plain = FlowMatchEulerDiscreteScheduler.from_config(student_scheduler(4, shift).config, shift_terminal=None)
    for k, sigmas in fewer.items():
        plain.set_timesteps(sigmas=sigmas)
        expected = flow.student_grid(int(k), recommended_shift(rec, int(k)), grid).float()
        torch.testing.assert_close(plain.sigmas[:-1], expected, atol=1e-5, rtol=0)
    if shift == 1.0:
        assert fewer["2"] == [1.0, 0.75] and fewer["1"] == [1.0]
    text = usage(4, {"exact": True, "fewer_steps": fewer}, {"name": "minilm"})
    assert "shift_terminal=None" in text and f"num_inference_steps=2, sigmas={fewer['2']}" in text
