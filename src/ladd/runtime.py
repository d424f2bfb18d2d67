"""What a long run needs from its process: its place among the processes of a launch, Ctrl-C (or SIGTERM, what
`kill` and cluster schedulers send) turned into a clean stop, and its log records in the run folder."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from pathlib import Path

log = logging.getLogger(__name__)


def process_state():
    """accelerate's process state (rank, world size, device). CPU-only multi-process runs (``torchrun`` or
    ``accelerate launch --cpu``) need ``cpu=True``, which accelerate's ``PartialState`` does not infer itself."""
    import torch
    from accelerate import PartialState

    cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") or (
        int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available())
    return PartialState(cpu=cpu)


def end_processes() -> None:
    """Leave the launch's process group, if this process joined one (``torchrun`` / ``accelerate launch``). A
    gloo group left open at interpreter exit can abort the process as its threads are torn down ("terminate called
    without an active exception", exit -6, seen in CI) after all its work was done and written."""
    torch = sys.modules.get("torch")  # a command that never imported torch joined no group
    if torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def fsdp_launch() -> bool:
    """Whether this process was started by an accelerate FSDP launch (known before any model is built)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"


def loads_on_rank0_only(state) -> bool:
    """Whether this process of an FSDP launch skips reading the model weights: accelerate's
    ``fsdp_cpu_ram_efficient_loading`` asks that only the first process load them, the others build the models
    empty (meta) and FSDP fills them from it as it shards (``sync_module_states``; FSDP2 broadcasts the state
    dict), so that host memory holds one copy of the teacher instead of one per GPU (docs/real-models.md)."""
    return (fsdp_launch() and state.process_index != 0
            and os.environ.get("FSDP_CPU_RAM_EFFICIENT_LOADING", "").lower() in ("1", "true"))


DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def pick_device(name: str | None = None):
    """``name`` ("cpu", "cuda", "cuda:1", ...) as a torch device; None or "auto": the GPU when there is one, else
    the CPU. A GPU asked for on a machine without one is a clear error, before any model loads."""
    import torch

    from ladd.config import ConfigError

    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r} is not a device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: this machine has no CUDA GPU (torch {torch.__version__}); use --device "
                          "cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s); use cuda:0 to "
                          f"cuda:{torch.cuda.device_count() - 1}")
    return device


def pick_dtype(name: str | None, device):
    """The weights' dtype for inference: "fp32", "bf16", "fp16", or None / "auto": bf16 on a GPU (what SD3-class
    model cards run at), fp32 on the CPU (bf16 matmuls are slower there on most CPUs)."""
    import torch

    from ladd.config import ConfigError

    if name in (None, "", "auto"):
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ConfigError(f"--dtype {name!r}: use auto, {', '.join(DTYPES)}")
    return getattr(torch, DTYPES[name])


def reset_peak_host_memory() -> bool:
    """Start a new peak of this process's resident memory (Linux: ``clear_refs`` 5 resets ``VmHWM``). False where
    the system cannot (the peak then counts from the process start)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_host_memory_gib() -> float | None:
    """This process's peak resident memory in GiB since the last ``reset_peak_host_memory`` (Linux ``VmHWM``;
    elsewhere the lifetime peak from ``getrusage``, or None)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20  # kB
    except OSError:
        pass
    try:
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux, bytes on macOS
        return peak / (2**30 if sys.platform == "darwin" else 2**20)
    except (ImportError, OSError):
        return None


@contextlib.contextmanager
def deferred_interrupt():
    """Turn the first Ctrl-C or SIGTERM into a flag checked between iterations (a state cut mid-update would not
    resume exactly); the second one interrupts at once. SIGTERM is handled too because a job started in the
    background (``nohup``, ``&``) ignores SIGINT, and schedulers (SLURM, Kubernetes) stop jobs with SIGTERM.
    Outside the main thread signals cannot be caught: no-op."""
    flag = {"set": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag["set"]:
            raise KeyboardInterrupt
        flag["set"] = True
        log.warning("%s: stopping after this iteration with a checkpoint (send it again to stop at once)",
                    "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name)

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


@contextlib.contextmanager
def log_to_file(path: str | Path, enabled: bool = True):
    """Copy the ``ladd`` loggers' records (INFO and up) into ``path``, the run folder's log.txt, while inside."""
    if not enabled:
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"))
    logger = logging.getLogger("ladd")
    old_level = logger.level
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()
        logger.setLevel(old_level)


@contextlib.contextmanager
def folder_lock(folder: str | Path, what: str, enabled: bool = True):
    """Hold an OS lock on ``folder/.lock`` while inside, so that a second ``ladd distill`` / ``ladd synth`` on the
    same folder stops at once instead of interleaving writes. The OS drops the lock when the process ends, so a
    crash leaves no stale lock. ``enabled=False`` (the other processes of one launch): no-op, one holder."""
    if not enabled:
        yield
        return
    import fcntl

    from ladd.config import ConfigError

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    f = open(folder / ".lock", "a+")
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise ConfigError(f"{folder} is in use by {holder} ({what}); wait for it to finish, or use another "
                              f"folder") from None
        f.truncate(0)
        f.write(f"process {os.getpid()}")
        f.flush()
        yield
    finally:
        f.close()  # releases the lock


def check_output(path: str | Path, name: str, kind: str = "dir") -> Path:
    """Fail at once, before any model loads, if output ``path`` (``kind`` "dir" or "file"; ``name``: the option
    that gave it, e.g. ``--out``) cannot be written: an existing path of the other kind, or a parent folder that
    cannot be created or written. Creates nothing."""
    from ladd.config import ConfigError

    path = Path(path)
    if kind == "dir" and path.exists() and not path.is_dir():
        raise ConfigError(f"{name} {path} is a file; give a folder (it is created if missing)")
    if kind == "file" and path.is_dir():
        raise ConfigError(f"{name} {path} is a folder; give a file name, e.g. {path / 'samples.png'}")
    probe = path if kind == "dir" and path.is_dir() else path.parent
    while not probe.exists() and probe != probe.parent:  # the nearest existing folder decides
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{name} {path}: {probe} is not a writable folder; choose another place")
    return path


@contextlib.contextmanager
def sigterm_as_interrupt():
    """SIGTERM (``kill``, schedulers) raises KeyboardInterrupt like Ctrl-C, so that the command says it stopped and
    how to resume instead of dying silently with code 143. For work whose outputs are atomic (``ladd synth``)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
