"""The one training loop of ``ladd distill``, on accelerate (1 CPU, N GPUs, mixed precision: the same code).

An iteration (shared/LADD.md, "One training iteration"): for each gradient-accumulation micro-batch, one generator
step (the student's loss through the frozen teacher's features) and one discriminator step (heads on real latents
vs the G step's cached fakes; see ladd.distill.steps for why D judges the pre-update fakes), both backpropagated;
then clipping, both optimizers, the EMA. Phases as in NVlabs/edm: step, report, preview, checkpoint.

Run folder (shared/DESIGN.md): ``config.yaml`` (resolved), ``log.txt`` (ladd.training.runtime), ``metrics.jsonl``,
``tb/`` (TensorBoard), ``samples/<step>.png``, ``checkpoints/`` (ladd.training.checkpoint).

Resume by re-running the same command: the newest checkpoint is loaded. Every random draw of iteration ``step``
comes from generators seeded by ``(seed, step, micro)`` (batch, student times, noise), from which each process
keeps its slice of the global batch (ladd.distill.draws), so a resumed run repeats an uninterrupted one and N
processes train on the same numbers as one (misaligned prompts are rolled within each process's slice).
Ctrl-C finishes the current iteration, writes a checkpoint and stops (a second Ctrl-C stops at once). A NaN or
inf loss stops the run without checkpointing the broken state. Metrics stay on the device between log steps: no
host sync inside an iteration.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ladd import config as C
from ladd import flow
from ladd.data.shards import ShardDataset, sample_seed
from ladd.distill import losses
from ladd.distill import steps as S
from ladd.distill.discriminator import build_discriminator
from ladd.distill.draws import Draws
from ladd.models.text_encoder import TextEmbeddings
from ladd.training.checkpoint import is_sharded, latest_checkpoint, load_checkpoint, save_checkpoint
from ladd.training.ema import EMA
from ladd.training.runtime import deferred_interrupt

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or inf; the run stopped and the newest checkpoint is the last good state."""


@dataclass
class TrainResult:
    student: torch.nn.Module   # the trained student (unwrapped SD3Adapter)
    ema: EMA | None
    heads: torch.nn.Module     # the discriminator heads (unwrapped)
    step: int
    seconds: float             # wall time over all resumes
    metrics: dict              # the last logged metrics
    # FSDP: the modules above hold only this process's shards; the full weights are in the final checkpoint
    # (ladd.distill.export.load_run_student reads them)
    sharded: bool = False

    @property
    def export_model(self) -> torch.nn.Module:
        """What to ship: the EMA weights when EMA is on (LADD.md step 8), else the student itself."""
        return self.ema.shadow if self.ema is not None else self.student


@dataclass
class _Parts:
    teacher: torch.nn.Module
    student: torch.nn.Module   # prepared (maybe DDP-wrapped)
    disc: torch.nn.Module      # prepared
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    ema: EMA | None

    def modules(self) -> dict:
        """What a checkpoint holds: the unwrapped modules, or FSDP-sharded ones as they are (gathered there)."""
        mods = {"student": _for_checkpoint(self.student), "heads": _for_checkpoint(self.disc)}
        return mods if self.ema is None else {**mods, "ema": self.ema}

    def optimizers(self) -> dict:
        return {"g": (_for_checkpoint(self.student), self.opt_g), "d": (_for_checkpoint(self.disc), self.opt_d)}

    @property
    def sharded(self) -> bool:
        return is_sharded(self.student)


def _for_checkpoint(module: torch.nn.Module) -> torch.nn.Module:
    return module if is_sharded(module) else S._unwrap(module)


def process_state():
    """accelerate's process state (rank, world size, device). CPU-only multi-process runs (``torchrun`` or
    ``accelerate launch --cpu``) need ``cpu=True``, which accelerate's ``PartialState`` does not infer itself."""
    from accelerate import PartialState

    cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") or (
        int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available())
    return PartialState(cpu=cpu)


def train(cfg, teacher, data: ShardDataset, run_dir: str | Path, vae=None,
          preview: TextEmbeddings | None = None) -> TrainResult:
    """Distill ``teacher`` (an SD3Adapter, frozen here) on ``data`` per ``cfg`` (a DistillConfig) in ``run_dir``,
    resuming from its newest checkpoint. With ``vae`` and ``preview`` (prompt embeddings ``[P, L, D]``), the
    student's samples of those prompts are saved to ``samples/<step>.png`` every ``train.sample_every`` steps."""
    from accelerate import Accelerator
    from torch.utils.tensorboard import SummaryWriter

    run_dir, tc = Path(run_dir), cfg.train
    state = process_state()
    acc = Accelerator(mixed_precision=tc.mixed_precision, gradient_accumulation_steps=tc.grad_accum,
                      cpu=state.device.type == "cpu")
    micro_bs = tc.micro_batch(acc.num_processes)
    parts = _build(acc, cfg, teacher)
    data = data.to(acc.device)
    ckpt_dir = run_dir / "checkpoints"
    start, elapsed = _resume(ckpt_dir, parts, cfg)
    main = acc.is_main_process
    if main:
        _start_run_folder(run_dir, cfg, start)
        if parts.sharded and tc.sample_every:
            log.warning("train.sample_every: no preview grids while the student is FSDP-sharded")
    writer = SummaryWriter(str(run_dir / "tb"), purge_step=start + 1) if main else None
    meter = _Meter(acc, ckpt_dir)
    bar = tqdm(total=tc.steps, initial=start, desc="ladd distill", disable=not main, dynamic_ncols=True,
               mininterval=1)
    t0, done, last = time.perf_counter() - elapsed, start, {}
    with deferred_interrupt() as interrupted:
        try:
            for step in range(start, tc.steps):
                meter.add(_iteration(acc, parts, data, cfg, step, micro_bs), step)
                done = step + 1
                bar.update(1)
                at_log = done % tc.log_every == 0 or done == tc.steps
                if at_log:
                    last = _report(meter, done, bar, writer, run_dir, time.perf_counter() - t0)
                if main and vae is not None and preview is not None and tc.sample_every \
                        and done % tc.sample_every == 0 and not parts.sharded:
                    save_preview(_preview_model(parts), vae, preview, cfg.student.steps, data.latent_shape,
                                 run_dir / "samples" / f"{done:06d}.png", shift=cfg.student.shift)
                if done % tc.ckpt_every == 0 or done == tc.steps:
                    _checkpoint(acc, meter, parts, cfg, ckpt_dir, done, time.perf_counter() - t0)
                if _stop_requested(acc, interrupted, at_log):
                    if done % tc.ckpt_every and done != tc.steps:
                        _checkpoint(acc, meter, parts, cfg, ckpt_dir, done, time.perf_counter() - t0)
                    log.warning("interrupted: checkpoint at step %d written; re-run the same command to resume",
                                done)
                    raise KeyboardInterrupt
        finally:
            bar.close()
            if writer is not None:
                writer.close()
    return TrainResult(S._unwrap(parts.student), parts.ema, S._unwrap(parts.disc), done,
                       time.perf_counter() - t0, last, parts.sharded)


def _build(acc, cfg, teacher) -> _Parts:
    from accelerate.utils import DistributedType

    if acc.distributed_type == DistributedType.FSDP and cfg.train.ema_decay > 0:
        from ladd.distill.config import FSDP_EMA

        raise C.ConfigError(FSDP_EMA)
    teacher = S.freeze(teacher).to(acc.device)
    if cfg.train.gradient_checkpointing:  # set before the copy: the student inherits it
        teacher.enable_gradient_checkpointing()
    student = S.init_student(teacher, cfg.student)
    with torch.random.fork_rng(devices=[]):  # seeded heads' init without touching the caller's global RNG
        torch.manual_seed(cfg.train.seed)
        disc = build_discriminator(teacher, cfg.disc).to(acc.device)
    opt_g, opt_d = S.build_optimizers(student, disc, cfg.optim)
    ema = EMA(student, cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None
    student, disc, opt_g, opt_d = acc.prepare(student, disc, opt_g, opt_d)
    return _Parts(_prepare_teacher(acc, teacher), student, disc, opt_g, opt_d, ema)


def _prepare_teacher(acc, teacher: torch.nn.Module) -> torch.nn.Module:
    """The frozen teacher as it runs in training: in bf16 under bf16 mixed precision (it has no optimizer, so
    needs no fp32 master weights: half the memory), and sharded like the student under FSDP (accelerate wraps it
    per the launch config; the steps call it through ``__call__`` so the shards are gathered). DDP needs nothing:
    the teacher has no gradients to sync."""
    from accelerate.utils import DistributedType

    if acc.mixed_precision == "bf16":
        teacher = teacher.to(torch.bfloat16)
    if acc.distributed_type == DistributedType.FSDP:
        teacher = acc.prepare_model(teacher)
    return teacher


def _resume(ckpt_dir: Path, parts: _Parts, cfg) -> tuple[int, float]:
    path = latest_checkpoint(ckpt_dir)
    if path is None:
        return 0, 0.0
    state = load_checkpoint(path, parts.modules(), parts.optimizers())
    old, new = _flat(state["config"]), _flat(C.to_dict(cfg))
    changed = {k: (old.get(k), v) for k, v in new.items() if old.get(k) != v}
    if changed:
        log.warning("resuming %s with a changed config: %s", path, changed)
    return int(state["step"]), float(state["elapsed"])


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


def _iteration(acc, p: _Parts, data: ShardDataset, cfg, step: int, micro_bs: int) -> dict:
    """One LADD iteration over ``train.grad_accum`` micro-batches; returns metrics as device scalars."""
    rank, world, seed, per_micro = acc.process_index, acc.num_processes, cfg.train.seed, []
    for k in range(cfg.train.grad_accum):
        x0, cond = data.batch(micro_bs, seed, step, k, rank, world)
        # the same numbers on every process, each keeping its slice (ladd.distill.draws)
        gen = Draws(torch.Generator(acc.device).manual_seed(sample_seed(seed, 0, step, k)), rank, world)
        with acc.accumulate(p.student, p.disc), acc.autocast():
            g = S.generator_step(p.student, p.teacher, p.disc, x0, cond, cfg, gen, step)
            acc.backward(g.loss)
            with _captured_logits(p.disc) as logits:
                d_loss, d_metrics = S.discriminator_step(p.teacher, p.disc, x0, cond, g.fake, cfg, gen)
            acc.backward(d_loss)
        per_micro.append({**g.metrics, **d_metrics, **_accuracies(logits[-1], micro_bs)})
    out = {k: torch.stack([m[k].float() for m in per_micro]).mean() for k in per_micro[0]}
    clip = cfg.optim.grad_clip
    if clip > 0:  # after the last micro-batch accelerate has synced the gradients
        out["g_grad_norm"] = torch.as_tensor(acc.clip_grad_norm_(p.student.parameters(), clip)).float()
        out["d_grad_norm"] = torch.as_tensor(acc.clip_grad_norm_(p.disc.parameters(), clip)).float()
    p.opt_g.step()
    p.opt_d.step()
    p.opt_g.zero_grad(set_to_none=True)
    p.opt_d.zero_grad(set_to_none=True)
    if p.ema is not None:
        p.ema.update(S._unwrap(p.student))
    return out


@contextlib.contextmanager
def _captured_logits(disc):
    """The heads' outputs of the calls inside. The D step judges [real, fake(, misaligned)] in one batched
    call (ladd.distill.steps._judge), so the first ``B`` rows are real and the next ``B`` fake."""
    out: list = []
    handle = S._unwrap(disc).register_forward_hook(lambda _m, _i, o: out.append([lg.detach() for lg in o]))
    try:
        yield out
    finally:
        handle.remove()


def _accuracies(logits: list[torch.Tensor], b: int) -> dict:
    """The discriminator's accuracy on the real (score > 0) and on the fake (score < 0) samples."""
    scores = losses.sample_scores(logits)
    return {"acc_real": (scores[:b] > 0).float().mean(), "acc_fake": (scores[b:2 * b] < 0).float().mean()}


class _Meter:
    """Per-iteration metrics summed on the device, and the first step whose loss was not finite."""

    def __init__(self, acc, ckpt_dir: Path):
        self.acc, self.ckpt_dir = acc, ckpt_dir
        self.sums: dict[str, torch.Tensor] = {}
        self.n = 0
        self.bad_step = torch.full((), -1, dtype=torch.long, device=acc.device)

    def add(self, metrics: dict, step: int) -> None:
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0) + v.detach().float()
        self.n += 1
        finite = torch.isfinite(metrics["g_loss"]) & torch.isfinite(metrics["d_loss"])
        self.bad_step = torch.where(~finite & (self.bad_step < 0), step, self.bad_step)

    def raise_if_bad(self) -> None:
        """One host sync (collective: every process must call it at the same steps)."""
        bad = int(self.acc.gather(self.bad_step[None]).max())
        if bad >= 0:
            good = latest_checkpoint(self.ckpt_dir)
            raise NonFiniteLossError(
                f"non-finite loss at iteration {bad + 1}: the run stopped and this state was not saved. The last good "
                f"checkpoint is {good or 'none (no checkpoint was written yet)'}. Lower optim.lr_student / "
                f"optim.lr_heads, keep optim.grad_clip > 0 or use train.mixed_precision=no, then re-run the same "
                f"command: it resumes from that checkpoint")

    def means(self) -> dict[str, float]:
        keys = sorted(self.sums)
        values = self.acc.reduce(torch.stack([self.sums[k] for k in keys]) / max(self.n, 1), "mean").tolist()
        self.sums, self.n = {}, 0
        return dict(zip(keys, values))


def _report(meter: _Meter, done: int, bar, writer, run_dir: Path, seconds: float) -> dict:
    meter.raise_if_bad()
    values = meter.means()
    if writer is not None:  # main process
        bar.set_postfix(G=f"{values['g_loss']:.3f}", D=f"{values['d_loss']:.3f}",
                        acc_real=f"{values['acc_real']:.2f}", acc_fake=f"{values['acc_fake']:.2f}")
        with open(run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": done, **values, "seconds": round(seconds, 2)}) + "\n")
        for k, v in values.items():
            writer.add_scalar(k, v, done)
    return values


def _checkpoint(acc, meter: _Meter, p: _Parts, cfg, ckpt_dir: Path, done: int, seconds: float) -> None:
    meter.raise_if_bad()  # never checkpoint a state that saw a NaN
    if acc.is_main_process or p.sharded:  # sharded states are gathered by every process, written by the main one
        save_checkpoint(ckpt_dir, done, p.modules(), p.optimizers(), {"elapsed": seconds, "config": C.to_dict(cfg)},
                        cfg.train.keep_checkpoints, write=acc.is_main_process)
    acc.wait_for_everyone()


def _start_run_folder(run_dir: Path, cfg, start: int) -> None:
    """config.yaml, and metrics.jsonl without the lines a resumed run will log again."""
    run_dir.mkdir(parents=True, exist_ok=True)
    C.save(cfg, run_dir / "config.yaml")
    path = run_dir / "metrics.jsonl"
    if path.is_file():
        keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= start]
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        os.replace(tmp, path)


def _preview_model(p: _Parts) -> torch.nn.Module:
    return p.ema.shadow if p.ema is not None else S._unwrap(p.student)


@torch.no_grad()
def save_preview(model, vae, cond: TextEmbeddings, steps: int, latent_shape, path: Path, seed: int = 0,
                 shift: float = 1.0) -> Path:
    """The student's samples of fixed prompts ``cond`` (re-noising sampler over its ``steps``-step grid shifted by
    ``shift``, no guidance, fixed noise) decoded by ``vae``, as one row of a PNG grid."""
    from ladd.evaluation.grid import save_grid
    from ladd.nano.recipe import to_uint8
    from ladd.sampling import renoise

    device = next(model.parameters()).device
    gens = [torch.Generator().manual_seed(sample_seed(seed, i, 0x9E1D)) for i in range(len(cond))]
    noise = torch.stack([torch.randn(tuple(latent_shape), generator=g) for g in gens]).to(device)
    times = flow.sampling_times("renoise", steps, shift)
    x0 = renoise(model, noise, times, cond.to(device), generator=gens)
    vae_device = next(vae.parameters()).device
    return save_grid(to_uint8(vae.decode(x0.to(vae_device))), path, ncols=len(cond))


def _stop_requested(acc, flag: dict, at_log: bool) -> bool:
    """Single process: at once. Several: agreed at log steps (a collective), so all stop at the same step."""
    if acc.num_processes == 1:
        return flag["set"]
    if not at_log:
        return False
    return bool(acc.reduce(torch.tensor([float(flag["set"])], device=acc.device), "sum").item() > 0)
