"""`ladd distill`: the main job. Data (made if missing), training, export, evaluation against the teacher.

    cfg = load_distill_config(preset, overrides)      everything checked before any model is loaded
    synthesize(cfg)                                   ladd.data.synth: skips complete shards
    train(cfg, method, data, run_dir)                 ladd.training.trainer: resumes from run_dir/checkpoints
    export_student(...)                               ladd.distill.export: run_dir/export
    evaluate_models(...)                              the student at 1, 2, 4 steps (no guidance), the teacher at
                                                      4 steps and at its recommended many-step CFG setting
    write_comparison(...)                             run_dir/comparison.{json,md,png}

Re-running the same command continues where it stopped: complete shards, checkpoints and evaluations whose
settings and model did not change are reused. Several processes (``accelerate launch``) share the data and the
training; export and evaluation run on the main process.
"""

from __future__ import annotations

import logging
import platform
from dataclasses import replace
from pathlib import Path

import torch

from ladd import flow
from ladd.config import ConfigError
from ladd.data import shards
from ladd.data.shards import sample_seed
from ladd.data.provenance import weights_file
from ladd.data.synth import (check_data, generation_settings, synthesize, teacher_config,
                             teacher_text_encoder)
from ladd.distill.compare import evaluate_models, write_comparison
from ladd.distill.config import FSDP_EMA, DistillConfig, load_distill_config
from ladd.methods import method_class
from ladd.models.io import AssetError, read_config

log = logging.getLogger(__name__)
DEFAULT_PRESET = "configs/nano.yaml"
# Fixed prompts of the samples/<step>.png grids: one per evaluation category and then some.
PREVIEW_PROMPTS = ["a red circle", "two blue squares", "a green triangle in the top left",
                   "a yellow cross at the bottom", "a small orange circle and a large purple square", "three triangles",
                   "a blue cross on the right", "a large red square in the center"]


def preview_prompts(cfg: DistillConfig) -> list[str]:
    """The prompts of the samples/<step>.png grids: the first 8 of ``data.prompts`` when the data has its own
    prompts (an SD3 teacher), else fixed ShapeWorld captions."""
    if cfg.data.prompts is None:
        return PREVIEW_PROMPTS
    from ladd.data.prompts import read_prompt_texts

    return read_prompt_texts(cfg.data.prompts)[:len(PREVIEW_PROMPTS)]


def check_model_paths(cfg: DistillConfig) -> None:
    """The teacher and VAE folders exist; an SD3 pipeline teacher folder is complete and comes with a prompt file
    (its data cannot be ShapeWorld captions) and without the nano evaluation (its evaluator reads ShapeWorld)."""
    from ladd.models import sd3

    for name in ("teacher", "vae"):
        path = Path(getattr(cfg.paths, name))
        if not path.is_dir():
            example = (f"a ladd model folder or a local diffusers StableDiffusion3Pipeline folder, e.g. "
                       f"huggingface-cli download stabilityai/stable-diffusion-3-medium-diffusers --local-dir {path}"
                       if name == "teacher" else "a ladd VAE folder, or D/vae of an SD3 pipeline folder D")
            raise ConfigError(f"paths.{name}: {path} does not exist; set paths.{name} to {example}")
    teacher = Path(cfg.paths.teacher)
    if sd3.is_pipeline_folder(teacher.parent) and not sd3.is_pipeline_folder(teacher):
        raise ConfigError(f"paths.teacher: {teacher} is the {teacher.name}/ part of the pipeline folder "
                          f"{teacher.parent}; set paths.teacher={teacher.parent} (ladd reads the pipeline's text "
                          f"encoders, scheduler and VAE from it)")
    check_vae_matches_teacher(cfg)
    if not sd3.is_pipeline_folder(teacher):
        return
    sd3.check_sd3_folder(cfg.paths.teacher)
    if cfg.data.source == "synthetic" and cfg.data.prompts is None:
        raise ConfigError(f"data.prompts: the SD3 teacher {cfg.paths.teacher} needs a prompt file for its "
                          f"synthetic data (ShapeWorld captions are for the nano world); set data.prompts=FILE "
                          f"(.txt, one prompt per line, or .jsonl)")
    if cfg.eval.enabled or cfg.eval.val_every:
        raise ConfigError("eval.enabled / eval.val_every: the nano evaluator only reads ShapeWorld images; set "
                          "eval.enabled=false (or --no-eval) and eval.val_every=0 for an SD3 teacher")


def check_student_init(init: str, teacher: str, teacher_cfg: dict) -> None:
    """``student.init`` is a model folder of the teacher's architecture (the config.json keys both hold but the
    ``_`` and ``ladd_`` ones: another diffusers version may write keys the other lacks), read without its
    weights; the weights' names and shapes are checked when they load."""
    if not Path(init).is_dir():
        raise ConfigError(f"student.init: {init} does not exist; give the folder of a model distilled from "
                          f"{teacher} (e.g. assets/nano/student, or a run's export), or student.init=null")
    try:
        own = teacher_config(init)
    except AssetError as e:
        raise ConfigError(f"student.init: {e}") from e
    keys = sorted(k for k in own.keys() & teacher_cfg.keys() if not k.startswith(("_", "ladd_")))
    diff = [f"{k} {own.get(k)!r} vs {teacher_cfg.get(k)!r}" for k in keys if own.get(k) != teacher_cfg.get(k)]
    if diff:
        raise ConfigError(f"student.init: {init} is not a model of the teacher's architecture ({', '.join(diff[:4])}"
                          f"); give a model distilled from {teacher}, or student.init=null")


def check_vae_matches_teacher(cfg: DistillConfig) -> None:
    """``paths.vae`` has the latent space of the teacher's own VAE (the one its folder names or holds), when that
    one is known: same channels, scaling and shift factors (a 16-channel VAE of another model family passes a
    channel check and would train the student on latents the teacher never saw)."""
    from ladd.models.registry import model_settings

    try:
        own = Path(model_settings(cfg.paths.teacher)[2])
    except AssetError:  # an incomplete teacher folder: reported by the checks that read it
        return
    given = Path(cfg.paths.vae)
    if not (own / "config.json").is_file() or own.resolve() == given.resolve() or not (given / "config.json").is_file():
        return
    keys = ("latent_channels", "scaling_factor", "shift_factor")
    a, b = read_config(own), read_config(given)
    diff = [f"{k} {b.get(k)} vs {a.get(k)}" for k in keys if b.get(k) != a.get(k)]
    if diff:
        raise ConfigError(f"paths.vae: {given} is not the latent space of the teacher's VAE {own} "
                          f"({', '.join(diff)}); set paths.vae={own}")


def check_config(cfg: DistillConfig, num_processes: int = 1, trains: bool = True) -> dict:
    """Every check that needs no model weights: the config itself (done while parsing), the batch split over
    processes, the tapped blocks and LoRA targets against the teacher's config.json, teacher vs VAE latent
    channels, existing data made with other settings, the evaluation prompts and evaluator. The model folders
    first (``check_model_paths``). ``trains=False`` (``ladd synth`` of real images, e.g. the heads' reals, even
    into the folder the preset's ``paths.reals`` names) skips what only training on these data asks of them.
    Returns the data's generation settings."""
    cfg.train.micro_batch(num_processes)
    from ladd.runtime import check_output, fsdp_launch

    check_output(cfg.paths.run_dir, "paths.run_dir")
    check_output(cfg.paths.data, "paths.data")
    if fsdp_launch() and cfg.train.keeps_ema():
        raise ConfigError(FSDP_EMA)
    check_model_paths(cfg)
    teacher_cfg = teacher_config(cfg.paths.teacher)
    method_class(cfg.method).check(cfg.section, teacher_cfg)
    if cfg.student.init is not None:
        check_student_init(cfg.student.init, cfg.paths.teacher, teacher_cfg)
    if cfg.student.extra_blocks:
        from ladd.models.grow import check_growth

        try:
            check_growth(teacher_cfg, cfg.student.extra_blocks)
        except ValueError as e:
            raise ConfigError(str(e)) from e
    if cfg.student.frozen:
        from ladd.methods.components.student import frozen_names
        from ladd.models.teacher import meta_transformer

        frozen_names(meta_transformer(teacher_cfg), cfg.student.frozen)
    if cfg.student.lora_rank > 0:
        from ladd.models.lora import check_targets_in_config

        check_targets_in_config(teacher_cfg, cfg.student.lora_targets)
    vae_cfg = read_config(cfg.paths.vae)
    if vae_cfg.get("latent_channels") != teacher_cfg.get("in_channels"):
        raise ConfigError(f"paths.vae: the VAE at {cfg.paths.vae} makes {vae_cfg.get('latent_channels')}-channel "
                          f"latents but the teacher at {cfg.paths.teacher} takes {teacher_cfg.get('in_channels')}; "
                          f"use the VAE the teacher was trained with")
    gen = generation_settings(cfg)
    check_data(cfg, gen)
    if trains and method_class(cfg.method).needs_pairs(cfg.section) and not shards.ShardDataset.pairs_known(gen):
        raise ConfigError(f"the regression terms (ladd.loss.regression_weight, feature_weight) need teacher "
                          f"samples made from a known noise by a deterministic sampler; the data are "
                          f"{gen['source']} with sampler {gen.get('sampler')!r}: use data.source=synthetic "
                          f"data.sampler=euler (or set ladd.loss.regression_weight=0 ladd.loss.feature_weight=0)" + (
                              ". Real images for the heads go in their own folder, paths.reals, which `ladd "
                              "distill` makes itself (or `ladd synth --config configs/nano.yaml --source real "
                              "paths.data=<that folder>`)" if gen["source"] == "real" else ""))
    if trains and cfg.paths.reals is not None:
        check_reals_config(cfg, gen)
    if cfg.eval.enabled or cfg.eval.val_every:
        from ladd.models.registry import resolve, world

        for path in [cfg.eval.prompts] * cfg.eval.enabled + [cfg.eval.val_prompts] * bool(cfg.eval.val_every):
            world().read_prompts(path)
        resolve(cfg.eval.evaluator)
    return gen


def reals_to_make(cfg: DistillConfig) -> DistillConfig | None:
    """The config that makes the heads' reals of ``paths.reals`` when that folder holds no complete data and
    ``ladd distill`` can make them: real ShapeWorld images of the training data's scenes (``data.seed``,
    ``data.num_samples``) through the VAE, as ``ladd synth data.source=real`` makes them. None when the folder is
    complete, no reals are asked for, or they cannot be made here (a prompt file's data: the user's own images)."""
    if cfg.paths.reals is None or cfg.data.prompts is not None:
        return None
    try:
        shards.complete_generation(cfg.paths.reals)
        return None
    except shards.DataError:
        return replace(cfg, data=replace(cfg.data, source="real"), paths=replace(cfg.paths, data=cfg.paths.reals))


def check_reals_config(cfg: DistillConfig, gen: dict) -> None:
    """``paths.reals`` (the config keeps it only for a method whose discriminator takes reals) goes with training
    data of one latent size and a folder other than ``paths.data`` that holds complete data in the training data's
    latent space (ladd.data.reals.check_reals), or that ``ladd distill`` can make (``reals_to_make``; a partial
    folder made with other settings is refused)."""
    from ladd.data.reals import check_reals
    from ladd.runtime import check_output

    if Path(cfg.paths.reals).resolve() == Path(cfg.paths.data).resolve():
        raise ConfigError(f"paths.reals: {cfg.paths.reals} is paths.data, whose latents already are the heads' "
                          f"reals; unset paths.reals (paths.reals=null) or point it at another folder")
    if cfg.data.buckets:
        raise ConfigError("paths.reals takes training data of one latent size; data.buckets makes several: unset "
                          "one of them")
    make = reals_to_make(cfg)
    if make is None:
        check_reals(cfg.paths.reals, gen, cfg.paths.vae)
    else:
        check_output(cfg.paths.reals, "paths.reals")
        check_data(make, generation_settings(make))


def build_method(cfg: DistillConfig, teacher=None, uncond=None):
    """The selected method (``cfg.method``) on ``teacher`` (default: loaded from ``paths.teacher``); ``uncond``
    is the empty prompt's embedding, for methods that ask for it (``needs_uncond``)."""
    if teacher is None:
        from ladd.models.teacher import load_teacher

        teacher = load_teacher(cfg.paths.teacher)
    cls = method_class(cfg.method)
    vae = None
    if cls.needs_vae(cfg.section):  # the method's own instance: the trainer places it (device, dtype)
        from ladd.models.vae import load_vae

        vae = load_vae(cfg.paths.vae)
    return cls(cfg.section, cfg.student, teacher, cfg.train.seed, uncond, vae)


def distill(preset: str | Path | None = DEFAULT_PRESET, overrides=(), text_encoder=None,
            command: str | None = None) -> dict:
    """Run the whole job for ``preset`` + dotted ``overrides``; returns a summary (run folder, steps, rows of the
    comparison table). ``text_encoder`` (``encode(prompts) -> TextEmbeddings``) replaces the teacher's own."""
    from ladd.runtime import folder_lock, log_to_file, process_state

    cfg = load_distill_config(preset, overrides)
    state = process_state()
    gen = check_config(cfg, state.num_processes)
    run_dir = Path(cfg.paths.run_dir)
    command = command or " ".join(["ladd distill", f"--config {preset}" if preset else "", *overrides]).strip()
    main = state.is_main_process
    own_data = Path(cfg.paths.data).resolve() != run_dir.resolve()
    makes_reals = reals_to_make(cfg) is not None
    with folder_lock(run_dir, "a ladd distill run", main), \
            folder_lock(cfg.paths.data, "ladd synth data", main and own_data), \
            folder_lock(cfg.paths.reals, "ladd synth data", main and makes_reals), \
            log_to_file(run_dir / "log.txt", main):
        log.info("%s -> %s", command, run_dir)
        return _run(cfg, gen, run_dir, state, text_encoder, command)


def _run(cfg: DistillConfig, gen: dict, run_dir: Path, state, text_encoder, command: str) -> dict:
    from ladd.models.teacher import load_teacher
    from ladd.models.vae import load_vae
    from ladd.training.trainer import train

    trains = method_class(cfg.method).trains  # a method that trains nothing needs no data and no previews
    wants_uncond = method_class(cfg.method).needs_uncond(cfg.section)
    missing = trains and shards.missing_shards(cfg.paths.data, cfg.data.num_samples, cfg.data.shard_size)
    reals = reals_to_make(cfg) if trains else None
    previews = trains and cfg.train.sample_every
    if text_encoder is None and (missing or reals or previews or wants_uncond or (trains and cfg.eval.val_every)):
        from ladd.models import text_encoder as te

        text_encoder = te.load_text_encoder(**gen["text_encoder"], device=state.device,
                                            cache_dir=cfg.paths.text_cache)
    if missing:
        synthesize(cfg, text_encoder, state.process_index, state.num_processes)
    if reals is not None:  # the heads' reals, when paths.reals names a folder still to be made
        synthesize(reals, text_encoder, state.process_index, state.num_processes)
    state.wait_for_everyone()
    pairs = method_class(cfg.method).needs_pairs(cfg.section)
    data = shards.load_data(cfg.paths.data, pairs, cfg.data.stream) if trains else None
    if trains and cfg.paths.reals is not None:  # the heads' reals from their own folder
        from ladd.data.reals import WithReals

        data = WithReals(data, shards.load_data(cfg.paths.reals, stream=cfg.data.stream))
    vae = load_vae(cfg.paths.vae).to(state.device)  # previews and validation decode where the student samples
    preview = text_encoder.encode(preview_prompts(cfg)) if previews else None
    uncond = text_encoder.encode([""]) if wants_uncond else None
    if hasattr(text_encoder, "release"):  # SD3's text encoders (T5-XXL: ~10 GB) leave the GPU before training
        text_encoder.release()
    from ladd.runtime import loads_on_rank0_only

    # an FSDP launch with fsdp_cpu_ram_efficient_loading: the first process reads the weights, FSDP copies them out
    method = build_method(cfg, load_teacher(cfg.paths.teacher, weights=not loads_on_rank0_only(state)), uncond)
    hooks = []
    if preview is not None:
        hooks.append((cfg.train.sample_every, lambda model, step: save_preview(
            model, vae, preview, cfg.student.steps, data.latent_shape, run_dir / "samples" / f"{step:06d}.png",
            shift=cfg.student.shift, sampler=cfg.student.sampler, grid=cfg.student.grid,
            start=cfg.student.start_time)))
    if trains and cfg.eval.val_every:
        from ladd.distill.validate import Validator

        hooks.append((cfg.eval.val_every, Validator(cfg, run_dir, vae, text_encoder)))
    result = train(cfg, method, data, run_dir, hooks)
    summary = {"run_dir": str(run_dir), "steps": result.step, "seconds": result.seconds, "rows": []}
    if state.is_main_process:
        if result.sharded:  # FSDP: each process holds a shard; the final checkpoint holds the gathered weights
            from ladd.distill.export import load_run_student

            result = replace(result, export_model=load_run_student(run_dir, use_ema=False)[0], sharded=False)
        if cfg.eval.select_best:
            from ladd.distill.validate import load_best

            selected = load_best(run_dir, result.export_model)
            log.info("exporting the validated state of iteration %s (eval.select_best)", selected)
        info = _card_info(cfg, gen, result, command)
        from ladd.distill.export import run_recommended

        export_dir = _export(cfg, run_dir, result, info, run_recommended(cfg))
        if cfg.eval.enabled:
            from ladd.distill.export import model_card

            rows = evaluate_models(cfg, run_dir, export_dir)
            table = write_comparison(run_dir, rows, cfg.eval.grid_prompts)
            (export_dir / "card.md").write_text(model_card(info, table))
            print(table)
            print(f"wrote {run_dir}/comparison.md, comparison.json, comparison.png and {export_dir}")
            summary["rows"] = rows
        summary["export"] = str(export_dir)
    # no barrier here: the other processes would sit in one through the whole evaluation and could hit the
    # collective timeout (NCCL's is 10 min); they have nothing left to do
    return summary


def _card_info(cfg: DistillConfig, gen: dict, result, command: str) -> dict:
    model = result.export_model
    device = next(model.parameters()).device
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"{platform.machine()} CPU, {torch.get_num_threads()} threads")
    return {"teacher": cfg.paths.teacher, "steps_trained": result.step, "student_steps": cfg.student.steps,
            "student_sampler": cfg.student.sampler, "sample_shifts": cfg.student.sample_shifts,
            "student_grid": cfg.student.grid, "student_start": cfg.student.start_time,
            "extra_blocks": cfg.student.extra_blocks, "seconds": result.seconds, "command": command, "data": gen, "batch_size": cfg.train.batch_size,
            "n_params": sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n), "method": cfg.method,
            "ema_decay": cfg.train.ema_decay, "device": where, "lora": _lora_info(cfg.student),
            "reals": shards.complete_generation(cfg.paths.reals) if cfg.paths.reals else None}


def _lora_info(s) -> str | None:
    return f"rank {s.lora_rank}, alpha {s.lora_alpha or s.lora_rank:g} on {s.lora_targets}" if s.lora_rank else None


def _export(cfg: DistillConfig, run_dir: Path, result, info: dict, recommended: dict) -> Path:
    """Export unless ``run_dir/export`` already holds this training state (keeps its evaluations reusable)."""
    from ladd.distill.export import export_student, model_card

    from ladd.training.checkpoint import latest_checkpoint

    out, ckpt = run_dir / "export", latest_checkpoint(run_dir / "checkpoints")
    # the newest input of the export: the checkpoint, or for a method that trains nothing the teacher itself
    source = ckpt / "state.json" if ckpt is not None else weights_file(cfg.paths.teacher)
    if (out / "config.json").is_file() and read_config(out).get("ladd_trained_steps") == result.step \
            and (ckpt is not None or result.step == 0) and read_config(out).get("ladd_recommended") == recommended \
            and (out / "config.json").stat().st_mtime >= source.stat().st_mtime:
        log.info("%s already holds the student after %d iterations", out, result.step)
        return out
    out = export_student(result.export_model, run_dir / "export", steps=cfg.student.steps,
                         teacher_dir=cfg.paths.teacher, vae_dir=cfg.paths.vae, trained_steps=result.step,
                         text_encoder=teacher_text_encoder(cfg.paths.teacher), card=model_card(info),
                         shift=cfg.student.shift, recommended=recommended, run_dir=run_dir)
    log.info("exported the student to %s", out)
    return out


@torch.no_grad()
def save_preview(model, vae, cond, steps: int, latent_shape, path: Path, seed: int = 0, shift: float = 1.0,
                 sampler: str = "renoise", grid: str = "uniform", start: float = 1.0) -> Path:
    """The student's samples of fixed prompts ``cond`` (its ``sampler`` over its ``steps``-step ``grid`` shifted
    by ``shift``, no guidance, fixed noise) decoded by ``vae``, as one row of a PNG grid."""
    from ladd.images import save_grid, to_uint8
    from ladd.sampling import get_sampler

    device = next(model.parameters()).device
    gens = [torch.Generator().manual_seed(sample_seed(seed, i, 0x9E1D)) for i in range(len(cond))]
    noise = torch.stack([torch.randn(tuple(latent_shape), generator=g) for g in gens]).to(device)
    times = flow.sampling_times(sampler, steps, shift, grid, start)
    x0 = get_sampler(sampler)(model, noise, times, cond.to(device), generator=gens)
    vae_device = next(vae.parameters()).device
    return save_grid(to_uint8(vae.decode(x0.to(vae_device))), path, ncols=len(cond))
