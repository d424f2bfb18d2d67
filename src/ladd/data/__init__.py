"""Training data for ``ladd distill``: latent shards (writer, checks, in-memory reader) and ``ladd synth``."""

from ladd.data.shards import DataError, ShardDataset, sample_seed, shard_ok, shard_path
from ladd.data.synth import generation_settings, synthesize

__all__ = ["DataError", "ShardDataset", "sample_seed", "shard_ok", "shard_path", "generation_settings", "synthesize"]
