"""The student as a complete diffusers ``StableDiffusion3Pipeline`` folder (``ladd export --pipeline``).

    DIR/model_index.json         StableDiffusion3Pipeline: transformer, scheduler, VAE, the teacher's text encoders
    DIR/transformer/             the student (SD3Transformer2DModel, EMA weights, LoRA merged)
    DIR/scheduler/               FlowMatchEulerDiscreteScheduler whose *default* call is the student's setting
    DIR/vae/                     the teacher's VAE (diffusers format)
    DIR/text_encoder*/, tokenizer*/   an SD3 teacher's, linked (default) or copied; the nano world's MiniLM is
                                 not an SD3 text encoder, so a nano export has none: load it with
                                 text_encoder=None, tokenizer=None, ... (card.md) and pass prompt_embeds
    DIR/ladd.json, card.md, ladd_export.json   ladd's metadata (ladd eval / sample load DIR like any model)

so that ``StableDiffusion3Pipeline.from_pretrained(DIR)(prompt, num_inference_steps=N, guidance_scale=1.0)`` is
the trained student with nothing else passed:

- **grid**: diffusers' default sigmas for N steps are ``linspace(1, 1/1000, N)``, shifted; ``shift_terminal =
  shift(1/N)`` (``ladd.flow.grid_terminal``) stretches them to end where the student grid ends, which for shift 1 is
  exactly the uniform student grid ``{1, (N-1)/N, ..., 1/N}`` (``ladd.flow.student_grid``). A student trained on
  ``student.grid=diffusers`` has that default as its grid for any shift. A shifted uniform grid (``student.shift !=
  1``, ``student.grid=uniform``) is no diffusers default for 4 steps: its card and ladd.json give the ``sigmas`` to
  pass, unshifted (``{1, .75, .5, .25}``: the scheduler shifts them, and the stretch then leaves them alone).
- **sampler**: ``stochastic_sampling=True`` is ladd's re-noising sampler (x0 prediction, fresh noise to the next
  time); the scheduler draws that noise from torch's global generator (seed it with ``torch.manual_seed``).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from ladd import flow
from ladd.models.io import LADD_META

TEXT_PARTS = ("text_encoder", "text_encoder_2", "text_encoder_3", "tokenizer", "tokenizer_2", "tokenizer_3")


def student_scheduler(steps: int, shift: float = 1.0, sampler: str = "renoise"):
    """A FlowMatchEulerDiscreteScheduler whose ``set_timesteps(steps)`` gives the ``diffusers`` student grid (for
    shift 1 also the uniform one), whose ``set_timesteps(sigmas=<uniform times, unshifted>)`` gives the shifted
    uniform grid, and whose step is the student's sampler."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(shift=shift, shift_terminal=flow.grid_terminal(steps, shift),
                                           stochastic_sampling=sampler == "renoise")


def default_grid_is_exact(steps: int, shift: float, grid: str = "uniform", start: float = 1.0) -> bool:
    """Whether ``student_scheduler(steps, shift)`` samples the student's ``grid`` (from ``start``) by default."""
    s = student_scheduler(steps, shift)
    s.set_timesteps(steps)
    return torch.allclose(s.sigmas[:-1], flow.student_grid(steps, shift, grid, start).float(), atol=1e-5)


def fewer_step_sigmas(steps: int, shift: float, recommended: dict) -> dict[str, list[float]]:
    """For each step count below ``steps``: the ``sigmas`` that a scheduler of ``student_scheduler(steps, shift)``
    loaded with ``shift_terminal=None`` must be passed to sample the times ``ladd sample`` takes at that count
    (``ladd.flow.sampling_times`` at the card's shift for it: its ``student.sample_shifts`` entry, else the
    student's shift). The stretch to the N-step grid's last time applies to every call (a 4-step export asked for 2
    steps samples [1, .25]), hence ``shift_terminal=None``; the scheduler still shifts what it is passed by
    ``shift``, hence the times shifted back by ``1 / shift`` (the inverse of a shift)."""
    from ladd.models.registry import recommended_shift

    sampler, grid = recommended.get("sampler", "renoise"), recommended.get("grid", "uniform")
    out = {}
    for k in range(1, steps):
        times = flow.sampling_times(sampler, k, recommended_shift(recommended, k), grid,
                                    recommended.get("start", 1.0))[:-1].double()
        out[str(k)] = [round(float(t), 6) for t in flow.shift_times(times, 1 / shift)]
    return out


def _place(src: Path, dst: Path, copy: bool) -> None:
    if copy and src.is_dir():
        shutil.copytree(src, dst)
    elif copy:
        shutil.copy2(src, dst)
    else:
        os.symlink(os.path.relpath(src.resolve(), dst.parent.resolve()), dst)


def write_pipeline(transformer, tmp: Path, *, vae_dir: Path, teacher_dir: Path, steps: int, shift: float,
                   recommended: dict, meta: dict, copy: bool = False) -> dict:
    """Write the pipeline folder's parts into ``tmp`` (the caller renames it into place); returns what the
    card should say about the grid: ``{"exact": bool}``, and ``"sigmas"`` to pass when the default call is not the
    grid."""
    from diffusers import StableDiffusion3Pipeline

    from ladd.models import sd3
    from ladd.models.vae import load_vae

    teacher_dir, vae_dir = Path(teacher_dir), Path(vae_dir)
    scheduler = student_scheduler(steps, shift, recommended.get("sampler", "renoise"))
    vae = load_vae(vae_dir).model
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=None,
                                    tokenizer=None, text_encoder_2=None, tokenizer_2=None, text_encoder_3=None,
                                    tokenizer_3=None)
    pipe.save_pretrained(tmp, safe_serialization=True)
    if sd3.is_pipeline_folder(teacher_dir):  # an SD3 teacher: its text encoders and tokenizers, linked or copied
        index = json.loads((tmp / "model_index.json").read_text())
        teacher_index = json.loads((teacher_dir / "model_index.json").read_text())
        for part in TEXT_PARTS:
            if teacher_index.get(part, [None])[0] is not None and (teacher_dir / part).is_dir():
                _place(teacher_dir / part, tmp / part, copy)
                index[part] = teacher_index[part]
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    kind, start = recommended.get("grid", "uniform"), recommended.get("start", 1.0)
    grid = {"exact": default_grid_is_exact(steps, shift, kind, start),
            "fewer_steps": fewer_step_sigmas(steps, shift, recommended)}
    if not grid["exact"]:  # a shifted uniform grid or a start below 1: the sigmas to pass, unshifted (the
        # scheduler shifts them)
        times = flow.student_grid(steps, shift, kind, start).double()
        grid["sigmas"] = [round(float(t), 6) for t in flow.shift_times(times, 1 / shift)]
    (tmp / LADD_META).write_text(json.dumps({**meta, "ladd_pipeline_grid": grid}, indent=2, sort_keys=True) + "\n")
    return grid


def usage(steps: int, grid: dict, text_encoder: dict, sampler: str = "renoise") -> str:
    """The card's section on loading the folder with diffusers alone."""
    load, call = "", f"pipe(prompt, num_inference_steps={steps}, guidance_scale=1.0)"
    if text_encoder.get("name") != "sd3":  # the nano world: MiniLM embeddings, computed by ladd
        load = ", " + ", ".join(f"{p}=None" for p in TEXT_PARTS)
        call = (f"pipe(prompt_embeds=e.tokens, pooled_prompt_embeds=e.pooled, num_inference_steps={steps}, "
                f"guidance_scale=1.0)` with `e = ladd.models.text_encoder.load_text_encoder(**ladd_text_encoder)"
                f".encode([prompt])")
    if not grid["exact"]:
        call = call.replace("guidance_scale=1.0", f"guidance_scale=1.0, sigmas={grid['sigmas']}")
    return ("## With diffusers alone\n\n"
            f"`pipe = StableDiffusion3Pipeline.from_pretrained(<this folder>{load})`, then "
            + ("`torch.manual_seed(s)` (the re-noising sampler draws from torch's global generator) and "
               if sampler == "renoise" else "")
            + f"`{call}`"
            + ("" if grid["exact"] else " (a shifted uniform grid is not diffusers' default for this step count: "
               "pass these sigmas, which the scheduler shifts; `student.grid=diffusers` trains on the default)") + "."
            + _fewer_steps(steps, grid.get("fewer_steps", {})))


def _fewer_steps(steps: int, fewer: dict) -> str:
    if not fewer:
        return ""
    counts = "; ".join(f"{k} step{'s' * (int(k) > 1)}: `num_inference_steps={k}, sigmas={v}`"
                       for k, v in sorted(fewer.items(), key=lambda kv: int(kv[0])))
    return ("\n\nFewer steps: the scheduler stretches every call to end where the "
            f"{steps}-step grid ends, so first `pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained("
            f"<this folder>, subfolder=\"scheduler\", shift_terminal=None)`, then pass the card's grid: {counts}.")
