"""Text -> images with a loaded Generator: per-image seeds, batching, VAE decoding, timing."""

from __future__ import annotations

import time

import numpy as np
import torch

from ladd import flow
from ladd.models.registry import Generator, recommended_shift
from ladd.models.text_encoder import TextEmbeddings
from ladd.sampling import get_sampler


def image_seed(seed: int, prompt_index: int, k: int) -> int:
    """The seed of image ``k`` of prompt ``prompt_index``: independent of batch size and of the other images."""
    return int(np.random.SeedSequence([seed, prompt_index, k]).generate_state(1)[0])


@torch.no_grad()
def generate(gen: Generator, prompts: list[str], seeds: list[int], steps: int, guidance: float,
             sampler: str = "euler", height: int = 64, width: int = 64, batch_size: int = 64,
             progress=None, shift: float | None = None, decode: bool = True) -> tuple[np.ndarray, float]:
    """uint8 images ``[N, H, W, 3]`` for ``prompts[i]`` with ``seeds[i]`` (``decode=False``: the float32 latents
    ``[N, C, h, w]`` the VAE would decode); also the wall seconds spent, text encoding
    excluded (embeddings are cached per prompt, as in training). The time grid is shifted by the model's
    recommended ``shift`` at ``steps`` (a property of the model, like its timestep scale; ladd.models.registry.
    recommended_shift) unless ``shift`` is given, on its
    recommended ``grid`` (ladd.flow.GRIDS; uniform when the card names none)."""
    from ladd.images import to_uint8

    sample = get_sampler(sampler)
    down = gen.vae.downsample
    c = gen.vae.latent_channels
    if shift is not None and shift <= 0:
        raise ValueError(f"shift must be > 0 (1 = no shift, > 1 = more steps at high noise), got {shift}")
    times = flow.sampling_times(sampler, steps, recommended_shift(gen.recommended, steps) if shift is None else shift,
                                gen.recommended.get("grid", "uniform"), gen.recommended.get("start", 1.0))
    cond_all = gen.text_encoder.encode(prompts)
    uncond_one = gen.text_encoder.encode([""])
    device = torch.device(gen.device)
    dtype = gen.dtype or torch.float32
    out, seconds = [], 0.0
    for s in range(0, len(prompts), batch_size):
        gens = [torch.Generator().manual_seed(x) for x in seeds[s:s + batch_size]]  # CPU: the same noise anywhere
        noise = torch.stack([torch.randn(c, height // down, width // down, generator=g) for g in gens]).to(device)
        cond = cond_all[s:s + batch_size].to(device)
        uncond = TextEmbeddings(uncond_one.tokens.expand(len(noise), -1, -1),
                                uncond_one.pooled.expand(len(noise), -1)).to(device)
        t0 = time.perf_counter()
        # the sampler's state stays float32; with bf16 / fp16 weights the networks run under autocast
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            x0 = sample(gen.model, noise, times, cond, uncond, guidance, gens)
            images = gen.vae.decode(x0) if decode else x0
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # the clock counts the work, not its launch
        seconds += time.perf_counter() - t0
        out.append(to_uint8(images) if decode else images.float().cpu().numpy())
        if progress is not None:
            progress.update(len(noise))
    return np.concatenate(out), seconds
