"""`ladd synth`: write the training latents as shards (ladd.data.shards).

Synthetic (the default, docs/method.md "Synthetic data"): for ShapeWorld sample ``i`` of ``data.seed`` a random
caption (the nano world's, ``ladd.models.registry.world``) gives the prompt and its object spec, or with
``data.prompts`` (a prompt file) prompt ``i mod N`` of the file with an empty spec; the teacher samples a latent
for it with classifier-free guidance and many steps (its recommended setting, time shift included, unless
``data.guidance/steps/sampler`` say otherwise) from noise seeded per sample, so sample ``i`` is the same at any
batch size or process count.
Real (``data.source=real``, the ablation): the ShapeWorld image itself, encoded by the VAE (posterior mean).

Resumable: shards already complete are skipped, anything else (a leftover temporary file, a truncated file) is
redone. In a multi-process run (``accelerate launch``) process ``r`` writes shards ``k`` with ``k % world == r``.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ladd import flow
from ladd.data import shards
from ladd.data.provenance import fingerprint, model_folder, upgrade_manifest
from ladd.models.io import AssetError, read_config
from ladd.models.registry import model_settings, world
from ladd.models.text_encoder import TextEmbeddings

log = logging.getLogger(__name__)


def teacher_config(model_dir: str | Path) -> dict:
    """The teacher's config.json (no weights loaded), from a ladd asset, diffusers model or pipeline folder."""
    config = read_config(model_folder(model_dir))
    if "num_layers" not in config or "in_channels" not in config:
        raise AssetError(f"{model_dir} is not a teacher (its config.json has no num_layers / in_channels: a VAE or "
                         f"evaluator folder?); give a ladd teacher folder or an SD3 pipeline folder")
    return config


def teacher_recommended(model_dir: str | Path) -> dict:
    """The teacher's recommended sampling setting (steps, guidance, sampler, shift; ladd.models.registry)."""
    return model_settings(model_dir)[0]


def teacher_text_encoder(model_dir: str | Path) -> dict:
    """The teacher's text encoder spec (``load_text_encoder(**spec)``; ladd.models.registry)."""
    return model_settings(model_dir)[1]


def prompt_file_settings(path: str | Path) -> dict:
    """What identifies the prompts of ``data.prompts``: their count and a hash of the texts (not the file's path,
    so the same prompts elsewhere are the same data)."""
    from ladd.data.prompts import read_prompt_texts

    texts = read_prompt_texts(path)
    return {"count": len(texts), "sha1": hashlib.sha1("\n".join(texts).encode()).hexdigest()[:16]}


def generation_settings(cfg) -> dict:
    """Everything that determines the data of ``cfg`` (a DistillConfig), from config.json files only (no
    weights are loaded): the manifest's ``generation`` and every shard's metadata."""
    d = cfg.data
    teacher_cfg = teacher_config(cfg.paths.teacher)
    vae_cfg = read_config(cfg.paths.vae)
    down = 2 ** (len(vae_cfg["block_out_channels"]) - 1)
    gen = {"source": d.source, "seed": d.seed, "num_samples": d.num_samples, "shard_size": d.shard_size,
           "height": d.height, "width": d.width,
           "latent_shape": [teacher_cfg["in_channels"], d.height // down, d.width // down],
           "text_encoder": teacher_text_encoder(cfg.paths.teacher)}
    if d.buckets:  # recorded only when set, so that data made before buckets existed is reused
        gen["buckets"] = [list(b) for b in d.buckets]
    if d.prompts is None:  # ShapeWorld scenes and their captions, which change with these versions
        gen["captions"] = world().data_version()
    if d.source == "real":
        return {**gen, "vae": str(Path(cfg.paths.vae).resolve()), "vae_fingerprint": fingerprint(cfg.paths.vae)}
    rec = teacher_recommended(cfg.paths.teacher)
    gen.update(teacher=str(Path(cfg.paths.teacher).resolve()), 
               teacher_fingerprint=fingerprint(cfg.paths.teacher),
               guidance=rec["guidance"] if d.guidance is None else d.guidance, steps=d.steps or rec["steps"],
               sampler=d.sampler or rec["sampler"])
    # recorded only when they differ from the nano world's, so that data made before these keys existed is reused
    if rec["shift"] != 1.0:
        gen["shift"] = rec["shift"]
    if d.prompts is not None:
        gen["prompts"] = prompt_file_settings(d.prompts)
    if d.precision != "fp32":
        gen["precision"] = d.precision
    return gen


def check_data(cfg, gen: dict) -> None:
    """Raise ``DataError`` if ``paths.data`` holds data made with other settings or another model than ``gen``
    (a manifest of an older ladd is first brought to the fingerprint, ladd.data.provenance)."""
    upgrade_manifest(cfg.paths.data, {"teacher_fingerprint": cfg.paths.teacher} if cfg.data.source != "real"
                     else {"vae_fingerprint": cfg.paths.vae})
    shards.check_manifest(cfg.paths.data, gen)


def sample_record(seed: int, index: int, prompts: list[str] | None = None) -> dict:
    """``{"index", "prompt", "spec", "seed"}`` of sample ``index``: with ``prompts``, prompt ``index mod N`` and
    an empty spec; else the scene of ``shapeworld.sample(seed, index)`` (without rendering it) and a random caption
    of it. The noise seed depends on ``(seed, index)`` only."""
    if prompts:
        return {"index": int(index), "prompt": prompts[index % len(prompts)], "spec": [],
                "seed": shards.sample_seed(seed, index, 0x5EED)}
    text, spec = world().caption_of(seed, index)
    return {"index": int(index), "prompt": text, "spec": spec, "seed": shards.sample_seed(seed, index, 0x5EED)}


@torch.no_grad()
def teacher_latents(teacher, records: list[dict], cond: TextEmbeddings, uncond: TextEmbeddings, gen: dict,
                    batch_size: int, device) -> torch.Tensor:
    """Teacher samples ``[n, C, h, w]`` for ``records`` with CFG (``gen``, the shard's generation settings:
    guidance, steps, sampler, shift, latent shape)."""
    from ladd.sampling import get_sampler

    sample = get_sampler(gen["sampler"])
    times = flow.sampling_times(gen["sampler"], gen["steps"], gen.get("shift", 1.0))
    out = []
    for s in range(0, len(records), batch_size):
        gens = [torch.Generator().manual_seed(r["seed"]) for r in records[s:s + batch_size]]
        # the first draw of each sample's generator (ladd.data.shards.teacher_noise repeats it); the sampler
        # goes on drawing from the same generators
        noise = torch.stack([torch.randn(gen["latent_shape"], generator=g) for g in gens]).to(device)
        c = cond[s:s + batch_size].to(device)
        u = TextEmbeddings(uncond.tokens.expand(len(gens), -1, -1), uncond.pooled.expand(len(gens), -1)).to(device)
        out.append(sample(teacher, noise, times, c, u, gen["guidance"], gens).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def real_latents(vae, records: list[dict], gen: dict, batch_size: int, device) -> torch.Tensor:
    """VAE latents (posterior means) ``[n, C, h, w]`` of the ShapeWorld images of ``records``."""
    from ladd.images import to_tensor

    out = []
    for s in range(0, len(records), batch_size):
        images = np.stack([world().real_image(gen["seed"], r["index"], gen["height"], gen["width"])
                           for r in records[s:s + batch_size]])
        out.append(vae.encode(to_tensor(images).to(device)).float().cpu())
    return torch.cat(out)


def load_models(cfg, gen: dict, text_encoder=None, device="cpu"):
    """(latent maker ``fn(records, cond, uncond) -> latents``, text encoder), loading only what ``gen`` needs."""
    from ladd.models import text_encoder as te

    if text_encoder is None:
        text_encoder = te.load_text_encoder(**gen["text_encoder"], device=device, cache_dir=cfg.paths.text_cache)
    bs = cfg.data.batch_size
    if gen["source"] == "real":
        from ladd.models.vae import load_vae

        vae = load_vae(cfg.paths.vae).to(device)
        return lambda records, cond, uncond, shard_gen: real_latents(vae, records, shard_gen, bs, device), text_encoder
    from ladd.models.teacher import load_teacher

    teacher = load_teacher(cfg.paths.teacher, device=device).eval().requires_grad_(False)
    if gen.get("precision") == "bf16":  # bf16 weights, matmuls under autocast; the Euler updates stay in fp32
        teacher = teacher.to(torch.bfloat16)

    def make(records, cond, uncond, shard_gen):
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=gen.get("precision") == "bf16"):
            return teacher_latents(teacher, records, cond, uncond, shard_gen, bs, device)
    return make, text_encoder


def write_shards(data_dir: Path, gen: dict, todo: list[int], make_latents, text_encoder,
                 show_progress: bool = True, prompts: list[str] | None = None) -> list[int]:
    """Write shards ``todo``: records (of ``prompts`` when given, see ``sample_record``), text embeddings (float16)
    and latents; returns the shards written."""
    n, size = gen["num_samples"], gen["shard_size"]
    uncond = text_encoder.encode([""])
    bar = tqdm(total=sum(len(shards.shard_range(k, size, n)) for k in todo), desc=f"synth {gen['source']}",
               disable=not show_progress, dynamic_ncols=True, mininterval=2)
    for k in todo:
        records = [sample_record(gen["seed"], i, prompts) for i in shards.shard_range(k, size, n)]
        cond = text_encoder.encode([r["prompt"] for r in records])
        shard_gen = shards.shard_generation(gen, k)  # its aspect bucket's size
        latents = make_latents(records, cond, uncond, shard_gen)
        if list(latents.shape[1:]) != shard_gen["latent_shape"]:
            raise ValueError(f"latents {tuple(latents.shape[1:])} but the config expects {shard_gen['latent_shape']}:"
                             f" the teacher's in_channels and the VAE disagree")
        own = shards.text_rows(gen, shards.shard_range(k, size, n))  # text states once per prompt
        shards.write_shard(shards.shard_path(data_dir, k), {"latents": latents, "tokens": cond.tokens[:own].half(),
                                                           "pooled": cond.pooled[:own].half()}, records, gen)
        log.info("wrote %s (%d samples)", shards.shard_path(data_dir, k), len(records))
        bar.update(len(records))
    bar.close()
    return todo


def synthesize(cfg, text_encoder=None, rank: int | None = None, world_size: int | None = None,
               device=None) -> list[int]:
    """Make the missing shards of this process for ``cfg`` (a DistillConfig: ``data`` and ``paths``); returns
    the shards written. ``rank``/``world_size``/``device`` default to accelerate's process state (its device: the
    process's GPU when there is one). Raises ``DataError`` before loading any model if ``paths.data`` holds data
    made with other settings. Does not wait for the other processes (``ladd.distill.run`` does)."""
    from ladd.runtime import process_state

    state = process_state()
    if rank is None or world_size is None:
        rank, world_size = state.process_index, state.num_processes
    data_dir = Path(cfg.paths.data)
    gen = generation_settings(cfg)
    check_data(cfg, gen)
    own = shards.owned_shards(cfg.data.num_shards, rank, world_size)
    for k in own:  # leftovers of a killed run: never read, always redone
        shards.temp_path(shards.shard_path(data_dir, k)).unlink(missing_ok=True)
    todo = shards.missing_shards(data_dir, gen["num_samples"], gen["shard_size"], own)
    if not todo:
        shards.write_manifest(data_dir, gen)
        log.info("%s: all %d shards of process %d are complete", data_dir, len(own), rank)
        return []
    log.info("%s: writing %d of %d shards (process %d of %d)", data_dir, len(todo), len(own), rank, world_size)
    make_latents, encoder = load_models(cfg, gen, text_encoder, device or state.device)
    # the manifest only once the models loaded: a first run that fails there (a damaged teacher) leaves nothing
    # that would refuse the corrected command
    shards.write_manifest(data_dir, gen)
    prompts = None
    if cfg.data.prompts is not None:
        from ladd.data.prompts import read_prompt_texts

        prompts = read_prompt_texts(cfg.data.prompts)
    return write_shards(data_dir, gen, todo, make_latents, encoder, show_progress=rank == 0, prompts=prompts)
