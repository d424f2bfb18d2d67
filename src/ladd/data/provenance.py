"""Which model made a data folder: a fingerprint of *all* of a model's weight bytes, so that data made by another
teacher (or VAE) in the same folder, or a fine-tune of it, is never silently reused.

``fingerprint(model_dir)`` hashes every weights file of the model (each shard of a sharded checkpoint, as its
``*.index.json`` lists them) with BLAKE2b. Reading an SD3.5-Large transformer (16 GB) takes ~10-30 s, so each
file's digest is cached by (absolute path, size, modification time) in ``$LADD_CACHE/fingerprints.json``
(default ``~/.cache/ladd``): a file that changes gets a new entry, and an unwritable cache only costs the re-read.

Data folders written before the fingerprint existed carry ``teacher_hash`` / ``vae_hash`` (size and first 16 MB of
the file); ``upgrade_manifest`` replaces such a key by the fingerprint when the old hash still matches the model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from ladd.models.io import DIFFUSERS_WEIGHTS, AssetError

log = logging.getLogger(__name__)
CHUNK = 8 << 20
LEGACY = {"teacher_fingerprint": "teacher_hash", "vae_fingerprint": "vae_hash"}  # new key -> the old one


def model_folder(model_dir: str | Path) -> Path:
    """The folder holding the weights: ``transformer/`` of a diffusers pipeline folder, else the folder itself."""
    model_dir = Path(model_dir)
    return model_dir / "transformer" if (model_dir / "transformer").is_dir() else model_dir


def weights_file(model_dir: str | Path) -> Path:
    """The weights file of a ladd asset folder or a diffusers model or pipeline folder (the index file of sharded
    weights, e.g. SD3.5-Large's transformer)."""
    for name in ("model.safetensors", *DIFFUSERS_WEIGHTS):
        if (model_folder(model_dir) / name).is_file():
            return model_folder(model_dir) / name
    raise AssetError(f"{model_dir} holds no model.safetensors or diffusion_pytorch_model.safetensors")


def weights_files(model_dir: str | Path) -> list[Path]:
    """Every file holding the model's weights: the one file, or each shard its index lists."""
    path = weights_file(model_dir)
    if not path.name.endswith(".index.json"):
        return [path]
    try:
        names = sorted(set(json.loads(path.read_text())["weight_map"].values()))
    except (json.JSONDecodeError, KeyError) as e:
        raise AssetError(f"{path} is not a weights index (no weight_map): {e}") from e
    missing = [n for n in names if not (path.parent / n).is_file()]
    if missing:
        raise AssetError(f"{path} lists weight shards that are missing: {', '.join(missing)}")
    return [path.parent / n for n in names]


def _cache_file() -> Path:
    return Path(os.environ.get("LADD_CACHE", Path.home() / ".cache" / "ladd")) / "fingerprints.json"


def file_digest(path: Path) -> str:
    """BLAKE2b of the file's bytes, from the cache when the file is unchanged (same path, size and mtime)."""
    path = Path(path).resolve()
    st = path.stat()
    key = f"{path}\0{st.st_size}\0{st.st_mtime_ns}"
    cache = _cache_file()
    try:
        known = json.loads(cache.read_text()) if cache.is_file() else {}
    except (OSError, json.JSONDecodeError):
        known = {}
    if key in known:
        return known[key]
    if st.st_size > 1 << 30:
        log.info("fingerprinting %s (%.1f GB, once: cached in %s)", path, st.st_size / 2**30, cache)
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    digest = h.hexdigest()
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**known, key: digest}, indent=0) + "\n")
        os.replace(tmp, cache)
    except OSError as e:  # a read-only home: correct, only slower next time
        log.debug("fingerprint cache %s not written: %s", cache, e)
    return digest


def fingerprint(model_dir: str | Path) -> str:
    """A digest of all of the model's weight bytes (every shard), 32 hex digits."""
    h = hashlib.blake2b(digest_size=16)
    for path in weights_files(model_dir):
        h.update(file_digest(path).encode())
    return h.hexdigest()


def legacy_hash(path: Path, head: int = 1 << 24) -> str:
    """The identifier data folders recorded before the fingerprint: the file's size and first 16 MB."""
    h = hashlib.sha1(str(path.stat().st_size).encode())
    with open(path, "rb") as f:
        h.update(f.read(head))
    return h.hexdigest()[:16]


def upgrade_manifest(data_dir: str | Path, models: dict[str, str | Path]) -> None:
    """In ``data_dir``'s manifest, replace a legacy hash (``teacher_hash``, ``vae_hash``) by the fingerprint of the
    model that ``models`` names for it (``{"teacher_fingerprint": teacher_dir, ...}``) when the legacy hash still
    matches that model; otherwise leave it, and the manifest check reports the difference."""
    from ladd.data import shards

    manifest = shards.read_manifest(data_dir)
    if manifest is None:
        return
    gen = dict(manifest.get("generation", {}))
    todo = {key: d for key, d in models.items() if key not in gen and LEGACY[key] in gen}
    for key, model_dir in todo.items():
        old = gen.pop(LEGACY[key])
        same = old == legacy_hash(weights_file(model_dir))
        gen[key] = fingerprint(model_dir) if same else f"another model (legacy hash {old})"
    if todo:
        shards.write_manifest(data_dir, gen)
