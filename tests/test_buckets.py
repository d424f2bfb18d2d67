"""Aspect buckets (data.buckets): `ladd synth` writes each shard at one bucket's size, every training batch comes
from one bucket (the same batches in memory and streamed, at any process count), and LADD trains on non-square
latents."""

import pytest
import torch

from helpers import FakeEncoder, make_assets, tiny_overrides
from ladd.config import ConfigError
from ladd.data import shards
from ladd.data.synth import synthesize
from ladd.distill.config import load_distill_config
from ladd.distill.run import build_method
from ladd.training.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")
BUCKETS = ["data.buckets=[[32,48],[48,32],[32,32]]", "data.num_samples=10", "data.shard_size=2"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("buckets")
    make_assets(root)
    synthesize(load_distill_config("configs/tiny.yaml", tiny_overrides(root, *BUCKETS)), FakeEncoder(), 0, 1)
    return root


def test_each_shard_holds_one_bucket(root):
    from safetensors.torch import load_file

    sizes = [tuple(load_file(shards.shard_path(root / "data", k))["latents"].shape[2:]) for k in range(5)]
    assert sizes == [(4, 6), (6, 4), (4, 4), (4, 6), (6, 4)]  # the tiny VAE downsamples 8x; shard k: bucket k % 3
    data = shards.ShardDataset.load(root / "data", pairs=True)
    assert [len(m) for m in data.members] == [4, 4, 2] and data.latent_shape == (4, 8, 8)  # data.height x width (64)
    with pytest.raises(ValueError, match="aspect buckets"):
        data.latents


def test_batches_come_from_one_bucket_and_match_the_stream(root):
    memory = shards.ShardDataset.load(root / "data", pairs=True)
    stream = shards.load_data(root / "data", pairs=True, stream=True)
    seen = set()
    for step in range(12):
        batch = memory.batch(6, 3, step)
        x, text, noise = batch.x0, batch.cond, batch.noise
        seen.add(tuple(x.shape[2:]))
        assert noise.shape == x.shape and text.tokens.shape[0] == 6
        other = stream.batch(6, 3, step)
        for a, b in zip((x, text.tokens, noise), (other.x0, other.cond.tokens, other.noise)):
            torch.testing.assert_close(a, b, atol=0, rtol=0)
        halves = [memory.batch(3, 3, step, 0, r, 2).x0 for r in range(2)]  # two processes: the same global batch
        torch.testing.assert_close(torch.cat(halves), x, atol=0, rtol=0)
    assert seen == {(4, 6), (6, 4), (4, 4)}
    stream.close()


def test_ladd_trains_on_bucketed_data(root):
    cfg = load_distill_config("configs/tiny.yaml", tiny_overrides(root, *BUCKETS, "train.steps=3",
                                                                  f"paths.run_dir={root / 'run'}"))
    result = train(cfg, build_method(cfg), shards.load_data(cfg.paths.data, pairs=False), root / "run")
    from ladd import flow
    from ladd.models.vae import load_vae
    from ladd.sampling import renoise

    noise = torch.randn(2, 4, 4, 6, generator=torch.Generator().manual_seed(0))  # a 32x48 image's latent
    with torch.no_grad():
        x0 = renoise(result.modules["student"], noise, flow.sampling_times("renoise", 4), FakeEncoder().encode(
            ["a", "b"]), generator=[torch.Generator().manual_seed(i) for i in range(2)])
        images = load_vae(cfg.paths.vae).decode(x0)
    assert torch.isfinite(x0).all() and images.shape == (2, 3, 32, 48)  # the student samples a non-square image


def test_bad_buckets_are_config_errors():
    for bad, says in ((["data.buckets=[[32,40]]"], "multiple of 16"), (["data.buckets=[32,48]"], "height, width"),
                      (["data.buckets=[[32,48],[32,48]]"], "twice"),
                      (["data.buckets=[[32,48],[48,32]]", "data.num_samples=4", "data.shard_size=4"], "shard_size")):
        with pytest.raises(ConfigError, match=says):
            load_distill_config("configs/tiny.yaml", bad)
