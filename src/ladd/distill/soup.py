"""``ladd soup``: the weight average of several exported students of one teacher (a "model soup", Wortsman et al.
2022, arXiv 2203.05482) as a new model folder that ``ladd eval`` / ``ladd sample`` / diffusers load like any export.

The students must share the architecture (same tensor names and shapes) and their initialisation (every ladd
student starts as a copy of its teacher, or from ``student.init``), or the average is meaningless. The soup takes
the first folder's config, scheduler and card setting (``ladd.json``: steps, sampler, grid shifts), with its relative
paths (``ladd_vae``, ``ladd_teacher``) rewritten for the new folder, and its weight files' layout (one file, or a
large model's shards and their index, averaged one file at a time); its card says what it averages. Measured in
docs/experiments/student-gap.md (sessions 37 and 54): two runs of one recipe that differ in the regression weight
average to a student more aligned than either at 2 and 4 steps. No training, no data: seconds on a CPU.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import ExitStack
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

from ladd.config import ConfigError
from ladd.data.provenance import weights_files
from ladd.models.io import LADD_META, AssetError, replace_dir

PATHS = ("ladd_vae", "ladd_teacher")  # ladd.json entries relative to the model folder
SOUP_MARK = "# A weight average of"  # the first line of a soup's card: an earlier soup may be replaced


def soup_weights(weights: list[float] | None, count: int) -> list[float]:
    """``weights`` checked (one non-negative weight per folder, summing to 1), or equal weights for ``None``."""
    if weights is None:
        return [1.0 / count] * count
    if len(weights) != count or min(weights) < 0 or abs(sum(weights) - 1) > 1e-6:
        raise ConfigError(f"--weights {','.join(f'{w:g}' for w in weights)}: give one non-negative weight per "
                          f"folder ({count}), summing to 1, e.g. {','.join([f'{1 / count:g}'] * count)}")
    return list(weights)


def weight_map(folder: Path) -> dict[str, Path]:
    """Tensor name -> the file holding it, over the export's weight files (one file or save_pretrained's shards,
    ladd.data.provenance.weights_files: AssetError for a folder without weights or with a shard missing)."""
    out = {}
    for path in weights_files(folder):
        with safe_open(path, "pt") as f:
            out.update(dict.fromkeys(f.keys(), path))
    return out


def average(folders: list[Path], weights: list[float], out: Path) -> None:
    """Write into ``out`` the weighted mean of the folders' weights, tensor by tensor (in float64, cast back), in
    the first folder's files (one, or its shards with its index): one file's tensors in memory at a time."""
    maps = [weight_map(f) for f in folders]
    first = maps[0]
    with ExitStack() as stack:
        opened = {}

        def tensor(m: dict[str, Path], name: str):  # a lazy handle on one tensor of one student
            if m[name] not in opened:
                opened[m[name]] = stack.enter_context(safe_open(m[name], "pt"))
            return opened[m[name]]

        for f, m in zip(folders[1:], maps[1:]):
            if m.keys() != first.keys() or any(tensor(m, k).get_slice(k).get_shape()
                                               != tensor(first, k).get_slice(k).get_shape() for k in first):
                raise AssetError(f"{f} does not hold the tensors of {folders[0]} (names or shapes differ): a soup "
                                 "needs students of one architecture, exported by `ladd export`")
        for path in sorted(set(first.values())):
            part = {}
            for k in (k for k, v in first.items() if v == path):
                ts = [tensor(m, k).get_tensor(k) for m in maps]
                part[k] = sum(w * t.double() for w, t in zip(weights, ts)).to(ts[0].dtype).contiguous()
            save_file(part, out / path.name, metadata={"format": "pt"})


def _check_out(out: Path, folders: list[Path], overwrite: bool) -> None:
    if any(out.resolve() == f.resolve() for f in folders):
        raise ConfigError(f"--out {out} is one of the students averaged; choose a new folder")
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    card = out / "card.md"
    earlier = card.is_file() and card.read_text().startswith(SOUP_MARK)
    if not (earlier or overwrite):
        raise ConfigError(f"--out {out} is not empty and is not an earlier soup; choose a new folder, or pass "
                          "--overwrite to replace it")


def make_soup(folders: list[str | Path], out: str | Path, weights: list[float] | None = None,
              overwrite: bool = False) -> Path:
    """Write the weighted mean of the exported students ``folders`` to ``out`` (atomically: a mismatch or a crash
    leaves nothing behind); ``out`` must be new, empty or an earlier soup (``overwrite``: anything)."""
    folders, out = [Path(f) for f in folders], Path(out)
    if len(folders) < 2:
        raise ConfigError("give at least two exported students to average")
    missing = [str(f) for f in folders if not (f / LADD_META).is_file()]
    if missing:
        raise AssetError(f"{', '.join(missing)}: not exported students (no {LADD_META}); pass `ladd export` folders "
                         "or a run's export/")
    weights = soup_weights(weights, len(folders))
    _check_out(out, folders, overwrite)

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    first = folders[0]
    # not the first's weights, nor its LoRA adapters (lora/, of a LoRA run's export): the average is of the merged
    # weights only
    shutil.copytree(first, tmp, ignore=shutil.ignore_patterns("diffusion_pytorch_model*.safetensors", "card.md",
                                                              "ladd_export.json", "lora"))
    try:
        average(folders, weights, tmp)
    except BaseException:  # a mismatch or an interruption leaves nothing behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    meta = json.loads((first / LADD_META).read_text())
    for key in PATHS:  # relative to the first folder -> relative to the soup
        if key in meta and not os.path.isabs(meta[key]):
            meta[key] = os.path.relpath((first / meta[key]).resolve(), out.resolve())
    (tmp / LADD_META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    parts = "\n".join(f"- {w:g} x `{f}`" for w, f in zip(weights, folders))
    (tmp / "card.md").write_text(f"{SOUP_MARK} {len(weights)} students\n\n{parts}\n\nMade by `ladd soup`; the "
                                 f"setting (`{LADD_META}`: steps, sampler, grid) is the first's.\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    return replace_dir(tmp, out)
