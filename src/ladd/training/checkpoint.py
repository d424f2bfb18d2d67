"""Full training-state checkpoints: ``<run>/checkpoints/step-000500/`` (format version 2).

    state.json            format, version, step, elapsed seconds, the resolved config, non-tensor optimizer state
    <module>.safetensors  one per module (student, heads, ema): its state_dict
    optim.safetensors     every optimizer's tensors, keys ``<optimizer>/<param index>/<name>`` (e.g. exp_avg)
    rng.safetensors       torch's CPU (and CUDA) RNG states

FSDP-sharded modules (an accelerate FSDP launch) are written *sharded*, each process its own part, with
``torch.distributed.checkpoint`` (DCP), so that neither saving nor resuming ever holds a full student or optimizer
in one process:

    <module>.dcp/         a sharded module's state (DCP: one ``.distcp`` file per process, ``.metadata``)
    optim-<name>.dcp/     the optimizer ``<name>`` of a sharded module, keyed by parameter name

DCP reshards on load: a run resumes on another process count, and ``ladd export`` reads the full student in one
process. The folder must be on a file system that every process sees.

Tensors are safetensors, the rest JSON: nothing is pickled, so loading runs no code; the exception is DCP's
``.metadata`` file (a pickle written by torch): resume only from checkpoints you wrote. A checkpoint is written to
``step-XXXXXX.tmp`` and renamed; only complete folders are ever named ``step-*``, so the newest one is always
loadable. Loading checks the format and every key and shape. (k-diffusion / edm keep the same two kinds apart:
this full state for resuming, and a slim export for using the model: ladd.distill.export.)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ladd.models.io import AssetError
from ladd.models.wrap import is_sharded

log = logging.getLogger(__name__)
FORMAT = "ladd-train-state"
VERSION = 2  # 2: optimizers named by the method (e.g. student, heads), LR schedules in state.json


class CheckpointError(AssetError):
    """A checkpoint does not match the run (other format, model or shapes); the CLI prints it as a usage error."""


def checkpoint_dirs(ckpt_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [p for p in ckpt_dir.glob("step-*") if p.is_dir() and p.name[5:].isdigit() and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(ckpt_dir: str | Path) -> Path | None:
    dirs = checkpoint_dirs(ckpt_dir)
    return dirs[-1] if dirs else None


SHARDED = ".dcp"  # the suffix of a DCP folder in a checkpoint


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _dcp_save(state: dict, folder: Path) -> None:
    """Each process writes its part of ``state`` (collective); the coordinator writes ``.metadata`` last, once
    every part is written."""
    import torch.distributed.checkpoint as dcp

    dcp.save(state, checkpoint_id=folder)


def _dcp_load(state: dict, folder: Path) -> None:
    """Fill ``state`` (its keys and shapes, sharded or not) in place from a DCP folder; every key must be there."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    single = not (dist.is_available() and dist.is_initialized())
    with warnings.catch_warnings():  # one process reading a sharded checkpoint is intended here (export, resume)
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=folder, no_dist=single)


def _flatten_optimizer(name: str, state_dict: dict) -> tuple[dict, dict]:
    """(tensors, JSON) of an optimizer ``state_dict``: tensors keyed ``name/param/key``, the rest as JSON."""
    tensors, scalars = {}, {}
    for pid, st in state_dict["state"].items():
        for key, value in st.items():
            if torch.is_tensor(value):
                tensors[f"{name}/{pid}/{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{pid}/{key}"] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in state_dict["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def _unflatten_optimizer(name: str, tensors: dict, meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        owner, pid, k = key.split("/", 2)
        if owner == name:
            state.setdefault(_param_key(pid), {})[k] = value
    for key, value in meta["scalars"].items():
        pid, k = key.split("/", 1)
        state.setdefault(_param_key(pid), {})[k] = value
    # torch's optimizers keep betas as tuples; JSON made them lists
    groups = [{k: (tuple(v) if isinstance(v, list) and k != "params" else v) for k, v in g.items()}
              for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def _param_key(pid: str) -> int | str:
    """Optimizer state keys: parameter indices (torch's ``state_dict``) or names (the gathered FSDP state)."""
    return int(pid) if pid.isdigit() else pid


def _rng_state() -> dict[str, torch.Tensor]:
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return rng


def save_checkpoint(ckpt_dir: str | Path, step: int, modules: dict[str, torch.nn.Module],
                    optimizers: dict[str, tuple[torch.nn.Module, torch.optim.Optimizer]], extra: dict,
                    keep: int = 2, write: bool = True) -> Path:
    """Write ``ckpt_dir/step-{step:06d}`` atomically; keep the newest ``keep`` checkpoints. ``optimizers`` map a
    name to ``(the module it steps, the optimizer)``; ``extra`` (JSON-able: config, elapsed seconds, ...) goes
    into state.json. With FSDP-sharded modules every process must call this: each writes its part of the sharded
    modules and optimizers (DCP), and the one with ``write`` writes the rest and names the folder."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    ckpt_dir = Path(ckpt_dir)
    final = ckpt_dir / f"step-{step:06d}"
    tmp = final.with_name(final.name + ".tmp")
    sharded = sorted(name for name, module in modules.items() if is_sharded(module))
    sharded_opts = sorted(name for name, (module, _) in optimizers.items() if is_sharded(module))
    if write:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    if sharded or sharded_opts:
        _barrier()  # the folder exists for every process
    for name in sharded:
        _dcp_save(get_model_state_dict(modules[name]), tmp / f"{name}{SHARDED}")
    for name in sharded_opts:
        _dcp_save(get_optimizer_state_dict(*optimizers[name]), tmp / f"optim-{name}{SHARDED}")
    if not write:
        return final
    for name, module in modules.items():
        if name not in sharded:
            save_file({k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()},
                      tmp / f"{name}.safetensors")
    opt_tensors, opt_meta = {}, {}
    for name, (module, opt) in optimizers.items():
        if name not in sharded_opts:
            tensors, opt_meta[name] = _flatten_optimizer(name, opt.state_dict())
            opt_tensors.update(tensors)
    save_file(opt_tensors, tmp / "optim.safetensors")
    save_file(_rng_state(), tmp / "rng.safetensors")
    state = {"format": FORMAT, "version": VERSION, "step": step, "modules": sorted(modules),
             "optimizers": opt_meta, "sharded_optimizers": sharded_opts, **extra}
    (tmp / "state.json").write_text(json.dumps(state, indent=1) + "\n")
    shutil.rmtree(final, ignore_errors=True)  # only after a crash right after a rename of the same step
    os.replace(tmp, final)
    for old in checkpoint_dirs(ckpt_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def restore_module(module: torch.nn.Module, ckpt: Path, name: str) -> None:
    """Module ``name`` of checkpoint folder ``ckpt`` into ``module`` (sharded or not), from whichever form the
    checkpoint holds it in: ``<name>.dcp`` (written sharded) or ``<name>.safetensors``."""
    folder = Path(ckpt) / f"{name}{SHARDED}"
    if not folder.is_dir():
        return load_module(module, Path(ckpt) / f"{name}.safetensors")
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    state = get_model_state_dict(module)  # this process's shards (or the whole module), filled in place
    try:
        _dcp_load(state, folder)
    except Exception as e:  # DCP names the missing keys or the shapes that differ
        raise CheckpointError(f"{folder} does not match the model ({str(e)[:300]}); the run folder holds a "
                              f"checkpoint of another model or config: use a new paths.run_dir") from None
    set_model_state_dict(module, state)


def load_module(module: torch.nn.Module, path: Path) -> None:
    """``module``'s state_dict from a safetensors file, after checking every key and shape (an FSDP-sharded
    module: every process loads the full file, torch checks the keys and keeps each process's shard)."""
    state = load_file(path)
    if is_sharded(module):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(module, state, options=StateDictOptions(full_state_dict=True))
        return
    own = module.state_dict()
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own.keys() & state.keys() if own[k].shape != state[k].shape]
    if missing or extra or wrong:
        raise CheckpointError(f"{path} does not match the model: missing {missing[:3]}, unexpected {extra[:3]}, "
                              f"wrong shapes {wrong[:3]}; the run folder holds a checkpoint of another model "
                              f"or config: use a new paths.run_dir or delete {path.parent.parent}")
    module.load_state_dict(state)


def load_checkpoint(path: str | Path, modules: dict[str, torch.nn.Module],
                    optimizers: dict[str, tuple[torch.nn.Module, torch.optim.Optimizer]],
                    restore_rng: bool = True) -> dict:
    """Load a checkpoint folder into ``modules`` and ``optimizers`` (as for ``save_checkpoint``; key and shape
    checked); returns state.json."""
    path = Path(path)
    state = json.loads((path / "state.json").read_text())
    _check_contents(path, state, modules, optimizers)
    for name, module in modules.items():
        restore_module(module, path, name)
    opt_tensors = load_file(path / "optim.safetensors")
    for name, (module, opt) in optimizers.items():
        if name in state.get("sharded_optimizers", []):
            from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

            opt_state = get_optimizer_state_dict(module, opt)  # initialises the moments' shapes, filled in place
            _dcp_load(opt_state, path / f"optim-{name}{SHARDED}")
            set_optimizer_state_dict(module, opt, opt_state)
            continue
        opt_state = _unflatten_optimizer(name, opt_tensors, state["optimizers"][name])
        if is_sharded(module):
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(module, opt, opt_state, options=StateDictOptions(full_state_dict=True))
        else:
            opt.load_state_dict(opt_state)
    if restore_rng:
        rng = load_file(path / "rng.safetensors")
        torch.set_rng_state(rng["torch"])
        cuda = [rng[k] for k in sorted(rng) if k.startswith("cuda")]
        if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
    log.info("resumed from %s (step %d)", path, state["step"])
    return state


def verify(path: str | Path, names) -> None:
    """Check a checkpoint folder without loading it: state.json parses, and ``<name>.safetensors`` for each of
    ``names`` (modules, "optim", "rng") is there, with a header whose tensors end exactly at the end of the file
    (a truncated file fails), or, for a module written sharded, ``<name>.dcp/.metadata``, and likewise the sharded
    optimizers' folders. Raises ``CheckpointError`` naming the file."""
    import struct

    path = Path(path)
    try:
        state = json.loads((path / "state.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path / 'state.json'} is unreadable ({e})") from None
    folders = [name for name in names if (path / f"{name}{SHARDED}").is_dir()]
    if "optim" in names:
        folders += [f"optim-{name}" for name in state.get("sharded_optimizers", [])]
    for name in folders:
        if not (path / f"{name}{SHARDED}" / ".metadata").is_file():
            raise CheckpointError(f"{path / (name + SHARDED)} is damaged or missing (no .metadata)")
    for name in (n for n in names if n not in folders):
        f = path / f"{name}.safetensors"
        try:
            with open(f, "rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(n))
            end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
            if f.stat().st_size != 8 + n + end:
                raise ValueError(f"{f.stat().st_size} bytes, the header says {8 + n + end}")
        except (OSError, ValueError, struct.error) as e:
            raise CheckpointError(f"{f} is damaged or missing ({e})") from None


def newest_good(ckpt_dir: str | Path, names) -> Path | None:
    """The newest checkpoint whose state.json and ``names`` files ``verify``; a damaged newer one is reported by
    name and skipped (not moved: reading a run, as ``ladd export`` does, changes nothing in it)."""
    for path in reversed(checkpoint_dirs(ckpt_dir)):
        try:
            verify(path, names)
            return path
        except CheckpointError as e:
            log.warning("%s; using the previous checkpoint", e)
    return None


def _check_contents(path: Path, state: dict, modules: dict, optimizers: dict) -> None:
    """Raise CheckpointError when the checkpoint's state.json names another format, other modules or other
    optimizers than the run has: a changed config or another run's folder, not damage."""
    if state.get("format") != FORMAT or state.get("version") != VERSION:
        raise CheckpointError(f"{path} is a {state.get('format')} v{state.get('version')} checkpoint, not "
                              f"{FORMAT} v{VERSION}; use a new paths.run_dir")
    saved_optimizers = sorted([*state["optimizers"], *state.get("sharded_optimizers", [])])
    if sorted(modules) != state["modules"] or sorted(optimizers) != saved_optimizers:
        raise CheckpointError(f"{path} holds modules {state['modules']} and optimizers {sorted(state['optimizers'])}"
                              f", the run has {sorted(modules)} and {sorted(optimizers)} (e.g. train.ema_decay or "
                              f"train.extra_emas changed); use a new paths.run_dir or restore the old setting")


def load_latest_good(ckpt_dir: str | Path, modules: dict, optimizers: dict) -> dict | None:
    """``load_checkpoint`` of the newest checkpoint that ``verify`` passes; a damaged one (a truncated or missing
    file: a full disk, a copy cut short) is reported by name, renamed ``step-XXXXXX.bad`` and the next older one
    is tried, so nothing of a damaged checkpoint is ever loaded. Returns its state.json, or None when there is no
    good checkpoint. A checkpoint of another model or config still raises CheckpointError from the load: that
    is no damage but a wrong run folder, and so does one that holds other modules or optimizers (an EMA switched
    on or off):
    checked before the files, so that such a checkpoint is not taken for a damaged one and moved aside."""
    for path in reversed(checkpoint_dirs(ckpt_dir)):
        try:
            state = json.loads((path / "state.json").read_text())
        except (OSError, ValueError):
            state = None
        if isinstance(state, dict) and {"modules", "optimizers"} <= state.keys():  # else verify reports the damage
            _check_contents(path, state, modules, optimizers)
        try:
            verify(path, [*modules, "optim", "rng"])
        except CheckpointError as e:
            bad = path.with_name(path.name + ".bad")
            shutil.rmtree(bad, ignore_errors=True)
            os.replace(path, bad)
            log.warning("%s; moved %s to %s, resuming from the previous checkpoint", e, path.name, bad.name)
            continue
        return load_checkpoint(path, modules, optimizers)
    return None
