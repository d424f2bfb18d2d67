"""benchmarks/memory.py: per-GPU and host memory of the SD3 presets from the real module sizes on the meta
device (no weights, no GPU)."""

import json
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from gpu_step import SHAPES, _sd3  # noqa: E402  (the shapes the benchmark builds)


def _run(tmp_path, *args):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "memory.py"), "--out", str(tmp_path), *args],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((tmp_path / "memory.json").read_text()), proc.stdout


def test_sd3_medium_sizes_and_fsdp_sharding(tmp_path):
    ddp, out = _run(tmp_path / "a", "--preset", "configs/sd3-medium.yaml", "--fsdp", "no")
    (r,) = ddp.values()
    # the benchmark's count is the MMDiT built with SD3-medium's shapes (2.03B parameters)
    assert r["params"]["teacher"] == sum(p.numel() for p in _sd3(SHAPES["sd3-medium"], torch.float32,
                                                                   torch.device("meta")).parameters())
    assert r["params"]["student_trainable"] == r["params"]["teacher"] and r["params"]["student_frozen"] == 0
    g = r["gpu_gb"]
    # 16 bytes per trainable parameter (fp32 weights, grads, Adam m and v), 2 for the bf16 teacher
    assert abs(g["student weights + grads + Adam (trainable, fp32)"] - 8 * g["teacher (frozen)"]) < 0.01
    assert g["EMA copy of the student (fp32)"] > 0 and "peak per GPU" in out
    fsdp, _ = _run(tmp_path / "b", "--preset", "configs/sd3-medium.yaml", "--fsdp", "yes", "--gpus", "8",
                   "train.ema_decay=0")
    (f,) = fsdp.values()
    assert abs(f["gpu_gb"]["student weights + grads + Adam (trainable, fp32)"] * 8
               - g["student weights + grads + Adam (trainable, fp32)"]) < 0.01
    # at start: without FSDP the fp32 teacher and student on the GPU; under FSDP the shards and one full block
    # (the modules are built in host memory and FSDP moves one unit at a time)
    assert r["gpu_start_peak_gb"] > 2 * 4 * r["params"]["teacher"] / 1e9
    assert f["gpu_start_peak_gb"] < f["gpu_steady_gb"] and f["gpu_start_peak_gb"] < r["gpu_start_peak_gb"]
    # host memory at load: DDP (8 GPUs by default), every process loads the teacher and builds the student; FSDP
    # (fsdp_cpu_ram_efficient_loading), the first process only
    start = "start: teacher loaded (fp32) + student built (fp32)"
    assert abs(r["host_gb"][start]["machine"] - 8 * r["host_gb"][start]["first_process"]) < 0.01
    assert abs(f["host_gb"][start]["machine"] - f["host_gb"][start]["first_process"]) < 0.01


def test_lora_student_trains_few_parameters(tmp_path):
    res, _ = _run(tmp_path, "--preset", "configs/sd3-medium.yaml", "student.lora_rank=8")
    (r,) = res.values()
    assert 0 < r["params"]["student_trainable"] < 0.05 * r["params"]["student_frozen"]
