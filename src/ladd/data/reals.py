"""The heads' reals from a second data folder (``paths.reals``): e.g. real images through the VAE (``ladd synth
data.source=real``) with their own captions, while the student trains on the teacher's samples of ``paths.data``
and their regression pairs. docs/experiments/student-gap.md, session 29: real images as the heads' reals lowered
the FD against the same recipe on teacher samples.
"""

from __future__ import annotations

from pathlib import Path

from ladd.data import shards
from ladd.data.batch import Batch
from ladd.data.provenance import fingerprint, upgrade_manifest


# the reals' indices come from a stream of their own: drawn with the data's seed they would repeat its rows
REALS_STREAM = 0x5EA15


class WithReals:
    """Training data whose batches carry reals from a second data set (``ShardDataset`` or ``StreamingShards``):
    ``batch(...)`` is ``data``'s batch with ``reals`` = ``reals``' batch of the same size, drawn as deterministically
    (by seed, step, micro-batch and rank) from an independent stream. Everything else is ``data``'s."""

    def __init__(self, data, reals):
        self.data, self.reals = data, reals

    def batch(self, size: int, seed: int, step: int, micro: int = 0, rank: int = 0, world: int = 1) -> Batch:
        out = self.data.batch(size, seed, step, micro, rank, world)
        out.reals = self.reals.batch(size, shards.sample_seed(seed, REALS_STREAM), step, micro, rank, world)
        return out

    def to(self, device) -> "WithReals":
        return WithReals(self.data.to(device), self.reals.to(device))

    def __len__(self) -> int:
        return len(self.data)

    def __getattr__(self, name):  # latent_shape, generation, records, paired, ...: the training data's
        if name in ("data", "reals"):  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.data, name)


def check_reals(reals_dir: str | Path, gen: dict, vae_dir: str | Path) -> dict:
    """``DataError`` unless ``reals_dir`` is a complete data folder the heads can take as reals beside training data
    of generation ``gen``: latents of the same shape, prompts encoded by the same text encoder, one latent size (no
    aspect buckets), and real images encoded by the VAE of ``vae_dir`` (the teacher's latent space). Returns the
    reals' generation."""
    manifest = shards.read_manifest(reals_dir)
    if manifest is None:
        raise shards.DataError(f"paths.reals: {reals_dir} holds no data; make it first, e.g. `ladd synth "
                               f"data.source=real paths.data={reals_dir}` (real images through the VAE)")
    if manifest["generation"].get("source") == "real":  # an older manifest's VAE hash becomes the fingerprint
        upgrade_manifest(reals_dir, {"vae_fingerprint": vae_dir})
    real = shards.complete_generation(reals_dir)
    if real.get("buckets"):
        raise shards.DataError(f"paths.reals: {reals_dir} has aspect buckets; the reals must be of one latent size: "
                               f"make them without data.buckets")
    for key, what in (("latent_shape", "latent shape"), ("text_encoder", "text encoder")):
        if real.get(key) != gen.get(key):
            raise shards.DataError(f"paths.reals: {reals_dir} has {what} {real.get(key)} but the training data "
                                   f"{gen.get(key)}; make the reals at the same data.height/width with the "
                                   f"teacher's text encoder (ladd synth data.source=real ...)")
    if real.get("source") == "real" and real.get("vae_fingerprint") != fingerprint(vae_dir):
        raise shards.DataError(f"paths.reals: {reals_dir} holds images encoded by another VAE than paths.vae "
                               f"({vae_dir}); re-make them with it: ladd synth data.source=real "
                               f"paths.data=NEW_FOLDER paths.vae={vae_dir}")
    return real
