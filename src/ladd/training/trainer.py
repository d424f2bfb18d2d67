"""The one training loop, for every method (ladd.methods.base), on accelerate (1 CPU, N GPUs, mixed precision,
FSDP: the same code). It never imports a method: it knows modules, optimizers, updates and phases by name.

An iteration: for each of the method's updates, every micro-batch (``train.grad_accum``) runs the update's
phases, each loss backpropagated; then per optimizer: gradient clipping, ``step``, its LR schedule, ``zero_grad``;
at the end the EMA of the exported module. Phases as in NVlabs/edm: step, report, preview, checkpoint.

Run folder (docs/architecture.md): ``config.yaml`` (resolved), ``log.txt`` (ladd.runtime), ``metrics.jsonl``,
``tb/`` (TensorBoard), ``samples/<step>.png``, ``checkpoints/`` (ladd.training.checkpoint).

Resume by re-running the same command: the newest checkpoint is loaded (modules, optimizers, schedules, EMA,
RNG). Every random draw of iteration ``step`` comes from generators seeded by ``(seed, step, micro)`` (batch,
method draws), from which each process keeps its slice of the global batch (ladd.draws), so a resumed run repeats
an uninterrupted one and N processes train on the same numbers as one. Ctrl-C finishes the current iteration,
writes a checkpoint and stops (a second Ctrl-C stops at once). A NaN or inf loss stops the run without
checkpointing the broken state. Metrics stay on the device between log steps: no host sync inside an iteration.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from ladd import config as C
from ladd.data.shards import sample_seed
from ladd.draws import Draws
from ladd.models.wrap import is_sharded, unwrap, without_ddp
from ladd.runtime import deferred_interrupt, process_state
from ladd.training.checkpoint import latest_checkpoint, load_latest_good, save_checkpoint
from ladd.training.config import FSDP_EMA
from ladd.training.contract import Context
from ladd.training.ema import EMA, ema_name, updates_to_reach, warmed_decay
from ladd.training.optim import build_optimizer, build_schedule

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or inf; the run stopped and the newest checkpoint is the last good state."""


@dataclass
class TrainResult:
    modules: dict              # the trained modules by name (unwrapped; FSDP: this process's shards)
    ema: EMA | None
    step: int
    seconds: float             # wall time over all resumes
    metrics: dict              # the last logged metrics
    export_model: torch.nn.Module | None  # what to ship (the method's ``shipped``)
    # FSDP: the modules above hold only this process's shards; the full weights are in the final checkpoint
    # (ladd.distill.export.load_run_student reads them)
    sharded: bool = False


@dataclass
class _Run:
    """The prepared state of a run: modules (maybe DDP/FSDP-wrapped), optimizers and schedules by name."""
    modules: dict
    optimizers: dict
    schedules: dict
    owners: dict               # optimizer name -> names of the modules it steps
    ema: EMA | None
    sharded: bool = field(default=False)
    extra_emas: dict = field(default_factory=dict)  # train.extra_emas by checkpoint name (ladd.training.ema.ema_name)

    def checkpoint_modules(self) -> dict:
        mods = {name: without_ddp(m) for name, m in self.modules.items()}
        return {**mods, **({} if self.ema is None else {"ema": self.ema}), **self.extra_emas}

    def checkpoint_optimizers(self) -> dict:
        return {name: (without_ddp(self.modules[self.owners[name][0]]), opt)
                for name, opt in self.optimizers.items()}

    def unwrapped(self) -> dict:
        return {name: unwrap(m) for name, m in self.modules.items()}


Hook = tuple[int, Callable[[torch.nn.Module, int], object]]


def train(cfg, method, data, run_dir: str | Path, hooks: list[Hook] = ()) -> TrainResult:
    """Train ``method`` (a ladd.methods.base.Method) on ``data`` (``batch(size, seed, step, micro, rank, world)``
    -> a ladd.data.batch.Batch; ``to(device)``) per ``cfg.train`` and ``cfg.optim`` in ``run_dir``, resuming from
    its newest checkpoint. ``cfg`` is saved as ``config.yaml`` and in every checkpoint. ``hooks``: ``(every, fn)``
    pairs; the main process calls ``fn(model to ship, iteration)`` every ``every`` iterations (sample grids,
    validation), before that iteration's checkpoint, with the training RNG state restored afterwards."""
    from torch.utils.tensorboard import SummaryWriter

    run_dir, tc = Path(run_dir), cfg.train
    acc = make_accelerator(cfg)
    micro_bs = tc.micro_batch(acc.num_processes)
    run = prepare(acc, cfg, method)
    data = data.to(acc.device) if data is not None else None
    ckpt_dir = run_dir / "checkpoints"
    start, elapsed, overhead = _resume(ckpt_dir, run, cfg) if run.modules else (0, 0.0, 0.0)
    steps = tc.steps if run.modules else 0  # a method that trains nothing runs no iteration
    main = acc.is_main_process
    if main:
        _start_run_folder(run_dir, cfg, start)
        if run.sharded and hooks:
            log.warning("no preview grids or validation while the student is FSDP-sharded")
    writer = SummaryWriter(str(run_dir / "tb"), purge_step=start + 1) if main else None
    meter = _Meter(acc, ckpt_dir)
    bar = tqdm(total=steps, initial=start, desc=f"ladd distill ({type(method).__name__})", disable=not main,
               dynamic_ncols=True, mininterval=1)
    # ``seconds``: wall time over all resumes; ``train_seconds``: without previews, validation and checkpoints
    # (what methods are compared by: ladd bench)
    t0, done, last, clock = time.perf_counter() - elapsed, start, {}, _Overhead(overhead)
    with deferred_interrupt() as interrupted:
        try:
            for step in range(start, steps):
                metrics, losses = iteration(acc, method, run, data, cfg, step, micro_bs)
                meter.add(metrics, losses, step)
                done = step + 1
                bar.update(1)
                at_log = done % tc.log_every == 0 or done == steps
                if at_log:
                    last = _report(meter, done, bar, writer, run_dir, time.perf_counter() - t0, method.progress,
                                   clock.seconds)
                due = [fn for every, fn in hooks if every and done % every == 0]
                if main and due and not run.sharded:
                    with torch.random.fork_rng(devices=[]), clock:  # a hook never moves the random stream
                        for fn in due:
                            fn(method.shipped(run.unwrapped(), run.ema), done)
                if done % tc.ckpt_every == 0 or done == steps:
                    with clock:
                        _checkpoint(acc, meter, run, cfg, ckpt_dir, done, time.perf_counter() - t0, clock.seconds)
                if _stop_requested(acc, interrupted, at_log):
                    if done % tc.ckpt_every and done != steps:
                        _checkpoint(acc, meter, run, cfg, ckpt_dir, done, time.perf_counter() - t0, clock.seconds)
                    log.warning("interrupted: checkpoint at step %d written; re-run the same command to resume",
                                done)
                    raise KeyboardInterrupt
        finally:
            bar.close()
            if writer is not None:
                writer.close()
    shipped = None if run.sharded else method.shipped(run.unwrapped(), run.ema)
    return TrainResult(run.unwrapped(), run.ema, done, time.perf_counter() - t0, last, shipped, run.sharded)


def make_accelerator(cfg):
    """The run's ``accelerate.Accelerator`` (mixed precision, accumulation, CPU-only launches) per ``cfg.train``."""
    from accelerate import Accelerator

    state = process_state()
    return Accelerator(mixed_precision=cfg.train.mixed_precision, gradient_accumulation_steps=cfg.train.grad_accum,
                       cpu=state.device.type == "cpu")


def prepare(acc, cfg, method) -> _Run:
    """The method's modules, optimizers (``cfg.optim``), schedules and EMA, prepared by ``acc``; the frozen
    modules placed. ``train`` calls it; benchmarks time ``iteration`` on what it returns."""
    from accelerate.utils import DistributedType

    if acc.distributed_type == DistributedType.FSDP and cfg.train.keeps_ema():
        raise C.ConfigError(FSDP_EMA)
    if cfg.train.gradient_checkpointing:  # set before the method copies the teacher: the student inherits it
        for m in method.frozen().values():
            if hasattr(m, "enable_gradient_checkpointing"):  # the teacher; not a VAE or a feature network
                m.enable_gradient_checkpointing()
    # Under FSDP the modules stay where they are built (host memory; meta on the processes that load no weights)
    # and FSDP moves each unit to the GPU as it shards it, so no full-size teacher or student ever reaches a GPU
    # (docs/real-models.md, "FSDP")
    fsdp = acc.distributed_type == DistributedType.FSDP
    modules = method.modules(None if fsdp else acc.device)
    owners = method.optimizers()
    optimizers = {name: build_optimizer([modules[m] for m in mods], cfg.optim[name]) for name, mods in owners.items()}
    schedules = {name: build_schedule(opt, cfg.optim[name], cfg.train.steps) for name, opt in optimizers.items()}
    ema = (EMA(modules[method.export], cfg.train.ema_decay, cfg.train.ema_warmup)
           if cfg.train.ema_decay > 0 and modules else None)
    if ema is not None and warmed_decay(ema.decay, cfg.train.steps, ema.warmup) < ema.decay:  # nano.yaml's 0.995
        log.info("EMA: train.ema_decay=%g applies from update %d on; in these %d steps the warm-up min(decay, "
                 "n / (n + train.ema_warmup)) sets it, ending at %.4f, so a higher decay would give the same student",
                 ema.decay, updates_to_reach(ema.decay, ema.warmup), cfg.train.steps,
                 warmed_decay(ema.decay, cfg.train.steps, ema.warmup))
    extra = {ema_name(d, w): EMA(modules[method.export], d, w) for d, w in cfg.train.extra_emas} if modules else {}
    prepared = acc.prepare(*modules.values(), *optimizers.values()) if modules else ()
    if len(modules) + len(optimizers) == 1:
        prepared = (prepared,)  # accelerate returns a single object unwrapped
    modules = dict(zip(modules, prepared[:len(modules)]))
    optimizers = dict(zip(optimizers, prepared[len(modules):]))
    method.attach(modules, {name: _prepare_frozen(acc, m) for name, m in method.frozen().items()})
    return _Run(modules, optimizers, schedules, owners, ema, any(is_sharded(m) for m in modules.values()), extra)


def _prepare_frozen(acc, module: torch.nn.Module) -> torch.nn.Module:
    """A frozen module (the teacher) as it runs in training: on the device; in bf16 under bf16 mixed precision
    (it has no optimizer, so needs no fp32 master weights: half the memory; cast before it moves), and sharded like
    the student under FSDP (accelerate wraps it per the launch config and FSDP moves only its shards to the GPU;
    methods call it through ``__call__`` so the shards are gathered). DDP needs nothing: a frozen module has no
    gradients to sync."""
    from accelerate.utils import DistributedType

    if acc.mixed_precision == "bf16":
        module = module.to(torch.bfloat16)
    if acc.distributed_type == DistributedType.FSDP:
        return acc.prepare_model(module)  # FSDP places each unit's shard (device_id), from host memory
    return module.to(acc.device)


class _Overhead:
    """Seconds spent inside ``with clock:`` blocks (hooks, checkpoints), over all resumes."""

    def __init__(self, seconds: float = 0.0):
        self.seconds = seconds

    def __enter__(self):
        self._t = time.perf_counter()

    def __exit__(self, *exc):
        self.seconds += time.perf_counter() - self._t


def _resume(ckpt_dir: Path, run: _Run, cfg) -> tuple[int, float, float]:
    """``(step, elapsed seconds, overhead seconds)`` of the newest good checkpoint (zeros without one)."""
    state = load_latest_good(ckpt_dir, run.checkpoint_modules(), run.checkpoint_optimizers())
    if state is None:
        return 0, 0.0, 0.0
    path = ckpt_dir / f"step-{int(state['step']):06d}"
    for name, schedule in run.schedules.items():
        schedule.load_state_dict(state["schedules"][name])
    old, new = _flat(state["config"]), _flat(C.to_dict(cfg))
    changed = {k: (old.get(k), v) for k, v in new.items() if old.get(k) != v}
    if changed:
        log.warning("resuming %s with a changed config: %s", path, changed)
    return int(state["step"]), float(state["elapsed"]), float(state.get("overhead", 0.0))


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


def iteration(acc, method, run: _Run, data, cfg, step: int, micro_bs: int) -> tuple[dict, list]:
    """One iteration: every update of the method over ``train.grad_accum`` micro-batches. Returns the metrics
    (device scalars, averaged over micro-batches) and the phases' losses (for the finiteness check)."""
    rank, world, seed, accum = acc.process_index, acc.num_processes, cfg.train.seed, cfg.train.grad_accum
    out, losses = {}, []
    for u, update in enumerate(method.updates(step)):
        modules = [run.modules[m] for name in update.optimizers for m in run.owners[name]]
        per_micro = []
        for k in range(accum):
            micro = u * accum + k
            batch = data.batch(micro_bs, seed, step, micro, rank, world)
            # the same numbers on every process, each keeping its slice (ladd.draws)
            draws = Draws(torch.Generator(acc.device).manual_seed(sample_seed(seed, 0, step, micro)), rank, world)
            ctx, metrics = Context(step, draws, run.ema), {}
            with acc.accumulate(*modules), acc.autocast():
                for phase in update.phases:
                    result = method.loss(phase, batch, ctx)
                    acc.backward(result.loss)
                    losses.append(result.loss.detach())
                    metrics.update(result.metrics)
            per_micro.append(metrics)
        out.update({k: torch.stack([m[k].float() for m in per_micro]).mean() for k in per_micro[0]})
        for name in update.optimizers:  # after the last micro-batch accelerate has synced the gradients
            clip = cfg.optim[name].grad_clip
            if clip > 0:
                params = [p for m in run.owners[name] for p in run.modules[m].parameters()]
                out[f"{name}_grad_norm"] = torch.as_tensor(acc.clip_grad_norm_(params, clip)).float()
        for name in update.optimizers:
            run.optimizers[name].step()
            run.schedules[name].step()
        for name in update.optimizers:
            run.optimizers[name].zero_grad(set_to_none=True)
    for ema in ([run.ema] if run.ema is not None else []) + list(run.extra_emas.values()):
        ema.update(unwrap(run.modules[method.export]))
    return out, losses


class _Meter:
    """Per-iteration metrics summed on the device, and the first step whose loss was not finite."""

    def __init__(self, acc, ckpt_dir: Path):
        self.acc, self.ckpt_dir = acc, ckpt_dir
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}  # per metric: a phase that runs every N iterations is averaged over its own
        self.bad_step = torch.full((), -1, dtype=torch.long, device=acc.device)

    def add(self, metrics: dict, losses: list, step: int) -> None:
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0) + v.detach().float()
            self.counts[k] = self.counts.get(k, 0) + 1
        finite = torch.stack([torch.isfinite(loss).all() for loss in losses]).all()
        self.bad_step = torch.where(~finite & (self.bad_step < 0), step, self.bad_step)

    def raise_if_bad(self) -> None:
        """One host sync (collective: every process must call it at the same steps)."""
        bad = int(self.acc.gather(self.bad_step[None]).max())
        if bad >= 0:
            good = latest_checkpoint(self.ckpt_dir)
            raise NonFiniteLossError(
                f"non-finite loss at iteration {bad + 1}: the run stopped and this state was not saved. The last good "
                f"checkpoint is {good or 'none (no checkpoint was written yet)'}. Lower the learning rates "
                f"(optim.<name>.lr), keep optim.<name>.grad_clip > 0 or use train.mixed_precision=no, then re-run the "
                f"same command: it resumes from that checkpoint")

    def means(self) -> dict[str, float]:
        keys = sorted(self.sums)
        if not keys:
            return {}
        values = self.acc.reduce(torch.stack([self.sums[k] / self.counts[k] for k in keys]), "mean").tolist()
        self.sums, self.counts = {}, {}
        return dict(zip(keys, values))


def _report(meter: _Meter, done: int, bar, writer, run_dir: Path, seconds: float, progress=(),
            overhead: float = 0.0) -> dict:
    meter.raise_if_bad()
    values = meter.means()
    if writer is not None:  # main process
        bar.set_postfix({k: f"{values[k]:.3f}" for k in progress if k in values})
        with open(run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": done, **values, "seconds": round(seconds, 2),
                                "train_seconds": round(seconds - overhead, 2)}) + "\n")
        for k, v in values.items():
            writer.add_scalar(k, v, done)
    return values


def _checkpoint(acc, meter: _Meter, run: _Run, cfg, ckpt_dir: Path, done: int, seconds: float,
                overhead: float = 0.0) -> None:
    meter.raise_if_bad()  # never checkpoint a state that saw a NaN
    if acc.is_main_process or run.sharded:  # sharded states are gathered by every process, written by the main one
        extra = {"elapsed": seconds, "overhead": overhead, "config": C.to_dict(cfg),
                 "schedules": {name: s.state_dict() for name, s in run.schedules.items()}}
        save_checkpoint(ckpt_dir, done, run.checkpoint_modules(), run.checkpoint_optimizers(), extra,
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


def _stop_requested(acc, flag: dict, at_log: bool) -> bool:
    """Single process: at once. Several: agreed at log steps (a collective), so all stop at the same step."""
    if acc.num_processes == 1:
        return flag["set"]
    if not at_log:
        return False
    return bool(acc.reduce(torch.tensor([float(flag["set"])], device=acc.device), "sum").item() > 0)
