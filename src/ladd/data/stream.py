"""Streaming shards (``data.stream=true``): the same batches as ``ShardDataset``, read from the shard files per
batch, so the synthetic set can be far larger than host or GPU memory (100k+ SD3 samples at 3.7 MB each).

Each batch's samples are read with positional reads (``os.pread``) of their rows straight from the safetensors
files (a shard's tensors are row-major: row ``j`` of a ``[n, ...]`` tensor is one contiguous byte range), so what
the process holds does not grow with the data: the open file descriptors, one int64 seed per sample (for the
regression pairs' noise) and the batch itself. The operating system's page cache may keep recently read shards,
but that memory is the system's to reclaim, not the process's (it is not counted in its resident set).

Batches are drawn as ``ShardDataset.indices`` draws them on the CPU (``torch.Generator`` seeded by seed, step and
micro-batch), so a streaming run sees the same samples as an in-memory run on the CPU. On a GPU the in-memory
reader draws its indices there, from CUDA's generator: the same distribution, other samples.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import torch

from ladd.data import shards
from ladd.data.batch import Batch
from ladd.models.text_encoder import TextEmbeddings

KEYS = ("latents", "tokens", "pooled")
NUMPY = {"F32": np.float32, "F16": np.float16, "F64": np.float64}


class _Shard:
    """One shard file: its descriptor and each tensor's ``(first byte, row bytes, row shape, dtype)``."""

    def __init__(self, path: Path):
        self.path = path
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        self.layout = {}
        for key in KEYS:
            info = header[key]
            if info["dtype"] not in NUMPY:
                raise shards.DataError(f"{path}: tensor {key} is {info['dtype']}; the streaming reader reads "
                                       f"{sorted(NUMPY)} (re-make the data, or set data.stream=false)")
            dtype = np.dtype(NUMPY[info["dtype"]])
            row_shape = tuple(info["shape"][1:])
            row_bytes = int(np.prod(row_shape, dtype=np.int64)) * dtype.itemsize
            self.layout[key] = (8 + n + info["data_offsets"][0], row_bytes, row_shape, dtype)
        self.fd = os.open(path, os.O_RDONLY)

    def rows(self, key: str, rows: list[int]) -> np.ndarray:
        start, row_bytes, row_shape, dtype = self.layout[key]
        buf = b"".join(os.pread(self.fd, row_bytes, start + j * row_bytes) for j in rows)
        return np.frombuffer(buf, dtype=dtype).reshape(len(rows), *row_shape)

    def close(self) -> None:
        os.close(self.fd)


class StreamingShards:
    """``ShardDataset``'s interface (``len``, ``latent_shape``, ``paired``, ``to``, ``indices``, ``batch``) over
    shard files read per batch."""

    def __init__(self, data_dir: str | Path, generation: dict, seeds: np.ndarray | None, device="cpu"):
        self.data_dir, self.generation, self.seeds = Path(data_dir), generation, seeds
        self.device = torch.device(device)
        self.shard_size, self.num_samples = generation["shard_size"], generation["num_samples"]
        self.members = shards.bucket_members(generation)  # per aspect bucket, its samples
        self._open: dict[int, _Shard] = {}

    @classmethod
    def load(cls, data_dir: str | Path, pairs: bool = False) -> "StreamingShards":
        """The complete data folder ``data_dir`` (checked as ``ShardDataset.load`` checks it), nothing read but
        the headers; with ``pairs`` each sample's noise seed, for the regression pairs."""
        gen = shards.complete_generation(data_dir)
        seeds = None
        if pairs:
            shards.check_pairs(data_dir, gen)
            seeds = np.concatenate([np.array([r["seed"] for r in shards.read_meta(shards.shard_path(data_dir, k))
                                              ["records"]], dtype=np.int64)
                                    for k in range(-(-gen["num_samples"] // gen["shard_size"]))])
        return cls(data_dir, gen, seeds)

    def __len__(self) -> int:
        return self.num_samples

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """The latent shape at ``data.height x data.width`` (previews and validation sample it)."""
        return tuple(self.generation["latent_shape"])

    @property
    def paired(self) -> bool:
        return self.seeds is not None

    def to(self, device) -> "StreamingShards":
        """The same files; batches arrive on ``device``."""
        return StreamingShards(self.data_dir, self.generation, self.seeds, device)

    def indices(self, size: int, seed: int, step: int, micro: int = 0, rank: int = 0, world: int = 1):
        """The same samples as ``ShardDataset.indices`` (``shards.draw_batch``), all of one aspect bucket."""
        b, rows = shards.draw_batch(self.members, size, seed, step, micro, rank, world, torch.device("cpu"))
        return self.members[b][rows]

    def _shard(self, k: int) -> _Shard:
        if k not in self._open:
            self._open[k] = _Shard(shards.shard_path(self.data_dir, k))
        return self._open[k]

    def read(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """The rows of samples ``idx`` (in that order, repeats allowed) of every tensor, on the CPU."""
        idx = idx.tolist()
        text = [shards.text_source(self.generation, i) for i in idx]  # the rows that hold their text states
        return {key: self._rows(key, idx if key == "latents" else text) for key in KEYS}

    def _rows(self, key: str, idx: list[int]) -> torch.Tensor:
        by_shard: dict[int, list[int]] = {}
        for n, i in enumerate(idx):
            by_shard.setdefault(i // self.shard_size, []).append(n)
        parts, order = [], []
        for k, ns in by_shard.items():
            parts.append(self._shard(k).rows(key, [idx[n] % self.shard_size for n in ns]))
            order += ns
        rows = np.concatenate(parts)
        return torch.from_numpy(rows[np.argsort(order, kind="stable")].copy())

    def batch(self, size: int, seed: int, step: int, micro: int = 0, rank: int = 0, world: int = 1):
        """A ``ladd.data.batch.Batch`` on the reader's device, as ``ShardDataset.batch``."""
        idx = self.indices(size, seed, step, micro, rank, world)
        rows = self.read(idx)
        latents = rows["latents"].float().to(self.device)
        text = TextEmbeddings(rows["tokens"].float(), rows["pooled"].float()).to(self.device)
        if self.seeds is None:
            return Batch(latents, text)
        shape = shards.shard_generation(self.generation, int(idx[0]) // self.shard_size)["latent_shape"]  # its bucket's
        noise = shards.teacher_noise([{"seed": int(s)} for s in self.seeds[idx.numpy()]], shape)
        return Batch(latents, text, noise.to(self.device))

    def close(self) -> None:
        for s in self._open.values():
            s.close()
        self._open.clear()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass
