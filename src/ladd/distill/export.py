"""Export the distilled student: ``<run>/export/`` as a diffusers-format transformer folder.

    export/config.json                           SD3Transformer2DModel config (diffusers' keys only)
    export/ladd.json                             ladd's keys (see below)
    export/diffusion_pytorch_model.safetensors   the weights (EMA weights when EMA is on)
    export/scheduler/scheduler_config.json       the student's FlowMatchEulerDiscreteScheduler (ladd.distill.pipeline)
    export/card.md                               teacher, steps, data, time, figures
    export/lora/pytorch_lora_weights.safetensors only for a LoRA student (student.lora_rank > 0): the adapters alone
    export/lora/scheduler/                       and the scheduler whose default call is the student's grid and sampler

A LoRA student is exported twice (ladd.distill.lora): merged into plain weights as above, so everything that loads
the export (``ladd eval``, ``ladd sample``, StableDiffusion3Pipeline) works unchanged, and as adapters in
diffusers' format for the teacher: on a pipeline holding the teacher, ``pipe.load_lora_weights(<export>/lora)``
and ``pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(<export>/lora, subfolder="scheduler")``
make ``pipe(prompt, num_inference_steps=N, guidance_scale=1.0)`` the student (docs/real-models.md).

``save_pretrained`` writes config.json and the weights; ladd.json holds the keys ladd.models.registry reads
(``ladd.models.io.read_config`` merges the two): ``ladd_recommended``
(the method's: for a distilled student ``steps`` = the student grid, guidance 1, ``student.sampler``, ``shift`` =
``student.shift``, ``grid`` = ``student.grid``),
``ladd_text_encoder`` (the teacher's) and ``ladd_vae`` (relative to the export folder), so
``ladd eval --model <run>/export`` and ``ladd.models.teacher.load_teacher`` load it as they load the teacher,
and diffusers loads config.json without warnings.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import torch

from ladd.flow import student_grid
from ladd.methods import method_class
from ladd.models import lora
from ladd.models.io import LADD_META, read_config, replace_dir


SAMPLER_WORDS = {"renoise": "re-noising sampler", "euler": "Euler sampler"}


def export_student(model: torch.nn.Module, out_dir: str | Path, *, steps: int, teacher_dir: str | Path,
                   vae_dir: str | Path, text_encoder: dict, card: str, trained_steps: int | None = None,
                   shift: float = 1.0, recommended: dict | None = None, run_dir: str | Path | None = None,
                   pipeline: bool = False, copy_text_encoders: bool = False) -> Path:
    """Write ``model`` (an SD3Adapter, maybe with LoRA adapters: then merged, and the adapters also alone in
    ``lora/``) to ``out_dir`` atomically (temporary folder, then rename). ``model`` is not changed. ``pipeline``:
    a complete StableDiffusion3Pipeline folder instead (ladd.distill.pipeline; the teacher's text encoders linked,
    or copied with ``copy_text_encoders``)."""
    from ladd.distill.pipeline import student_scheduler

    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    transformer = lora.merged_copy(model.transformer) if lora.is_lora(model) else model.transformer
    recommended = recommended or {"steps": steps, "guidance": 1.0, "sampler": "renoise", "shift": shift,
                                  "grid": "uniform"}
    meta = dict(ladd_recommended=recommended, ladd_text_encoder=text_encoder, ladd_vae=_reference(vae_dir, out_dir),
                ladd_teacher=_reference(teacher_dir, out_dir), ladd_trained_steps=trained_steps)
    if pipeline:
        from ladd.distill.pipeline import usage, write_pipeline

        grid = write_pipeline(transformer, tmp, vae_dir=Path(vae_dir), teacher_dir=Path(teacher_dir), steps=steps,
                              shift=shift, recommended=recommended, meta={**meta, "ladd_vae": "vae"},
                              copy=copy_text_encoders)
        card = card.rstrip("\n") + "\n\n" + usage(steps, grid, text_encoder, recommended["sampler"]) + "\n"
    else:
        transformer.save_pretrained(tmp, safe_serialization=True)
        (tmp / LADD_META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        # the scheduler a pipeline built around this transformer should take: its default call is the student's
        # grid (exact unless a shifted uniform grid: then pass the card's sigmas) and sampler
        student_scheduler(steps, shift, recommended["sampler"]).save_pretrained(tmp / "scheduler")
    if lora.is_lora(model):
        lora.save_lora(model.transformer, tmp / "lora")
        # the teacher pipeline's own scheduler would sample another grid (SD3: shift 3): the student's beside it
        student_scheduler(steps, shift, recommended["sampler"]).save_pretrained(tmp / "lora" / "scheduler")
    (tmp / "card.md").write_text(card)
    if run_dir is not None:
        # the run as the command named it: a relative run folder stays relative to the export (no machine's path
        # in a shipped folder); check_export_target resolves it from there
        marker = {"run_dir": _reference(run_dir, out_dir), "trained_steps": trained_steps}
        (tmp / MARKER).write_text(json.dumps(marker, indent=1) + "\n")
    return replace_dir(tmp, out_dir)


def _reference(folder: str | Path, out_dir: Path) -> str:
    """A folder (VAE, teacher) as the config gave it: an absolute path stays absolute; a relative one
    (``assets/nano/vae``) becomes relative to the export folder, so a checkout moved as a whole keeps working."""
    folder = Path(folder)
    return str(folder) if folder.is_absolute() else os.path.relpath(folder.resolve(), out_dir.resolve())


def _data_line(gen: dict) -> str:
    """What a data folder holds, from its manifest's generation settings."""
    if gen["source"] == "synthetic":
        source = (f"{gen['prompts']['count']} prompts of data.prompts" if "prompts" in gen
                  else f"ShapeWorld seed {gen['seed']} captions")
        return (f"{gen['num_samples']} teacher samples of {source}, "
                f"{gen['steps']} {gen['sampler']} steps, guidance {gen['guidance']:g} (`ladd synth`)")
    return f"{gen['num_samples']} real ShapeWorld images (seed {gen['seed']}) encoded by the VAE {gen['vae']}"


def model_card(info: dict, table: str | None = None) -> str:
    """The export's card.md. ``info``: teacher, steps_trained, student_steps, seconds, command, data (the data
    manifest's generation settings), reals (the heads' reals' settings, when from their own folder), n_params,
    ema_decay, lora (a description, or None); ``table`` the evaluation table (Markdown), if any."""
    data = _data_line(info["data"])
    if info.get("reals"):
        data += f"; the discriminator's reals: {_data_line(info['reals'])}"
    lines = [
        "# LADD student", "",
        f"diffusers `SD3Transformer2DModel`, {info['n_params'] / 1e6:.2f}M parameters{_deeper(info)}, distilled from "
        f"`{info['teacher']}` by Latent Adversarial Diffusion Distillation (Sauer et al. 2024).", "",
        f"- command: `{info['command']}`",
        f"- data: {data}",
        f"- training: {info['steps_trained']} iterations, batch {info['batch_size']}, "
        f"{'EMA ' + format(info['ema_decay'], 'g') + ' weights' if info['ema_decay'] else 'raw weights (no EMA)'}",
        *([f"- LoRA student ({info['lora']}): merged into these weights; `lora/` holds the adapters alone, "
           f"for the teacher (`StableDiffusion3Pipeline.load_lora_weights`)"] if info.get("lora") else []),
        f"- wall time: {info['seconds'] / 60:.1f} min on {info['device']}",
        f"- use: {info['student_steps']} step{'s' * (info['student_steps'] > 1)}, no guidance, "
        f"{SAMPLER_WORDS[info.get('student_sampler', 'renoise')]} "
        f"(`ladd sample --model <this folder> --prompt ...`){_start(info)}{_other_grids(info)}", "",
    ]
    if table:
        lines += ["## Evaluation", "", table, ""]
    return "\n".join(lines)


def _deeper(info: dict) -> str:
    """The card's words for ``student.extra_blocks``, e.g. " (5 joint blocks more than its teacher's, inserted as
    copies: `student.extra_blocks`)"."""
    k = info.get("extra_blocks", 0)
    return f" ({k} joint block{'s' * (k > 1)} more than its teacher's, inserted as copies: `student.extra_blocks`)" \
        if k else ""


def _start(info: dict) -> str:
    """The card's words for ``student.start_time`` below 1, e.g. "; its starting noise read at time 0.9"."""
    start = info.get("student_start", 1.0)
    return "" if start == 1.0 else f"; its starting noise read at time {start:g} (`student.start_time`)"


def _other_grids(info: dict) -> str:
    """The card's words for its grids at other step counts (``student.sample_shifts``), e.g. "; at 2 steps its
    grid shifted by 3 (times 1, 0.75; ...)"."""
    grid, start = info.get("student_grid", "uniform"), info.get("student_start", 1.0)
    return "".join(f"; at {k} step{'s' * (k > 1)} its grid shifted by {v:g} (times "
                   f"{', '.join(format(float(t), '.3g') for t in student_grid(k, v, grid, start))}; "
                   f"`student.sample_shifts`)" for k, v in sorted(info.get("sample_shifts", {}).items()))


def load_run_student(run_dir: str | Path, use_ema: bool = True, extra_ema: str | None = None):
    """``(student, step, cfg, checkpoint folder)`` from the newest checkpoint of a ``ladd distill`` run folder: the
    EMA weights (``use_ema`` and EMA on) else the raw student, or with ``extra_ema`` ("DECAY:WARMUP", one of the
    run's ``train.extra_emas``) that average, as a plain (unsharded) module on CPU. A LoRA run's student is rebuilt
    from its config (teacher + adapters) before the checkpoint is loaded."""
    from ladd.config import ConfigError
    from ladd.distill.config import load_distill_config
    from ladd.methods.components.student import init_student
    from ladd.models.teacher import load_teacher
    from ladd.training.checkpoint import newest_good, restore_module
    from ladd.training.ema import EMA, ema_name

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir} is not a ladd distill run folder (no config.yaml); pass the paths.run_dir "
                          f"of a run, e.g. runs/nano-ladd")
    cfg = load_distill_config(run_dir / "config.yaml")
    name = "ema" if use_ema and cfg.train.ema_decay > 0 else "student"
    if extra_ema is not None:
        name = ema_name(*_extra_ema(extra_ema, cfg.train.extra_emas, run_dir))
    ckpt = newest_good(run_dir / "checkpoints", [name])  # damaged newer ones: skipped
    if ckpt is None:
        raise ConfigError(f"{run_dir}/checkpoints holds no complete checkpoint yet; train first (ladd distill)")
    step = json.loads((ckpt / "state.json").read_text())["step"]
    # the checkpoint's own layout (student.init's weights are the checkpoint's to replace: not read)
    model = init_student(load_teacher(cfg.paths.teacher), replace(cfg.student, init=None)).eval()
    if name != "student":
        ema = EMA(model)  # the checkpoint's own layout (shadow.* and the update counter), checked key by key
        restore_module(ema, ckpt, name)
        model = ema.shadow
    else:
        restore_module(model, ckpt, "student")
    return model, step, cfg, ckpt


def _extra_ema(spec: str, kept: list, run_dir: Path) -> tuple[float, float]:
    """``"DECAY:WARMUP"`` as one of ``kept`` (the run's ``train.extra_emas``), or a ConfigError naming them."""
    from ladd.config import ConfigError

    try:
        decay, warmup = (float(v) for v in spec.split(":"))
    except ValueError:
        decay = warmup = None
    if [decay, warmup] not in kept:
        have = ", ".join(f"{d:g}:{w:g}" for d, w in kept) or "none (train.extra_emas is empty)"
        raise ConfigError(f"--ema {spec}: {run_dir} keeps no such EMA; its train.extra_emas: {have}")
    return decay, warmup


MARKER = "ladd_export.json"  # in every export folder: which run and iteration it holds


def check_export_target(run_dir: str | Path, out_dir: str | Path, overwrite: bool = False) -> None:
    """Refuse, before anything loads, an ``--out`` that would lose data: the run folder itself or a folder holding
    it, or a non-empty folder that is not an earlier export of this run (unless ``overwrite``)."""
    from ladd.config import ConfigError

    run, out = Path(run_dir).resolve(), Path(out_dir).resolve()
    if out == run or out in run.parents:
        raise ConfigError(f"--out {out_dir}: it holds the run folder {run_dir}, whose checkpoints and logs an "
                          f"export would replace; export to a new folder, e.g. --out {Path(run_dir) / 'shipped'}")
    from ladd.runtime import check_output

    check_output(out_dir, "--out")
    if not out.is_dir() or not any(out.iterdir()) or overwrite:
        return
    marker = out / MARKER
    earlier = json.loads(marker.read_text()).get("run_dir") if marker.is_file() else None
    if earlier and (out / earlier).resolve() == run:  # relative to the export, or absolute (older exports)
        return  # an earlier export of the same run: replaced atomically
    raise ConfigError(f"--out {out_dir} is not empty and is not an export of {run_dir}; its files would be "
                      f"replaced. Use a new folder, or --overwrite to replace it")


def run_recommended(cfg) -> dict:
    """The ``ladd_recommended`` of a run configured by ``cfg`` (a DistillConfig): its method's setting."""
    from ladd.data.synth import teacher_recommended

    return method_class(cfg.method).recommended(cfg.section, cfg.student, teacher_recommended(cfg.paths.teacher))


def export_run(run_dir: str | Path, out_dir: str | Path, use_ema: bool = True, overwrite: bool = False,
               pipeline: bool = False, copy_text_encoders: bool = False, extra_ema: str | None = None) -> Path:
    """Export the newest checkpoint of a ``ladd distill`` run folder to ``out_dir`` (e.g. to ship it, or after an
    interrupted run; ``load_run_student``), with the run's card when ``run_dir/export`` holds the same training
    state, else a card built from the run's config. ``out_dir`` is checked first (``check_export_target``)."""
    from ladd.data.synth import teacher_text_encoder

    run_dir = Path(run_dir)
    check_export_target(run_dir, out_dir, overwrite)
    model, step, cfg, ckpt = load_run_student(run_dir, use_ema, extra_ema)
    old = run_dir / "export"
    shipped = use_ema and extra_ema is None  # the weights the run's own export holds
    same = shipped and (old / "card.md").is_file() and read_config(old).get("ladd_trained_steps") == step
    weights = (f"the EMA {extra_ema} (train.extra_emas)" if extra_ema else
               "the EMA" if use_ema and cfg.train.ema_decay > 0 else "the raw student weights")
    card = (old / "card.md").read_text() if same else (
        f"# LADD student\n\nExported by `ladd export {run_dir}` from {ckpt.name} ({step} iterations, {weights}) of "
        f"the run configured in {run_dir / 'config.yaml'}; not evaluated.\n")
    return export_student(model, out_dir, steps=cfg.student.steps, teacher_dir=cfg.paths.teacher,
                          vae_dir=cfg.paths.vae, trained_steps=step, card=card, shift=cfg.student.shift,
                          recommended=run_recommended(cfg), text_encoder=teacher_text_encoder(cfg.paths.teacher),
                          run_dir=run_dir, pipeline=pipeline, copy_text_encoders=copy_text_encoders)
