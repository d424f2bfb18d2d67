"""Memory per GPU and per host process of a preset, from the real module sizes built on the meta device (no GPU,
no weights, seconds on a laptop). Prints a Markdown table per preset and writes JSON.

    python benchmarks/memory.py                                    # sd3-medium.yaml and sd3.5-large.yaml
    python benchmarks/memory.py --preset configs/sd3.5-large.yaml --gpus 8 student.lora_rank=64

What is counted (bytes per parameter from the modules' exact sizes; the formulas are in ``account``):
- the teacher as training holds it (bf16 under ``train.mixed_precision=bf16``, else fp32), the student's trainable
  weights with their fp32 gradients and Adam moments (a LoRA student: frozen fp32 base + trainable adapters), the
  EMA copy (the whole student, fp32), DDP's gradient buckets, the heads with their optimizer;
- under FSDP (``--fsdp``, full shard over ``--gpus``): all of that divided by the GPU count, plus two gathered
  transformer blocks in flight;
- the synthetic data on each GPU (``ShardDataset.to``: the whole set, latents fp32, text states fp16);
- activations by formula, not measured: with gradient checkpointing the block inputs of student and teacher
  (tokens x width x 2 bytes per block and network) plus one recomputed block, per sample of the micro-batch;
- the transient peaks at start, which the steady state hides: without FSDP ``method.modules`` puts the fp32
  teacher on the GPU and copies the student there (the teacher is cast to bf16 afterwards); under FSDP both are
  built in host memory and FSDP moves one unit at a time to the GPU as it shards it (ladd.training.trainer.prepare),
  so the GPU holds the shards plus one full unit; host memory at load: under FSDP only the first process reads
  the weights (``fsdp_cpu_ram_efficient_loading``, the others build the models empty and FSDP fills them from it),
  without FSDP every process loads the whole teacher and builds the student; resuming reads the student and
  optimizer on every process (under FSDP only its shards: the checkpoints are sharded, ladd.training.checkpoint).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from gpu_step import SHAPES, TEXT_TOKENS, _sd3  # noqa: E402  (the SD3 shapes, one place)

GB = 1e9


def _params(module: torch.nn.Module, trainable: bool | None = None) -> int:
    return sum(p.numel() for p in module.parameters() if trainable is None or p.requires_grad == trainable)


def shape_of(cfg) -> str:
    """The SHAPES entry a preset's teacher has (by its file name: the presets name a real folder)."""
    name = Path(cfg.paths.teacher).name.lower()
    return "sd3.5-large" if "3.5-large" in name else "sd3-medium"


def build_on_meta(cfg, shape: str):
    """(teacher, student, heads) of ``cfg`` with the model's real shapes on the meta device."""
    from ladd.methods.components.heads import build_discriminator
    from ladd.methods.components.student import freeze, init_student

    teacher = freeze(_sd3(SHAPES[shape], torch.float32, torch.device("meta")))
    student = init_student(teacher, cfg.student)
    heads = build_discriminator(teacher, cfg.ladd.disc) if cfg.method == "ladd" else torch.nn.Module()
    return teacher, student, heads


def account(cfg, teacher, student, heads, gpus: int, fsdp: bool, micro_batch: int, resolution: int) -> dict:
    """GB per GPU and per host process, line by line."""
    shape = teacher.config
    p_teacher = _params(teacher)
    p_train, p_frozen = _params(student, True), _params(student, False)
    p_heads = _params(heads)
    teacher_bytes = 2 if cfg.train.mixed_precision == "bf16" else 4
    width = shape.num_attention_heads * shape.attention_head_dim
    lat = resolution // 8
    tokens = (lat // shape.patch_size) ** 2 + TEXT_TOKENS
    layers = shape.num_layers
    shard = gpus if fsdp else 1
    gpu = {
        "teacher (frozen)": p_teacher * teacher_bytes / shard,
        "student weights + grads + Adam (trainable, fp32)": p_train * 16 / shard,
        "student frozen base (LoRA, fp32)": p_frozen * 4 / shard,
        "EMA copy of the student (fp32)": (p_train + p_frozen) * 4 if cfg.train.ema_decay > 0 else 0,
        "DDP gradient buckets (fp32)": 0 if fsdp or gpus == 1 else (p_train + p_heads) * 4,
        "heads + grads + Adam": p_heads * 16 / shard,
        "FSDP: two gathered blocks (fp32)": 2 * p_teacher / layers * 4 if fsdp else 0,
        "synthetic data on the GPU": cfg.data.num_samples * (shape.in_channels * lat * lat * 4
                                                             + TEXT_TOKENS * shape.joint_attention_dim * 2),
        "activations (formula, checkpointing)": micro_batch * (tokens * width * 2 * layers * 2 + tokens * width * 34),
    }
    steady = sum(gpu.values())
    if fsdp:  # built on the CPU; FSDP moves unit by unit: the shards so far + one full block in fp32
        start = (p_teacher * teacher_bytes + (p_train + p_frozen) * 4) / shard + p_teacher / layers * 4
    else:  # method.modules: fp32 teacher + fp32 student copy on the GPU
        start = p_teacher * 4 + (p_train + p_frozen) * 4
    load = p_teacher * 4 + (p_train + p_frozen) * 4
    resume = ((p_train + p_frozen) * 4 + p_train * 8) / shard  # a sharded checkpoint: each process its shards
    host = {  # (the first process, all processes of one machine)
        # FSDP (configs/accelerate/fsdp.yaml: fsdp_cpu_ram_efficient_loading): only the first process reads the
        # weights, the others build the models empty (ladd.runtime.loads_on_rank0_only); DDP: every process
        "start: teacher loaded (fp32) + student built (fp32)": (load, load if fsdp else load * gpus),
        "resume: student + optimizer read": (resume, resume * gpus),
    }
    return {"params": {"teacher": p_teacher, "student_trainable": p_train, "student_frozen": p_frozen,
                       "heads": p_heads},
            "gpus": gpus, "fsdp": fsdp, "micro_batch": micro_batch, "resolution": resolution, "tokens": tokens,
            "gpu_gb": {k: v / GB for k, v in gpu.items()}, "gpu_steady_gb": steady / GB,
            "gpu_start_peak_gb": (start + gpu["synthetic data on the GPU"]) / GB,
            "host_gb": {k: {"first_process": a / GB, "machine": b / GB} for k, (a, b) in host.items()}}


def table(name: str, r: dict) -> str:
    p = r["params"]
    lines = [f"### {name}: {'FSDP over' if r['fsdp'] else 'DDP on'} {r['gpus']} GPU(s), micro-batch "
             f"{r['micro_batch']}, {r['resolution']}px ({r['tokens']} tokens)", "",
             f"teacher {p['teacher'] / 1e9:.2f}B parameters, student trainable {p['student_trainable'] / 1e9:.3f}B"
             f" + frozen {p['student_frozen'] / 1e9:.2f}B, heads {p['heads'] / 1e6:.1f}M", "",
             "| per GPU | GB |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in r["gpu_gb"].items() if v]
    lines += [f"| **steady state** | **{r['gpu_steady_gb']:.1f}** |",
              f"| at start ({'shards + one full block while FSDP wraps' if r['fsdp'] else 'fp32 teacher + student'}"
              f", + data) | "
              f"{r['gpu_start_peak_gb']:.1f} |",
              f"| **peak per GPU** | **{max(r['gpu_steady_gb'], r['gpu_start_peak_gb']):.1f}** |",
              "", f"| host memory | first process | all {r['gpus']} processes of one machine |", "|---|---|---|"]
    lines += [f"| {k} | {v['first_process']:.1f} | {v['machine']:.1f} |" for k, v in r["host_gb"].items()]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", action="append", help="default: configs/sd3-medium.yaml and configs/sd3.5-large.yaml")
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--fsdp", choices=["auto", "yes", "no"], default="auto",
                   help="auto: FSDP for a full fine-tune of SD3.5-large (its preset's launch), DDP otherwise")
    p.add_argument("--resolution", type=int, default=1024)
    p.add_argument("--out", default="runs/bench-memory")
    p.add_argument("overrides", nargs="*", help="dotted overrides of every preset, e.g. student.lora_rank=64")
    args = p.parse_args()
    from ladd.distill.config import load_distill_config

    results, text = {}, []
    for preset in args.preset or ["configs/sd3-medium.yaml", "configs/sd3.5-large.yaml"]:
        cfg = load_distill_config(preset, args.overrides)
        shape = shape_of(cfg)
        fsdp = {"yes": True, "no": False}.get(args.fsdp, shape == "sd3.5-large" and cfg.student.lora_rank == 0)
        micro = max(1, cfg.train.batch_size // (args.gpus * cfg.train.grad_accum))
        r = account(cfg, *build_on_meta(cfg, shape), args.gpus, fsdp, micro, args.resolution)
        name = f"{preset} ({shape}{', LoRA rank ' + str(cfg.student.lora_rank) if cfg.student.lora_rank else ''})"
        results[name] = r
        text.append(table(name, r))
    print("\n\n".join(text))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "memory.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "memory.md").write_text("\n\n".join(text) + "\n")
    print(f"\nwrote {out}/memory.json and {out}/memory.md")


if __name__ == "__main__":
    main()
