"""FSDP, as an accelerate FSDP launch uses it, on two CPU processes (gloo).

accelerate runs FSDP only on GPUs, so this test wraps the models with torch's FSDP directly, as accelerate would
(one unit per JointTransformerBlock). (1) A sharded frozen teacher and sharded heads: one generator step and one
discriminator step give the same losses and student gradients as unsharded ones, and the generator step leaves
the heads without gradients (the steps call the teacher through ``__call__``, ``teacher(x, t, cond, blocks)``: an
FSDP wrapper gathers its shards only there). (2) A sharded student
and its optimizer: a sharded checkpoint (torch.distributed.checkpoint, each process its part), from which a sharded
copy resumes and trains on exactly as an unsharded student and optimizer do, and from which one process (export,
a resume on another process count) reads the full student and optimizer.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import setup
from ladd.training.checkpoint import load_checkpoint, restore_module

SCRIPT = """
import copy, functools, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from safetensors.torch import save_file
import torch, torch.distributed as dist
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy
from diffusers.models.attention import JointTransformerBlock
from helpers import setup
from ladd.methods.ladd import discriminator_step, generator_step
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from ladd.training.checkpoint import load_checkpoint, save_checkpoint

dist.init_process_group("gloo")
torch.set_num_threads(1)
cfg, teacher, student, disc, x0, cond = setup()
policy = functools.partial(transformer_auto_wrap_policy, transformer_layer_cls={{JointTransformerBlock}})


def steps(t, heads):
    student.zero_grad(set_to_none=True)
    g = generator_step(student, t, heads, x0, cond, cfg.ladd, cfg.student, torch.Generator().manual_seed(1))
    g.loss.backward()
    assert all(p.grad is None for p in heads.parameters())  # the G step leaves the heads alone
    d_loss, _ = discriminator_step(t, heads, x0, cond, g.fake, cfg.ladd, torch.Generator().manual_seed(2))
    return g.loss.detach(), d_loss.detach(), torch.cat([p.grad.flatten() for p in student.parameters()])


full = sum(p.numel() for p in teacher.parameters())
results = [steps(teacher, disc)]  # before wrapping: FSDP takes over the modules' parameters
sharded = FSDP(teacher, auto_wrap_policy=policy, device_id=torch.device("cpu"))
local = sum(p.numel() for p in sharded.parameters())  # this process's shard
assert local < 0.6 * full, (local, full)
results.append(steps(sharded, FSDP(disc, device_id=torch.device("cpu"), use_orig_params=True)))
(g0, d0, grad0), (g1, d1, grad1) = results
assert grad0.abs().sum() > 0
torch.testing.assert_close(g1, g0, atol=1e-6, rtol=1e-5)
torch.testing.assert_close(d1, d0, atol=1e-6, rtol=1e-5)
torch.testing.assert_close(grad1, grad0, atol=1e-6, rtol=1e-5)


# A sharded student: one optimizer step, a checkpoint (gathered, written by rank 0), a resumed copy, one more step;
# the same as an unsharded student and optimizer doing the same.
def make(model):
    return torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.0, 0.99))


def train_step(model, opt):
    model(x0, torch.full((4,), 0.5), cond).square().mean().backward()
    opt.step()
    opt.zero_grad()


student.zero_grad(set_to_none=True)
plain = copy.deepcopy(student)
plain_opt = make(plain)
shard = FSDP(student, auto_wrap_policy=policy, device_id=torch.device("cpu"), use_orig_params=True)
shard_opt = make(shard)
for m, o in ((plain, plain_opt), (shard, shard_opt)):
    train_step(m, o)
ckpt = Path({root!r}) / "ckpt"
save_checkpoint(ckpt, 1, {{"student": shard}}, {{"g": (shard, shard_opt)}}, {{}}, write=dist.get_rank() == 0)
dist.barrier()
written = sorted(p.name for p in (ckpt / "step-000001").iterdir())
assert written == ["optim-g.dcp", "optim.safetensors", "rng.safetensors", "state.json", "student.dcp"], written
fresh = FSDP(copy.deepcopy(setup()[2]), auto_wrap_policy=policy, device_id=torch.device("cpu"), use_orig_params=True)
fresh_opt = make(fresh)
load_checkpoint(ckpt / "step-000001", {{"student": fresh}}, {{"g": (fresh, fresh_opt)}}, restore_rng=False)
for m, o in ((plain, plain_opt), (fresh, fresh_opt)):
    train_step(m, o)
full_fresh = get_model_state_dict(fresh, options=StateDictOptions(full_state_dict=True))  # gathered
if dist.get_rank() == 0:
    for k, v in plain.state_dict().items():
        torch.testing.assert_close(full_fresh[k], v, atol=1e-6, rtol=1e-5)
    save_file(plain.state_dict(), Path({root!r}) / "after-two-steps.safetensors")
print("OK", dist.get_rank(), local, full, flush=True)
dist.barrier()
dist.destroy_process_group()  # a gloo group left open at exit can abort the process (seen in CI)
"""


@pytest.mark.slow  # ~10 s: two Python processes
def test_fsdp_sharded_teacher_and_student_checkpoints(tmp_path):
    script = tmp_path / "fsdp.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parent), root=str(tmp_path)))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script)],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300,
                          cwd=Path(__file__).parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("OK") == 2
    # the sharded checkpoint in one process, as `ladd export` and a resume on another process count read it
    ckpt = tmp_path / "ckpt" / "step-000001"
    cfg, teacher, student, disc, x0, cond = setup()
    restore_module(student, ckpt, "student")
    opt = torch.optim.AdamW(student.parameters(), lr=1e-3, betas=(0.0, 0.99))
    load_checkpoint(ckpt, {"student": student}, {"g": (student, opt)}, restore_rng=False)
    student(x0, torch.full((4,), 0.5), cond).square().mean().backward()
    opt.step()
    expected = load_file(tmp_path / "after-two-steps.safetensors")
    for k, v in student.state_dict().items():
        torch.testing.assert_close(v, expected[k], atol=1e-6, rtol=1e-5)


class _FSDPLaunch:
    """The parts of an accelerate FSDP ``Accelerator`` that ``trainer.prepare`` uses, recording where each module
    is when it is handed over for wrapping. Its device is ``meta``: a module moved there by anything but FSDP
    would lose its values, and shows up in the record."""
    mixed_precision = "bf16"
    device = torch.device("meta")

    def __init__(self):
        from accelerate.utils import DistributedType

        self.distributed_type, self.handed = DistributedType.FSDP, []

    def _record(self, obj):
        if isinstance(obj, torch.nn.Module):
            self.handed.append({p.device.type for p in obj.parameters()})
        return obj

    def prepare(self, *objs):
        return tuple(self._record(o) for o in objs)

    def prepare_model(self, module):
        return self._record(module)


def test_under_fsdp_modules_reach_the_wrapper_in_host_memory():
    """An FSDP launch builds the student, the heads and the frozen teacher on the CPU and leaves their placement
    to FSDP, which moves one unit at a time to its GPU as it shards it: no full-size copy on a GPU at start
    (docs/real-models.md, "FSDP")."""
    from helpers import TINY_TEACHER
    from ladd.distill.config import load_distill_config
    from ladd.distill.run import build_method
    from ladd.models.teacher import build_nano_teacher
    from ladd.training.trainer import prepare

    cfg = load_distill_config("configs/tiny.yaml", ["train.ema_decay=0"])
    launch = _FSDPLaunch()
    prepare(launch, cfg, build_method(cfg, build_nano_teacher(**TINY_TEACHER)))
    assert len(launch.handed) == 3  # student, heads (with their optimizers), the frozen teacher
    assert all(devices == {"cpu"} for devices in launch.handed), launch.handed


def test_rank0_loading_reads_the_weights_on_the_first_process_only(tmp_path, monkeypatch):
    """``fsdp_cpu_ram_efficient_loading``: every process but the first builds the teacher from its config alone,
    on the meta device, reading no weight file, and hands student and teacher to FSDP still empty (FSDP fills them
    from the first process, ``sync_module_states``): host memory holds one teacher, not one per GPU."""
    from types import SimpleNamespace

    from helpers import make_assets
    from ladd.distill.config import load_distill_config
    from ladd.distill.run import build_method
    from ladd.models.teacher import load_teacher
    from ladd.runtime import loads_on_rank0_only
    from ladd.training.trainer import prepare

    paths = make_assets(tmp_path)
    (paths["teacher"] / "model.safetensors").write_bytes(b"not weights")  # reading it would fail
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "true")
    first, other = SimpleNamespace(process_index=0), SimpleNamespace(process_index=3)
    assert not loads_on_rank0_only(first) and loads_on_rank0_only(other)
    with pytest.raises(Exception, match="model.safetensors"):
        load_teacher(paths["teacher"], weights=not loads_on_rank0_only(first))
    teacher = load_teacher(paths["teacher"], weights=not loads_on_rank0_only(other))
    assert {p.device.type for p in teacher.parameters()} == {"meta"}
    cfg = load_distill_config("configs/tiny.yaml", ["train.ema_decay=0"])
    launch = _FSDPLaunch()
    prepare(launch, cfg, build_method(cfg, teacher))
    assert launch.handed == [{"meta"}, {"cpu"}, {"meta"}], launch.handed  # student, heads (seeded, small), teacher
    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "false")
    assert not loads_on_rank0_only(other)
