"""`ladd nano train-featnet`: the nano world's frozen feature network for ADD's discriminator, self-supervised.

ADD (docs/methods/add.md) judges decoded images through a frozen pixel feature network (DINOv2 for real models).
In the nano world the evaluator is the yardstick and must never be a training signal, so ADD gets a network of
its own, trained on ShapeWorld images *without their labels*: a masked auto-encoder (He et al. 2022, here with a
CNN). Half of the 8x8 patches of each image are replaced by grey; ``NanoFeatureNet`` encodes the masked image to
4x4 cells and a small decoder (not shipped) reconstructs the whole image. The loss weights object pixels up (as
the nano VAE's: objects cover a few percent of an image) and counts the masked patches twice, so the features
must carry what is where (shape, colour, position, count) to fill the gaps.
"""

from __future__ import annotations

import logging
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ladd import images as images_lib
from ladd.models.feature_net import NANO_FEATURE_NET_CONFIG, NanoFeatureNet
from ladd.models.io import save_model
from ladd.nano import recipe
from ladd.nano.pool import load_pool
from ladd.nano.train_vae import pixel_weights

log = logging.getLogger(__name__)


@dataclass
class FeatNetTrainConfig:
    out: str = "assets/nano/featnet"
    run_dir: str = "runs/nano-featnet"
    cache_dir: str = "cache/nano"
    pool_seed: int = 1           # the teacher's ShapeWorld images; the labels are never read
    pool_size: int = 20000
    steps: int = 3000
    batch_size: int = 64
    lr: float = 1e-3
    mask_ratio: float = 0.5      # share of the 8x8 patches replaced by grey
    object_weight: float = 10.0
    minutes: float | None = None
    seed: int = 0


class _Decoder(nn.Sequential):
    """4x4 cells -> 64x64 image: four (upsample x2 -> conv 3x3 -> GroupNorm -> SiLU) and a 3x3 conv to RGB."""

    def __init__(self, cin: int, widths=(128, 64, 32, 32)):
        layers = []
        for w in widths:
            layers += [nn.Upsample(scale_factor=2), nn.Conv2d(cin, w, 3, padding=1), nn.GroupNorm(8, w), nn.SiLU()]
            cin = w
        super().__init__(*layers, nn.Conv2d(cin, 3, 3, padding=1))


def patch_mask(batch: int, size: int, patch: int, ratio: float, rng: np.random.Generator) -> torch.Tensor:
    """``[B, 1, size, size]``: 1 on the masked patches (a share ``ratio`` of the ``patch`` x ``patch`` cells)."""
    cells = size // patch
    m = (rng.random((batch, 1, cells, cells)) < ratio).astype(np.float32)
    return torch.from_numpy(m).repeat_interleave(patch, 2).repeat_interleave(patch, 3)


def _psnr_on(a: torch.Tensor, b: torch.Tensor, where: torch.Tensor) -> float:
    """Mean per-image PSNR (dB, images in [-1, 1]) over the pixels where ``where`` is 1."""
    se = ((a - b) / 2).pow(2).mean(1, keepdim=True) * where
    mse = se.flatten(1).sum(1) / where.flatten(1).sum(1).clamp_min(1)
    return (10 * torch.log10(1.0 / mse.clamp_min(1e-10))).mean().item()


def train_featnet(cfg: FeatNetTrainConfig) -> Path:
    torch.manual_seed(cfg.seed)
    images, _ = load_pool(cfg.cache_dir, cfg.pool_seed, cfg.pool_size)  # scenes (labels) unused
    net = NanoFeatureNet(NANO_FEATURE_NET_CONFIG["channels"])
    decoder = _Decoder(net.channels[-1])
    params = [*net.parameters(), *decoder.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    sched = recipe.warmup_decay(opt, cfg.steps)
    rng = np.random.default_rng(cfg.seed)
    train = images[:-512]

    def reconstruct(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return decoder(net(x * (1 - mask))[-1])  # masked pixels -> 0, mid-grey in [-1, 1]

    def step(i: int) -> dict:
        x = images_lib.to_tensor(train[rng.integers(len(train), size=cfg.batch_size)])
        mask = patch_mask(len(x), x.shape[-1], 8, cfg.mask_ratio, rng)
        err = (reconstruct(x, mask) - x).pow(2) * pixel_weights(x, cfg.object_weight) * (1 + mask)
        loss = err.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        return {"loss": loss.item()}

    done, seconds = recipe.run(step, {"net": net, "decoder": decoder, "opt": opt, "sched": sched}, cfg.run_dir,
                               cfg.steps, minutes=cfg.minutes, desc="train-featnet", config=cfg)
    net.eval()
    with torch.no_grad():  # held-out images, a fixed mask: PSNR of the masked and of the visible pixels
        held = images_lib.to_tensor(images[-512:])
        mask = patch_mask(len(held), held.shape[-1], 8, cfg.mask_ratio, np.random.default_rng(123))
        rec = reconstruct(held, mask).clamp(-1, 1)
        masked, visible = _psnr_on(rec, held, mask), _psnr_on(rec, held, 1 - mask)
    n_params = sum(p.numel() for p in net.parameters())
    card = (f"# nano feature network (ADD's discriminator backbone)\n\n"
            f"`ladd.models.feature_net.NanoFeatureNet`, {n_params / 1e6:.2f}M parameters, taps of "
            f"{', '.join(map(str, net.channels))} channels at 32, 16, 8 and 4 cells for 64x64 images. Frozen "
            f"in ADD (`method: add`, docs/methods/add.md); never the evaluator, never trained on labels.\n\n"
            f"- command: `ladd nano train-featnet --steps {cfg.steps} --batch-size {cfg.batch_size} --lr {cfg.lr} "
            f"--mask-ratio {cfg.mask_ratio}`\n"
            f"- objective: masked auto-encoding (8x8 patches, ratio {cfg.mask_ratio}), object pixels weighted "
            f"up to {cfg.object_weight:g}x, masked pixels 2x; the decoder is not shipped\n"
            f"- data: ShapeWorld seed {cfg.pool_seed}, {cfg.pool_size} images 64x64 without labels (last 512 held "
            f"out)\n"
            f"- steps done: {done}, batch {cfg.batch_size}, AdamW lr {cfg.lr}\n"
            f"- wall time: {seconds / 60:.1f} min on {platform.machine()} CPU, {torch.get_num_threads()} threads\n"
            f"- held-out reconstruction PSNR: {masked:.2f} dB on masked patches, {visible:.2f} dB on visible ones\n")
    log.info("feature net: held-out PSNR %.2f dB masked, %.2f dB visible; wrote %s", masked, visible, cfg.out)
    return save_model(net, cfg.out, dict(NANO_FEATURE_NET_CONFIG, channels=net.channels), card)
