"""Data provenance (ladd.data.provenance): a fingerprint of all of a model's weight bytes, cached per file; old
data folders' 16-MB hashes upgraded when they still match; a first synth that fails mid-shard blocks nothing."""

import json

import pytest

from ladd.config import ConfigError
from ladd.data import provenance, shards
from ladd.models.io import AssetError


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LADD_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "fingerprints.json"


def _model(folder, data: bytes, name="model.safetensors"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)
    return folder


def test_a_change_anywhere_in_the_weights_changes_the_fingerprint(tmp_path):
    size = (16 << 20) + 4096  # past the 16 MB the old hash read
    a = _model(tmp_path / "a", bytes(size))
    tail = bytearray(size)
    tail[-1] = 1
    b = _model(tmp_path / "b", bytes(tail))
    assert provenance.legacy_hash(a / "model.safetensors") == provenance.legacy_hash(b / "model.safetensors")
    assert provenance.fingerprint(a) != provenance.fingerprint(b)
    assert provenance.fingerprint(a) == provenance.fingerprint(_model(tmp_path / "c", bytes(size)))


def test_sharded_weights_are_all_read_and_a_missing_shard_is_named(tmp_path):
    d = tmp_path / "pipe" / "transformer"
    _model(d, b"one", "part-1.safetensors")
    _model(d, b"two", "part-2.safetensors")
    (d / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"x": "part-1.safetensors", "y": "part-2.safetensors"}}))
    before = provenance.fingerprint(tmp_path / "pipe")  # a pipeline folder: its transformer/
    (d / "part-2.safetensors").write_bytes(b"TWO")
    assert provenance.fingerprint(tmp_path / "pipe") != before
    (d / "part-2.safetensors").unlink()
    with pytest.raises(AssetError, match="part-2.safetensors"):
        provenance.fingerprint(tmp_path / "pipe")


def test_digests_are_cached_per_path_size_and_mtime(tmp_path, cache, monkeypatch):
    m = _model(tmp_path / "m", b"weights")
    first = provenance.fingerprint(m)
    assert len(json.loads(cache.read_text())) == 1
    reads = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda *a, **k: reads.append(a[0]) or real_open(*a, **k))
    assert provenance.fingerprint(m) == first and not [r for r in reads if str(r).endswith("model.safetensors")]
    monkeypatch.undo()
    import os

    (m / "model.safetensors").write_bytes(b"other!!")  # same size: the mtime tells
    os.utime(m / "model.safetensors", ns=(1, 1))
    assert provenance.fingerprint(m) != first


def test_unwritable_cache_only_costs_a_reread(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("LADD_CACHE", str(blocker / "sub"))  # cannot be created
    assert provenance.fingerprint(_model(tmp_path / "m", b"w")) == provenance.fingerprint(tmp_path / "m")


def test_old_manifests_are_upgraded_only_when_the_model_still_matches(tmp_path):
    teacher = _model(tmp_path / "t", b"teacher weights")
    gen = {"source": "synthetic", "seed": 2, "teacher_hash": provenance.legacy_hash(teacher / "model.safetensors")}
    shards.write_manifest(tmp_path / "d", gen)
    provenance.upgrade_manifest(tmp_path / "d", {"teacher_fingerprint": teacher})
    now = shards.read_manifest(tmp_path / "d")["generation"]
    assert now["teacher_fingerprint"] == provenance.fingerprint(teacher) and "teacher_hash" not in now

    shards.write_manifest(tmp_path / "e", {**gen, "teacher_hash": "0123456789abcdef"})
    provenance.upgrade_manifest(tmp_path / "e", {"teacher_fingerprint": teacher})
    (tmp_path / "e" / "shard-00000.safetensors").write_bytes(b"")  # data there: the check applies
    with pytest.raises(ConfigError, match="another model"):
        shards.check_manifest(tmp_path / "e", {"source": "synthetic", "seed": 2,
                                               "teacher_fingerprint": provenance.fingerprint(teacher)})


def test_a_manifest_without_shards_blocks_nothing(tmp_path):
    """A first synth that dies while making its first shard (out of memory, Ctrl-C) leaves the manifest only;
    the corrected command, with other settings, runs."""
    shards.write_manifest(tmp_path, {"source": "synthetic", "precision": "fp32"})
    shards.check_manifest(tmp_path, {"source": "synthetic", "precision": "bf16"})  # no error
    shards.write_shard(shards.shard_path(tmp_path, 0), {}, [], {})
    with pytest.raises(shards.DataError, match="precision"):
        shards.check_manifest(tmp_path, {"source": "synthetic", "precision": "bf16"})
