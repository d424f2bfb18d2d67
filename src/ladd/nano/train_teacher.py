"""`ladd nano train-teacher`: the nano SD3-architecture teacher, trained with rectified flow.

``x_t = (1 - t) x0 + t eps``, target ``v = eps - x0``, ``t ~ LogitNormal(0, 1)`` (SD3), captions dropped to the
empty prompt 10% of the time so classifier-free guidance works. The step is kept lean: the pool's latents and its
captions' embeddings are computed once and cached; each step is one forward and backward of the transformer.
"""

from __future__ import annotations

import hashlib
import logging
import platform
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ladd import images as images_lib
from ladd import flow
from ladd.config import ConfigError
from ladd.models.io import save_model
from ladd.models.teacher import NANO_TEACHER_CONFIG, build_nano_teacher, load_teacher
from ladd.models.text_encoder import TextEmbeddings, load_text_encoder
from ladd.models.vae import VAE, load_vae
from ladd.nano import recipe
from ladd.nano.pool import load_pool, pool_key
from ladd.nano.prompts import CAPTION_VERSION, caption, caption_words
from ladd.training.ema import EMA

log = logging.getLogger(__name__)


@dataclass
class TeacherTrainConfig:
    out: str = "assets/nano/teacher"
    vae: str = "assets/nano/vae"
    run_dir: str = "runs/nano-teacher"
    cache_dir: str = "cache/nano"
    pool_seed: int = 1
    pool_size: int = 60000
    captions_per_image: int = 1
    captions: int = CAPTION_VERSION  # which captions (ladd.nano.prompts.CAPTION_PHRASINGS); 4: reading order
    max_length: int = 40
    steps: int = 12000
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 200
    decay_start: float = 0.7  # the lr decays linearly to 0.1x from this fraction of the steps to the end
    caption_dropout: float = 0.1
    two_shape_weight: float = 1.0  # sampling weight of captions naming >= 2 different shapes (1: uniform)
    shapes_only_weight: float | None = None  # the weight of those of them that name no colour (None: as above)
    ema_decay: float = 0.999
    sample_every: int = 2000
    recommended_steps: int = 50
    recommended_guidance: float = 3.0  # chosen by `benchmarks/teacher_steps.py --steps 50 --guidance 2 3 4 5`
    minutes: float | None = None
    seed: int = 0
    init: str | None = None  # a trained teacher folder: start from its weights (fresh optimizer), e.g. to train on


@torch.no_grad()
def encode_pool(vae: VAE, images: np.ndarray, batch: int = 500) -> torch.Tensor:
    """Model latents (posterior means, scaled) of uint8 images ``[N, H, W, 3]``."""
    chunks = tqdm(range(0, len(images), batch), desc="encoding images", unit="chunk", mininterval=5)
    return torch.cat([vae.encode(images_lib.to_tensor(images[i:i + batch])) for i in chunks])


def encoder_hash(vae: VAE) -> str:
    """Identifies the latent space: encoder weights and scaling/shift factors (a new decoder keeps the cache)."""
    h = hashlib.sha1(f"{vae.model.config.scaling_factor} {vae.model.config.shift_factor}".encode())
    for name, t in vae.model.state_dict().items():
        if name.startswith(("encoder.", "quant_conv.")):
            h.update(name.encode())
            h.update(t.numpy().tobytes())
    return h.hexdigest()[:10]


def pool_captions(cfg: TeacherTrainConfig) -> tuple[list[str], list[list[dict]]]:
    """K random captions per pool image (caption k of image i at row k * N + i) and the spec each one states.
    Deterministic in the config, so the specs can be recomputed (seconds) for a cached set of embeddings."""
    _, scenes = load_pool(cfg.cache_dir, cfg.pool_seed, cfg.pool_size)
    rng = np.random.default_rng([cfg.pool_seed, 77])
    rows = [caption(s, rng, cfg.captions) for _ in range(cfg.captions_per_image) for s in scenes]
    return [text for text, _ in rows], [stated for _, stated in rows]


def row_weights(stated: list[list[dict]], two_shape_weight: float,
                shapes_only_weight: float | None = None) -> torch.Tensor:
    """Sampling weight of each caption row: ``two_shape_weight`` for captions naming two or more different shapes,
    ``shapes_only_weight`` (default: the same) for those of them that name no colour, 1 for the rest. The teacher
    binds two shapes given by shape words alone worst ('a circle and a triangle' drawn as two triangles: run 6
    reached 0.34 on two_objects and >= 0.62 elsewhere); 37% of captions name two shapes, 10% with no colour."""
    two = torch.tensor([len({o["shape"] for o in s if o.get("shape")}) >= 2 for s in stated])
    bare = torch.tensor([not any(o.get("color") for o in s) for s in stated])
    weights = torch.where(two, two_shape_weight, 1.0).double()
    if shapes_only_weight is not None:
        weights[two & bare] = shapes_only_weight
    return weights


def caption_data(cfg: TeacherTrainConfig, rows: tuple[list[str], list[list[dict]]] | None = None):
    """(embeddings of ``pool_captions``; empty-prompt embedding), cached in ``cache_dir``. Independent of the VAE,
    so it can be made while the VAE trains. ``rows``: ``pool_captions(cfg)`` if the caller already made them."""
    key = f"c{cfg.captions}-{pool_key(cfg.pool_seed, cfg.pool_size)}-k{cfg.captions_per_image}-L{cfg.max_length}"
    path = Path(cfg.cache_dir) / f"captions-{key}.safetensors"
    if path.exists():
        d = load_file(path)
        return TextEmbeddings(d["tokens"], d["pooled"]), TextEmbeddings(d["u_tokens"], d["u_pooled"])
    texts, _ = rows or pool_captions(cfg)
    log.info("encoding %d captions with the text encoder", len(texts))
    encoder = load_text_encoder("minilm", cfg.max_length)
    parts = []
    for i in tqdm(range(0, len(texts), 4096), desc="encoding captions", unit="chunk", mininterval=5):
        parts.append(encoder.encode(texts[i:i + 4096]).to(torch.float16))
        encoder._cache.clear()
    emb, empty = TextEmbeddings.cat(parts), encoder.encode([""])
    _save(path, {"tokens": emb.tokens, "pooled": emb.pooled, "u_tokens": empty.tokens, "u_pooled": empty.pooled})
    return emb, empty


def latent_data(cfg: TeacherTrainConfig, vae: VAE) -> torch.Tensor:
    """Model latents of the pool, cached in ``cache_dir`` per latent space (encoder weights and factors)."""
    path = Path(cfg.cache_dir) / f"latents-{pool_key(cfg.pool_seed, cfg.pool_size)}-vae{encoder_hash(vae)}.safetensors"
    if path.exists():
        return load_file(path)["latents"]
    images, _ = load_pool(cfg.cache_dir, cfg.pool_seed, cfg.pool_size)
    log.info("encoding %d images with the VAE", len(images))
    latents = encode_pool(vae, images)
    _save(path, {"latents": latents})
    return latents


def _save(path: Path, tensors: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, tmp)
    tmp.replace(path)


def rf_loss(model, x0: torch.Tensor, cond: TextEmbeddings, generator: torch.Generator) -> torch.Tensor:
    """Rectified-flow loss ``|| v(x_t, t) - (eps - x0) ||^2`` with ``t ~ LogitNormal(0, 1)``."""
    t = flow.logit_normal(x0.shape[0], generator=generator)
    eps = torch.randn(x0.shape, generator=generator)
    v = model.velocity(flow.add_noise(x0, eps, t), t, cond)
    return (v.float() - flow.velocity(x0, eps)).pow(2).mean()


def lr_factor(i: int, steps: int, warmup: int, decay_start: float) -> float:
    """The lr multiplier at step ``i``: linear warm-up over ``warmup`` steps, flat, then linear decay to 0.1 from
    ``decay_start * steps`` to the end. The teacher's loss is noise-limited at a constant lr (it stayed ~0.25 for
    6,000 steps at 1e-3 and fell in the decay), so a long decay is where warm-started runs gain."""
    decay_from = int(decay_start * steps)
    warm = min(1.0, (i + 1) / max(1, warmup))
    frac = min(1.0, max(0.0, (i - decay_from) / max(1, steps - decay_from)))
    return warm * (1.0 - 0.9 * frac)


# always written: what a reader needs to rerun a run even after a default changed (captions did, twice)
_ALWAYS = ("steps", "batch_size", "lr", "decay_start", "captions_per_image", "captions", "two_shape_weight")
_WHERE = ("out", "run_dir", "cache_dir", "sample_every", "minutes")  # where outputs go: not the recipe


def command_flags(cfg: TeacherTrainConfig) -> str:
    """The flags that rerun ``cfg``: the fields in ``_ALWAYS`` and every other recipe field not at its default."""
    default = TeacherTrainConfig()
    return " ".join(f"--{f.name.replace('_', '-')} {getattr(cfg, f.name)}" for f in fields(cfg)
                    if f.name not in _WHERE and getattr(cfg, f.name) is not None
                    and (f.name in _ALWAYS or getattr(cfg, f.name) != getattr(default, f.name)))


def train_teacher(cfg: TeacherTrainConfig) -> Path:
    caption_words(cfg.captions)  # an unknown caption version fails here, before any work
    if not 0.0 <= cfg.decay_start <= 1.0:
        raise ConfigError(f"decay_start must be a fraction of the steps in [0, 1], got {cfg.decay_start}")
    for name in ("two_shape_weight", "shapes_only_weight"):
        if (w := getattr(cfg, name)) is not None and w <= 0:
            raise ConfigError(f"{name} must be > 0 (1 samples captions uniformly), got {w}")
    vae = load_vae(cfg.vae)
    init = load_teacher(cfg.init).transformer.state_dict() if cfg.init else None  # bad folders fail here, early
    uniform = cfg.two_shape_weight == 1 and cfg.shapes_only_weight in (None, 1)
    rows = None if uniform else pool_captions(cfg)  # made once: the weights and a fresh cache both need them
    captions, empty = caption_data(cfg, rows)
    latents = latent_data(cfg, vae)
    n = latents.shape[0]
    weights = None if uniform else row_weights(rows[1], cfg.two_shape_weight, cfg.shapes_only_weight)
    torch.manual_seed(cfg.seed)
    model = build_nano_teacher(in_channels=vae.latent_channels, out_channels=vae.latent_channels)
    if init is not None:  # weights only: the optimizer, schedule and EMA start afresh from them
        model.transformer.load_state_dict(init)
    ema = EMA(model, cfg.ema_decay)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.99))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: lr_factor(i, cfg.steps, cfg.warmup, cfg.decay_start))
    u_tokens, u_pooled = empty.tokens.to(torch.float16), empty.pooled.to(torch.float16)

    def step(i: int) -> dict:
        model.train()
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + i)  # exact resume: the batch depends on i only
        if weights is None:  # uniform, as the runs before two_shape_weight drew it
            idx = torch.randint(n, (cfg.batch_size,), generator=g)
            k = torch.randint(cfg.captions_per_image, (cfg.batch_size,), generator=g)
        else:
            row = torch.multinomial(weights, cfg.batch_size, replacement=True, generator=g)
            idx, k = row % n, row // n
        drop = torch.rand(cfg.batch_size, generator=g) < cfg.caption_dropout
        c = captions[k * n + idx]
        tokens = torch.where(drop[:, None, None], u_tokens, c.tokens).float()
        pooled = torch.where(drop[:, None], u_pooled, c.pooled).float()
        loss = rf_loss(model, latents[idx], TextEmbeddings(tokens, pooled), g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ema.update(model)
        if cfg.sample_every and (i + 1) % cfg.sample_every == 0:
            sample_grid(ema.shadow, vae, Path(cfg.run_dir) / "samples" / f"{i + 1:06d}.png", cfg)
        return {"loss": loss.item(), "grad_norm": gnorm.item(), "lr": sched.get_last_lr()[0]}

    done, seconds = recipe.run(step, {"model": model, "ema": ema, "opt": opt, "sched": sched}, cfg.run_dir,
                               cfg.steps, minutes=cfg.minutes, desc="train-teacher", config=cfg)
    config = dict(ema.shadow.config, ladd_recommended={"steps": cfg.recommended_steps,
                                                        "guidance": cfg.recommended_guidance, "sampler": "euler"},
                  ladd_text_encoder={"name": "minilm", "max_length": cfg.max_length})
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.items() if not k.startswith("_")}
    n_params = sum(p.numel() for p in model.parameters())
    card = (f"# nano teacher\n\ndiffusers `SD3Transformer2DModel`, {n_params / 1e6:.2f}M parameters "
            f"({NANO_TEACHER_CONFIG['num_layers']} joint blocks, patch 1 on 8x8 latents), "
            f"EMA {cfg.ema_decay} weights.\n\n"
            f"- command: `ladd nano train-teacher {command_flags(cfg)}`\n"
            f"- data: ShapeWorld seed {cfg.pool_seed}, {cfg.pool_size} images, {cfg.captions_per_image} random "
            f"captions each (captions {cfg.captions}; MiniLM, {cfg.max_length} tokens), caption dropout "
            f"{cfg.caption_dropout}, captions naming two different shapes sampled {cfg.two_shape_weight}x"
            f"{'' if cfg.shapes_only_weight is None else f' ({cfg.shapes_only_weight}x with no colour)'}\n"
            f"- steps done: {done}, AdamW lr {cfg.lr}, warm-up {cfg.warmup}, linear decay to 0.1x from "
            f"{cfg.decay_start:.0%} of the steps, logit-normal(0, 1) t\n"
            f"- wall time: {seconds / 60:.1f} min on {platform.machine()} CPU, {torch.get_num_threads()} threads\n"
            f"- recommended: {cfg.recommended_steps} Euler steps, guidance {cfg.recommended_guidance}\n")
    return save_model(ema.shadow.transformer, cfg.out, config, card)


_GRID_CACHE: dict = {}


@torch.no_grad()
def sample_grid(model, vae: VAE, path: Path, cfg: TeacherTrainConfig) -> None:
    """A grid of fixed prompts at the recommended settings, to look at while training."""
    from ladd.images import save_grid
    from ladd.sampling import euler

    prompts = ["a red circle", "two blue squares", "a green triangle in the top left", "a yellow cross at the bottom",
               "a small orange circle and a large purple square", "three triangles", "a blue cross on the right",
               "a large red square in the center"]
    if "cond" not in _GRID_CACHE:  # the text encoder is loaded once per process, not once per grid
        enc = load_text_encoder("minilm", cfg.max_length)
        _GRID_CACHE.update(cond=enc.encode(prompts), uncond=enc.encode([""] * len(prompts)))
    cond, uncond = _GRID_CACHE["cond"], _GRID_CACHE["uncond"]
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(len(prompts), vae.latent_channels, 8, 8, generator=g)
    x0 = euler(model, noise, flow.euler_grid(cfg.recommended_steps), cond, uncond, cfg.recommended_guidance)
    save_grid(images_lib.to_uint8(vae.decode(x0)), path, ncols=len(prompts))
