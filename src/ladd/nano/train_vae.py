"""`ladd nano train-vae`: the nano ``AutoencoderKL`` (8x downsampling) trained on ShapeWorld.

Loss: L1 + MSE reconstruction, weighted up on object pixels, + a small KL term. Objects cover a few percent of
the pixels; with a plain loss a small VAE learns the textured backgrounds and drops the objects (seen: blue and
green shapes vanished after 1,500 steps), so saturated pixels (objects; backgrounds are near-grey) weigh up to
``object_weight`` times more. After training, the latent mean and std over the pool set the
config's ``shift_factor`` and ``scaling_factor`` so that model latents have zero mean and unit variance.
"""

from __future__ import annotations

import logging
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL

from ladd import images as images_lib
from ladd.models.io import save_model
from ladd.images import psnr
from ladd.models.vae import NANO_VAE_CONFIG, load_vae
from ladd.nano import recipe
from ladd.nano.pool import load_pool

log = logging.getLogger(__name__)


@dataclass
class VAETrainConfig:
    out: str = "assets/nano/vae"
    run_dir: str = "runs/nano-vae"
    cache_dir: str = "cache/nano"
    pool_seed: int = 1
    pool_size: int = 60000
    steps: int = 3000
    batch_size: int = 16
    lr: float = 1e-3
    kl_weight: float = 1e-6
    object_weight: float = 10.0
    minutes: float | None = None
    seed: int = 0
    decoder_only: str | None = None  # path of a trained VAE: fine-tune its decoder only, latents unchanged


def pixel_weights(x: torch.Tensor, object_weight: float) -> torch.Tensor:
    """``[B, 1, H, W]`` weights: 1 on grey-ish pixels, up to ``object_weight`` on saturated (object) pixels."""
    rgb = (x + 1) / 2
    saturation = rgb.amax(1, keepdim=True) - rgb.amin(1, keepdim=True)
    return 1 + (object_weight - 1) * ((saturation - 0.1) / 0.3).clamp(0, 1)


def train_vae(cfg: VAETrainConfig) -> Path:
    torch.manual_seed(cfg.seed)
    images, _ = load_pool(cfg.cache_dir, cfg.pool_seed, cfg.pool_size)
    if cfg.decoder_only:  # as SD's ft-MSE decoders: a better decoder for the same latent space
        base = load_vae(cfg.decoder_only).model
        model = AutoencoderKL.from_config(NANO_VAE_CONFIG)
        model.load_state_dict(base.state_dict())
        model.encoder.requires_grad_(False)
        model.quant_conv.requires_grad_(False)
    else:
        model = AutoencoderKL.from_config(NANO_VAE_CONFIG)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.0)
    sched = recipe.warmup_decay(opt, cfg.steps)
    rng = np.random.default_rng(cfg.seed)

    def step(i: int) -> dict:
        x = images_lib.to_tensor(images[rng.integers(len(images), size=cfg.batch_size)])
        post = model.encode(x).latent_dist
        rec = model.decode(post.sample()).sample
        w = pixel_weights(x, cfg.object_weight)
        l1 = ((rec - x).abs() * w).mean()
        mse = ((rec - x).pow(2) * w).mean()
        kl = post.kl().mean()
        loss = l1 + mse + cfg.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        return {"loss": loss.item(), "l1": l1.item(), "kl": kl.item()}

    done, seconds = recipe.run(step, {"model": model, "opt": opt, "sched": sched}, cfg.run_dir, cfg.steps,
                               minutes=cfg.minutes, desc="train-vae", config=cfg)
    model.eval()
    with torch.no_grad():
        held = images_lib.to_tensor(images[-512:])
        z = torch.cat([model.encode(held[i:i + 128]).latent_dist.mean for i in range(0, len(held), 128)])
        shift, scale = z.mean().item(), 1.0 / z.std().item()
        if cfg.decoder_only:  # same encoder, same latent space: keep the factors the teacher was trained with
            shift, scale = base.config.shift_factor, base.config.scaling_factor
        rec = torch.cat([model.decode(z[i:i + 128]).sample for i in range(0, len(z), 128)])
        score = psnr(rec, held).mean().item()
    config = dict(NANO_VAE_CONFIG, shift_factor=shift, scaling_factor=scale)
    n_params = sum(p.numel() for p in model.parameters())
    how = f" --decoder-only {cfg.decoder_only}" if cfg.decoder_only else ""
    card = (f"# nano VAE\n\ndiffusers `AutoencoderKL`, {n_params / 1e6:.2f}M parameters, 8x downsampling, "
            f"{NANO_VAE_CONFIG['latent_channels']} latent channels.\n\n"
            f"- command: `ladd nano train-vae --steps {cfg.steps} --batch-size {cfg.batch_size} --lr {cfg.lr} "
            f"--object-weight {cfg.object_weight}{how}`\n"
            f"- data: ShapeWorld seed {cfg.pool_seed}, {cfg.pool_size} images 64x64 (last 512 held out)\n"
            f"- steps done: {done}, batch {cfg.batch_size}, AdamW lr {cfg.lr}\n"
            f"- wall time: {seconds / 60:.1f} min on {platform.machine()} CPU, {torch.get_num_threads()} threads\n"
            f"- latent shift {shift:.4f}, scale {scale:.4f}\n"
            f"- held-out PSNR: {score:.2f} dB\n")
    log.info("VAE: PSNR %.2f dB on held-out images; wrote %s", score, cfg.out)
    return save_model(model, cfg.out, config, card)
