"""Save and load models as ``config.json`` + ``model.safetensors`` (+ an optional ``card.md``), atomically.

Loading checks every key and shape and says which file is wrong and how to fix it. Nothing is pickled.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


class AssetError(RuntimeError):
    """A model folder is missing, incomplete or corrupt."""


def save_model(model: torch.nn.Module, out_dir: str | Path, config: dict, card: str | None = None) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``out_dir`` via a temporary folder and a rename."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, tmp / "model.safetensors")
    (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if card is not None:
        (tmp / "card.md").write_text(card)
    return replace_dir(tmp, out_dir)


def default_mode(path: Path) -> None:
    """Give a file the mode a plain ``open`` would (0666 less the umask): safetensors, and so diffusers'
    ``save_pretrained``, write weights readable by their owner only (0600)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def replace_dir(tmp: Path, out_dir: Path) -> Path:
    """Move the finished folder ``tmp`` to ``out_dir``, replacing an old one; a crash never leaves a half folder.
    Its files get the umask's default mode, so that a saved or exported model is readable like any other file."""
    for f in tmp.rglob("*"):
        if f.is_file():
            default_mode(f)
    if out_dir.exists():
        old = out_dir.with_name(out_dir.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out_dir)
    return out_dir


def from_pretrained(cls, path: Path, what: str, **kwargs):
    """``cls.from_pretrained(path, **kwargs)`` (a diffusers folder) with missing, truncated or mismatched files
    as one ``AssetError`` naming the folder."""
    try:
        return cls.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as e:  # diffusers: OSError for missing or truncated files, ValueError for shapes
        where = path / kwargs["subfolder"] if kwargs.get("subfolder") else path
        raise AssetError(f"{where} is not a loadable diffusers {what} folder ({str(e).splitlines()[0]}); "
                         f"re-export it (ladd export) or restore it") from e


# a diffusers model folder's weights: one file, or save_pretrained's shards listed by an index (a large model)
DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json")
LADD_META = "ladd.json"  # ladd's keys of an exported diffusers folder (ladd_recommended, ...), beside config.json


def read_json(path: Path) -> dict:
    """A JSON file, or an AssetError naming it when it is not valid JSON."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise AssetError(f"{path} is not valid JSON ({e}); restore it from git or rebuild the asset") from e


def read_config(model_dir: str | Path) -> dict:
    """A model folder's ``config.json`` with the ``ladd_*`` keys of its ``ladd.json`` (an export keeps them apart,
    so that diffusers reads a config.json of its own keys only and warns of nothing)."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise AssetError(f"{path} is missing: {model_dir} is not a ladd model folder "
                         "(expected config.json + model.safetensors; rebuild it with its documented command)")
    config = read_json(path)
    meta = Path(model_dir) / LADD_META
    return {**config, **read_json(meta)} if meta.is_file() else config


def load_state(model: torch.nn.Module, model_dir: str | Path) -> torch.nn.Module:
    """Load ``model.safetensors`` into ``model`` with strict key and shape checks."""
    path = Path(model_dir) / "model.safetensors"
    if not path.is_file():
        raise AssetError(f"{path} is missing; rebuild the asset with the command in {Path(model_dir) / 'card.md'}")
    try:
        state = load_file(path)
    except Exception as e:  # safetensors raises several types for truncated or garbage files
        raise AssetError(f"{path} is corrupt ({e}); restore it from git or rebuild the asset") from e
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    wrong = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own.keys() & state.keys() if own[k].shape != state[k].shape]
    if missing or extra or wrong:
        raise AssetError(f"{path} does not match its config.json: missing {missing[:3]}, unexpected {extra[:3]}, "
                         f"wrong shapes {wrong[:3]}; the two files come from different models")
    model.load_state_dict(state)
    return model
