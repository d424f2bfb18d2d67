"""Latent shards: the training data of ``ladd distill`` (teacher samples, or real images through the VAE).

A data folder holds ``dataset.json`` (format, version and ``generation``: everything that determines the data)
and ``shard-00000.safetensors``, ``shard-00001.safetensors``, ... Shard ``k`` holds samples
``[k * shard_size, min((k + 1) * shard_size, num_samples))`` as tensors

    latents [n, C, h, w] float32   model latents (the VAE's scaled space, what the teacher denoises)
    tokens  [m, L, D]    float16   text token states of the prompts of the shard's first m samples
    pooled  [m, P]       float16   pooled text embeddings

Text states are stored once per prompt: with a prompt file of N prompts (``data.prompts``; sample ``i`` has prompt
``i mod N``) only samples ``i < N`` hold theirs, and sample ``i`` reads sample ``i mod N``'s (``text_source``), so
m = the shard's samples below N (``text_rows``): none past the first N samples. ShapeWorld captions are drawn per
sample and every sample holds its own (m = n), as did every shard written before this layout (readers take both).

and, in the safetensors header's metadata under ``"ladd"``, JSON ``{"format", "version", "shard",
"generation", "records": [{"index", "prompt", "spec", "seed"}, ...]}`` (one record per sample; ``spec`` is the
object list the prompt states, as in prompt files; ``seed`` the sample's noise seed).

A shard is written under a temporary name and renamed, so a final file only appears complete; ``shard_ok`` also
checks the header, the sample count and that the file covers every tensor (a truncated copy fails), so resuming
redoes anything a killed run left behind and skips the rest.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ladd.config import ConfigError
from ladd.data.batch import Batch
from ladd.models.io import default_mode
from ladd.models.text_encoder import TextEmbeddings

FORMAT = "ladd-shards"
VERSION = 1
MANIFEST = "dataset.json"
PATH_KEYS = ("teacher", "vae")  # informational entries of ``generation``, not compared


class DataError(ConfigError):
    """A data folder is incomplete or was made with other settings; the message says how to fix it."""


def teacher_noise(records: list[dict], latent_shape) -> torch.Tensor:
    """The starting noise ``[n, *latent_shape]`` of each record's teacher sample (seeded by its ``seed``, as
    ``ladd synth`` draws it): with a deterministic sampler, ``(noise, latent)`` is a pair of the teacher's ODE."""
    return torch.stack([torch.randn(list(latent_shape), generator=torch.Generator().manual_seed(r["seed"]))
                        for r in records])


def sample_seed(*keys: int) -> int:
    """A 63-bit seed from integer keys, e.g. ``(seed, rank, step, micro)``: independent streams per key tuple."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def shard_path(data_dir: str | Path, k: int) -> Path:
    return Path(data_dir) / f"shard-{k:05d}.safetensors"


def shard_range(k: int, shard_size: int, num_samples: int) -> range:
    """Global sample indices of shard ``k``."""
    return range(k * shard_size, min((k + 1) * shard_size, num_samples))


def shard_generation(gen: dict, k: int) -> dict:
    """``gen`` with the image size and latent shape of shard ``k``: with aspect buckets (``gen["buckets"]``,
    ``[[height, width], ...]``) shard ``k`` holds bucket ``k % len(buckets)``, every sample of a shard one size."""
    buckets = gen.get("buckets")
    if not buckets:
        return gen
    h, w = buckets[k % len(buckets)]
    c, lh, lw = gen["latent_shape"]
    down = gen["height"] // lh
    return {**gen, "height": h, "width": w, "latent_shape": [c, h // down, w // down]}


def bucket_members(gen: dict) -> list[torch.Tensor]:
    """Per aspect bucket, the global indices of its samples (one bucket, all samples, without buckets)."""
    n, size = gen["num_samples"], gen["shard_size"]
    count = len(gen.get("buckets") or [None])
    members = [[] for _ in range(count)]
    for k in range(-(-n // size)):
        members[k % count].extend(shard_range(k, size, n))
    return [torch.tensor(m, dtype=torch.long) for m in members]


def draw_batch(members: list[torch.Tensor], size: int, seed: int, step: int, micro: int, rank: int, world: int,
               device) -> tuple[int, torch.Tensor]:
    """``(bucket, rows [size])``: rank's slice of the ``size * world`` samples of the global micro-batch, as rows of
    one aspect bucket (its global indices: ``members[bucket][rows]``), drawn from a generator seeded by ``(seed,
    step, micro)`` only, so a resumed run or another process count sees the same data. The bucket is drawn by its
    share of the samples (on the CPU, from a stream of its own: no device sync; one bucket draws nothing, so
    single-size data get the same rows as before buckets existed): one latent size per batch."""
    b = 0
    if len(members) > 1:
        pick = torch.Generator().manual_seed(sample_seed(seed, 0, step, micro, 0xB0C7))
        b = int(torch.multinomial(torch.tensor([float(len(m)) for m in members]), 1, generator=pick))
    g = torch.Generator(device).manual_seed(sample_seed(seed, 0, step, micro, 0xDA7A))
    rows = torch.randint(len(members[b]), (size * world,), generator=g, device=device)
    return b, rows[rank * size:(rank + 1) * size]


def owned_shards(num_shards: int, rank: int = 0, world_size: int = 1) -> list[int]:
    """Shard ``k`` belongs to process ``k % world_size``: processes never write the same file."""
    return [k for k in range(num_shards) if k % world_size == rank]


def temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


def write_shard(path: Path, tensors: dict[str, torch.Tensor], records: list[dict], generation: dict) -> Path:
    """Write one shard atomically (temporary file, then rename)."""
    n = len(records)
    lengths = {k: v.shape[0] for k, v in tensors.items()}
    text = lengths.get("tokens", 0)
    if lengths.get("latents", n) != n or lengths.get("pooled", 0) != text or text > n:
        raise ValueError(f"shard {path.name}: {n} records but tensor lengths {lengths} (latents: one row per "
                         f"record; tokens and pooled: as many rows as each other, at most one per record)")
    meta = {"format": FORMAT, "version": VERSION, "shard": path.name, "generation": generation, "records": records}
    tmp = temp_path(path)
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata={"ladd": json.dumps(meta)})
    default_mode(tmp)
    os.replace(tmp, path)
    return path


def read_meta(path: Path) -> dict:
    """The shard's JSON metadata (reads the header only)."""
    with safe_open(str(path), "pt") as f:
        meta = json.loads((f.metadata() or {})["ladd"])
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise DataError(f"{path} is not a {FORMAT} v{VERSION} shard (got {meta.get('format')} "
                        f"v{meta.get('version')}); re-make the data with `ladd synth`")
    return meta


def text_source(gen: dict, i: int) -> int:
    """The sample whose row holds sample ``i``'s text states: the first sample of its prompt, ``i mod N`` with a
    prompt file of N prompts, else ``i`` itself (module docstring)."""
    return i % gen["prompts"]["count"] if "prompts" in gen else i


def text_rows(gen: dict, samples: range) -> int:
    """How many of a shard's ``samples`` (a contiguous range) hold their own text states: a prefix of them."""
    if "prompts" not in gen:
        return len(samples)
    return max(0, min(samples.stop, gen["prompts"]["count"]) - samples.start)


def shard_ok(path: Path, expected: int) -> bool:
    """True if ``path`` is a complete shard of ``expected`` samples, with text states once per prompt or (as
    written before that layout) per sample. Quick: header and file size only (safetensors refuses a file that
    does not cover its tensors, i.e. a truncated one)."""
    if not path.is_file():
        return False
    try:
        meta = read_meta(path)
        with safe_open(str(path), "pt") as f:
            n, tokens, pooled = (f.get_slice(k).get_shape()[0] for k in ("latents", "tokens", "pooled"))
        indices = [r["index"] for r in meta["records"]]
        own = text_rows(meta["generation"], range(indices[0], indices[-1] + 1))
    except Exception:  # truncated, garbage, wrong format, missing keys: all mean "redo it"
        return False
    return n == len(indices) == expected and tokens == pooled and tokens in (own, n)


def read_manifest(data_dir: str | Path) -> dict | None:
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON ({e}); delete it and re-run `ladd synth`") from e


def check_manifest(data_dir: str | Path, generation: dict) -> None:
    """Raise ``DataError`` if ``data_dir`` holds data made with other settings than ``generation``. A manifest
    without a shard beside it (a first ``ladd synth`` that failed before finishing one; shards appear only
    complete, by rename) describes no data: it does not block the corrected command, which overwrites it."""
    old = read_manifest(data_dir)
    if old is None or not any(Path(data_dir).glob("shard-*.safetensors")):
        return
    if old.get("format") != FORMAT or old.get("version") != VERSION:
        raise DataError(f"{data_dir} holds data in format {old.get('format')} v{old.get('version')}, not "
                        f"{FORMAT} v{VERSION}; delete it or set paths.data to another folder")
    # model paths are for people; the weights' hashes say whether it is the same model (a moved checkout is)
    diff = {k: (old["generation"].get(k), v) for k, v in generation.items()
            if k not in PATH_KEYS and old["generation"].get(k) != v and not _grows(old["generation"], k, v)}
    if diff:
        listed = ", ".join(f"{k}: folder {a!r} vs config {b!r}" for k, (a, b) in sorted(diff.items()))
        raise DataError(f"{data_dir} holds data made with other settings ({listed}); set paths.data to a new "
                        f"folder, or delete {data_dir} to re-make it")


def _grows(old: dict, key: str, value) -> bool:
    """A larger ``num_samples`` over full shards of the same size extends the data: sample ``i`` depends on
    ``(seed, i)`` only, so the shards already there are the new set's first ones and are kept."""
    return (key == "num_samples" and isinstance(value, int) and value > old["num_samples"]
            and old["num_samples"] % old["shard_size"] == 0)


def write_manifest(data_dir: str | Path, generation: dict) -> None:
    """Write ``dataset.json`` atomically (every process may call it; they all write the same content)."""
    path = Path(data_dir) / MANIFEST
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{MANIFEST}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"format": FORMAT, "version": VERSION, "generation": generation}, indent=2) + "\n")
    os.replace(tmp, path)


def missing_shards(data_dir: str | Path, num_samples: int, shard_size: int, shards: list[int] | None = None):
    """The shards (of ``shards``, default all) that are not complete."""
    n = -(-num_samples // shard_size)
    ks = range(n) if shards is None else shards
    return [k for k in ks if not shard_ok(shard_path(data_dir, k), len(shard_range(k, shard_size, num_samples)))]


def complete_generation(data_dir: str | Path) -> dict:
    """The ``generation`` of a complete data folder; ``DataError`` saying what to run if it is missing or
    incomplete."""
    manifest = read_manifest(data_dir)
    if manifest is None:
        raise DataError(f"{data_dir} holds no {MANIFEST}: make the data first with `ladd synth` "
                        f"(or `ladd distill`, which makes it when missing)")
    gen = manifest["generation"]
    missing = missing_shards(data_dir, gen["num_samples"], gen["shard_size"])
    if missing:
        raise DataError(f"{data_dir} is incomplete: shards {missing[:5]}{'...' if len(missing) > 5 else ''} "
                        f"are missing or broken; re-run `ladd synth` with the same config to finish them")
    return gen


def check_pairs(data_dir: str | Path, gen: dict) -> None:
    """``DataError`` unless the data are deterministic teacher samples (regression pairs)."""
    if not ShardDataset.pairs_known(gen):
        raise DataError(f"{data_dir} holds {gen.get('source')} data made with sampler {gen.get('sampler')!r}: its "
                        f"latents are not a deterministic function of a known noise; regression pairs need teacher "
                        f"samples with data.sampler=euler")


def load_data(data_dir: str | Path, pairs: bool = False, stream: bool = False):
    """The training data of ``data_dir``: all in memory (``ShardDataset``), or read per batch from the files
    (``stream``: ladd.data.stream.StreamingShards); the same interface."""
    if stream:
        from ladd.data.stream import StreamingShards

        return StreamingShards.load(data_dir, pairs)
    return ShardDataset.load(data_dir, pairs)


class ShardDataset:
    """All shards of a data folder in memory (the nano data is small), with deterministic batches.

    ``batch(size, seed, step, micro, rank, world)`` draws the global micro-batch's ``size * world`` indices (with
    replacement) from a generator seeded by ``(seed, step, micro)`` and keeps process ``rank``'s slice: the batch
    of an iteration depends on nothing else, so a resumed run sees the same data as an uninterrupted one, a run on
    W processes the same data as on one, and processes see different samples.
    """

    def __init__(self, latents: list[torch.Tensor], text: TextEmbeddings, records: list[dict], generation: dict,
                 noise: list[torch.Tensor] | None = None, text_index: torch.Tensor | None = None):
        # per aspect bucket (one without buckets): latents [N_b, C, h_b, w_b] float32 of the samples
        # bucket_members(generation)[b], in that order
        self.bucket_latents = latents
        self.members = bucket_members(generation)
        self.text = text            # tokens [U, L, D], pooled [U, P]: once per distinct prompt (float16)
        self.text_index = torch.arange(len(records)) if text_index is None else text_index  # [N] sample -> text row
        self.records = records
        self.generation = generation
        self.bucket_noise = noise   # per bucket: the teacher's starting noise per sample (``paired``), or None

    @property
    def latents(self) -> torch.Tensor:
        """All latents ``[N, C, h, w]`` (data of one size; with aspect buckets see ``bucket_latents``)."""
        return self._one(self.bucket_latents)

    @property
    def noise(self) -> torch.Tensor | None:
        """Each sample's starting noise ``[N, C, h, w]`` (``paired`` data of one size), or None."""
        return None if self.bucket_noise is None else self._one(self.bucket_noise)

    def _one(self, parts: list[torch.Tensor]) -> torch.Tensor:
        if len(parts) > 1:
            raise ValueError(f"the data hold {len(parts)} aspect buckets of different sizes; use bucket_latents / "
                             "bucket_noise, per bucket")
        return parts[0]

    def text_of(self, idx) -> TextEmbeddings:
        """The text states of samples ``idx`` (float16, as stored)."""
        rows = self.text_index[torch.as_tensor(idx, device=self.text_index.device)]
        return TextEmbeddings(self.text.tokens[rows], self.text.pooled[rows])

    @property
    def paired(self) -> bool:
        """Whether each latent is the teacher's deterministic (Euler ODE) sample from a known noise: the
        regression pairs of ``ladd.loss.regression_weight``."""
        return self.bucket_noise is not None

    @staticmethod
    def pairs_known(generation: dict) -> bool:
        """Teacher samples made by the deterministic sampler: the noise (from each record's seed) determines the
        latent."""
        return generation.get("source") == "synthetic" and generation.get("sampler") == "euler"

    def __len__(self) -> int:
        return len(self.records)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """The latent shape at ``data.height x data.width`` (previews and validation sample it)."""
        return tuple(self.generation["latent_shape"])

    @classmethod
    def load(cls, data_dir: str | Path, pairs: bool = False) -> "ShardDataset":
        """The data folder in memory; with ``pairs``, also each sample's starting noise (``paired``; an error
        for data that are not deterministic teacher samples)."""
        gen = complete_generation(data_dir)
        parts, records = [], []
        for k in range(-(-gen["num_samples"] // gen["shard_size"])):
            path = shard_path(data_dir, k)
            parts.append(load_file(path))
            records += read_meta(path)["records"]
        # text states once per distinct prompt (a prompt file's prompts recur across samples; the states of a
        # prompt are the same in every sample, the first one's stand for all): on SD3 they are ~72% of the bytes
        row_of, first, index = {}, [], []
        for n, r in enumerate(records):
            if r["prompt"] not in row_of:
                row_of[r["prompt"]] = len(first)
                first.append(n)
            index.append(row_of[r["prompt"]])
        # the stored rows are those of the first samples (a prefix), and a prompt's first sample is among them
        keep = torch.tensor(first)
        text = TextEmbeddings(torch.cat([p["tokens"] for p in parts])[keep],
                              torch.cat([p["pooled"] for p in parts])[keep])
        count = len(gen.get("buckets") or [None])  # shard k holds bucket k % count
        latents = [torch.cat([p["latents"] for p in parts[b::count]]).float() for b in range(count)]
        noise = None
        if pairs:
            check_pairs(data_dir, gen)
            noise = [teacher_noise([records[i] for i in m.tolist()], shard_generation(gen, b)["latent_shape"])
                     for b, m in enumerate(bucket_members(gen))]
        return cls(latents, text, records, gen, noise, torch.tensor(index))

    def to(self, device) -> "ShardDataset":
        """The data on ``device`` (the training loop keeps it on the accelerator: no copy per batch)."""
        noise = None if self.bucket_noise is None else [n.to(device) for n in self.bucket_noise]
        out = ShardDataset([x.to(device) for x in self.bucket_latents], self.text.to(device), self.records,
                           self.generation, noise, self.text_index.to(device))
        out.members = [m.to(device) for m in self.members]
        return out

    def indices(self, size: int, seed: int, step: int, micro: int = 0, rank: int = 0, world: int = 1) -> torch.Tensor:
        """``size`` sample indices ``[size]`` on the data's device (drawn there: no host-device copy), all of one
        aspect bucket (``draw_batch``)."""
        b, rows = draw_batch(self.members, size, seed, step, micro, rank, world, self.bucket_latents[0].device)
        return self.members[b][rows]

    def batch(self, size: int, seed: int, step: int, micro: int = 0, rank: int = 0, world: int = 1):
        """A ``ladd.data.batch.Batch``: latents ``[size, C, h, w]`` and their text states in float32 on the data's
        device, and the latents' starting noise when the data are ``paired``."""
        b, rows = draw_batch(self.members, size, seed, step, micro, rank, world, self.bucket_latents[0].device)
        text = self.text_of(self.members[b][rows]).to(torch.float32)
        noise = None if self.bucket_noise is None else self.bucket_noise[b][rows]
        return Batch(self.bucket_latents[b][rows], text, noise)
