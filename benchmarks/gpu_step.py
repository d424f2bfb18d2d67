"""One full-size LADD iteration on a GPU: an SD3-medium-shaped teacher and student (random weights, ~2B parameters
each) at 1024x1024 in bf16 with gradient checkpointing. Prints iterations per second, peak memory and model FLOP
utilisation (MFU) as a Markdown table and writes JSON.

    python benchmarks/gpu_step.py                                  # SD3-medium shape, batch 1, 1024x1024
    python benchmarks/gpu_step.py --model sd3.5-large --lora-rank 64 --batch-size 1
    python benchmarks/gpu_step.py --tiny                           # a tiny model on CPU: checks the code path only

Without a CUDA GPU it stops at once and says so (unless ``--tiny``). The iteration is the trainer's own
(``ladd.training.trainer.iteration``, as ``ladd distill`` runs it): the LADD generator phase + backward, the
discriminator phase + backward, clipping, both AdamW steps (EMA off), with ``train.mixed_precision=bf16`` (the
frozen teacher stored in bf16, the student in fp32 master weights under autocast) and
``train.gradient_checkpointing=true``.

MFU counts the model FLOPs of one iteration (not the recomputation of checkpointing): per sample, the student's
forward + backward (3 F), the teacher's forward on the fake + its backward to the input (2 F), the teacher's
forward on the real (1 F): 6 F, with F = 2 x parameters x tokens + 4 x layers x tokens^2 x width (attention),
over the GPU's dense bf16 peak (``--peak-tflops``, default 989 for an H100/H200 SXM).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

# diffusers configs of the two SD3 transformers (stabilityai/stable-diffusion-3-medium-diffusers and
# stable-diffusion-3.5-large, transformer/config.json)
SHAPES = {
    "sd3-medium": dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24,
                       attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
                       caption_projection_dim=1536, pooled_projection_dim=2048, pos_embed_max_size=192),
    "sd3.5-large": dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=38,
                        attention_head_dim=64, num_attention_heads=38, joint_attention_dim=4096,
                        caption_projection_dim=2432, pooled_projection_dim=2048, pos_embed_max_size=192,
                        qk_norm="rms_norm"),
    "tiny": dict(sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=2, attention_head_dim=8,
                 num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16, pooled_projection_dim=32,
                 pos_embed_max_size=16),
}
TEXT_TOKENS = 333  # SD3: 77 CLIP + 256 T5 tokens


def model_flops(cfg: dict, image_tokens: int) -> float:
    """Forward FLOPs of one sample through the joint blocks: every token passes its stream's q, k, v, out and 4x MLP
    weights (12 w^2 multiply-adds per token), and attention's two T x T products (4 T^2 w)."""
    width = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    tokens = image_tokens + TEXT_TOKENS
    return cfg["num_layers"] * (2 * 12 * width * width * tokens + 4 * tokens * tokens * width)


def _sd3(shape: dict, dtype: torch.dtype, device):
    from diffusers import SD3Transformer2DModel

    from ladd.models.teacher import SD3Adapter

    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return SD3Adapter(SD3Transformer2DModel.from_config(shape))
    finally:
        torch.set_default_dtype(old)


def build(args, device):
    """The method, accelerator and prepared run on a random-weight teacher (fp32 here; the trainer stores it in
    bf16 and copies the student from it first: fp32 master weights, or for LoRA frozen weights under fp32
    adapters). Random weights: this times, it does not train."""
    from ladd.distill.config import load_distill_config
    from ladd.distill.run import build_method
    from ladd.training.trainer import make_accelerator, prepare

    cfg = load_distill_config(None, ["student.steps=4", f"ladd.disc.blocks=spaced:{args.heads}", "train.ema_decay=0",
                                     f"student.lora_rank={args.lora_rank}", "train.mixed_precision=bf16",
                                     "train.gradient_checkpointing=true", f"train.batch_size={args.batch_size}",
                                     "train.grad_accum=1", *args.overrides])
    torch.manual_seed(0)
    method = build_method(cfg, _sd3(SHAPES[args.model], torch.float32, device))
    acc = make_accelerator(cfg)
    return cfg, method, acc, prepare(acc, cfg, method)


class FixedData:
    """One fixed batch in the trainer's data interface."""

    def __init__(self, x0, cond):
        self.x0, self.cond = x0, cond

    def to(self, device):
        return self

    def batch(self, size, *keys):
        from ladd.data.batch import Batch

        return Batch(self.x0, self.cond)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["sd3-medium", "sd3.5-large"], default="sd3-medium")
    p.add_argument("--resolution", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--heads", type=int, default=4, help="tapped blocks (evenly spaced, ending with the last)")
    p.add_argument("--lora-rank", type=int, default=0, help="0: full fine-tuning of the student")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--peak-tflops", type=float, default=989.0, help="the GPU's dense bf16 peak")
    p.add_argument("--tiny", action="store_true", help="a tiny model on CPU: checks the code path, times nothing")
    p.add_argument("--out", default="runs/bench-gpu-step")
    p.add_argument("overrides", nargs="*", help="dotted overrides of the distill config, e.g. ladd.disc.head_width=128")
    args = p.parse_args()
    if args.tiny:
        args.model, args.resolution, args.heads, device = "tiny", 64, 2, torch.device("cpu")
    elif not torch.cuda.is_available():
        print("gpu_step.py times a full-size LADD iteration and needs a CUDA GPU; none is visible here "
              "(torch.cuda.is_available() is False). Run it on a GPU machine, or pass --tiny to check the code "
              "path on CPU.", file=sys.stderr)
        return 2
    else:
        device = torch.device("cuda")
    from ladd.models.text_encoder import TextEmbeddings
    from ladd.training.trainer import iteration as train_iteration

    cfg, method, acc, run = build(args, device)
    shape = SHAPES[args.model]
    b, lat = args.batch_size, args.resolution // 8
    x0 = torch.randn(b, shape["in_channels"], lat, lat, device=device)
    tokens = TEXT_TOKENS if not args.tiny else 6
    cond = TextEmbeddings(torch.randn(b, tokens, shape["joint_attention_dim"], device=device),
                          torch.randn(b, shape["pooled_projection_dim"], device=device))
    data = FixedData(x0, cond)

    def iteration():
        train_iteration(acc, method, run, data, cfg, 0, b)
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup if not args.tiny else 1):
        iteration()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.repeats if not args.tiny else 1):
        t0 = time.perf_counter()
        iteration()
        times.append(time.perf_counter() - t0)
    sec = statistics.median(times)
    image_tokens = (lat // shape["patch_size"]) ** 2
    flops = 6 * b * model_flops(shape, image_tokens)
    n_params = sum(q.numel() for q in method.teacher.parameters())
    result = {
        "model": args.model, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (--tiny)",
        "params": n_params, "resolution": args.resolution, "batch_size": b, "lora_rank": args.lora_rank,
        "heads": args.heads, "seconds_per_iteration": sec, "iterations_per_second": 1 / sec,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
        "tflops_per_iteration": flops / 1e12,
        "mfu": flops / sec / (args.peak_tflops * 1e12) if device.type == "cuda" else None,
        "torch": torch.__version__,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_step.json").write_text(json.dumps(result, indent=2) + "\n")
    print("| model | params | res | batch | LoRA | it/s | s/it | peak GiB | TFLOP/it | MFU |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    mem = f"{result['peak_memory_gib']:.1f}" if result["peak_memory_gib"] is not None else "-"
    mfu = f"{result['mfu']:.1%}" if result["mfu"] is not None else "-"
    print(f"| {args.model} | {n_params / 1e9:.2f}B | {args.resolution} | {b} | {args.lora_rank or '-'} | "
          f"{1 / sec:.2f} | {sec:.3f} | {mem} | {flops / 1e12:.1f} | {mfu} |")
    print(f"wrote {out / 'gpu_step.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
