"""Streaming shards (data.stream=true, ladd.data.stream): the same batches as the in-memory reader, read per batch
from the files, and the same training; a last partial shard and repeated indices work."""

import pytest
import torch

from ladd.data import shards
from ladd.data.stream import StreamingShards
from ladd.distill.config import load_distill_config
from ladd.distill.run import build_method
from ladd.training.trainer import train
from helpers import assets_with_data, tiny_overrides

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return assets_with_data(tmp_path_factory.mktemp("stream"))  # 10 samples in shards of 4: the last holds 2


def test_streaming_batches_equal_the_in_memory_ones(root):
    memory = shards.ShardDataset.load(root / "data", pairs=True)
    stream = shards.load_data(root / "data", pairs=True, stream=True)
    assert isinstance(stream, StreamingShards) and len(stream) == len(memory) == 10
    assert stream.latent_shape == memory.latent_shape and stream.paired
    for step, micro, rank, world in [(0, 0, 0, 1), (5, 1, 0, 1), (7, 0, 1, 2)]:
        a = memory.batch(6, 3, step, micro, rank, world)
        b = stream.batch(6, 3, step, micro, rank, world)
        for x, y in zip((a.x0, a.cond.tokens, a.cond.pooled, a.noise), (b.x0, b.cond.tokens, b.cond.pooled, b.noise)):
            assert x.dtype == y.dtype == torch.float32
            torch.testing.assert_close(x, y, atol=0, rtol=0)
    every = stream.read(torch.tensor([9, 0, 9, 4, 8, 3]))  # the partial last shard, repeats, any order
    torch.testing.assert_close(every["latents"].float(), memory.latents[[9, 0, 9, 4, 8, 3]], atol=0, rtol=0)
    stream.close()


def test_training_on_streamed_data_equals_training_in_memory(root):
    results = []
    for name, stream in (("memory", "false"), ("stream", "true")):
        cfg = load_distill_config("configs/tiny.yaml", tiny_overrides(root, f"paths.run_dir={root / name}",
                                                                      f"data.stream={stream}", "train.steps=2"))
        data = shards.load_data(cfg.paths.data, stream=cfg.data.stream)
        results.append(train(cfg, build_method(cfg), data, root / name))
    a, b = (r.modules["student"].state_dict() for r in results)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0, msg=k)


def test_incomplete_data_and_bad_flag_are_one_line(tmp_path):
    from ladd.config import ConfigError

    with pytest.raises(shards.DataError, match="ladd synth"):
        StreamingShards.load(tmp_path)
    with pytest.raises(ConfigError, match="data.stream"):
        load_distill_config("configs/tiny.yaml", ["data.stream=3"])


def test_text_states_are_stored_once_per_prompt_and_both_readers_find_them(root, monkeypatch):
    """A prompt file of 3 prompts over 10 samples (shards of 4): only samples 0-2 hold text states, the other
    shards none; both readers give every sample its prompt's states, as from a folder written the old way (text per
    sample), which they still read."""
    from ladd.data.synth import synthesize
    from helpers import FakeEncoder

    prompts = root / "three.txt"
    prompts.write_text("a red circle\ntwo blue squares\na green cross\n")
    folders = {}
    for layout in ("per-prompt", "per-sample"):
        if layout == "per-sample":  # what ladd wrote before: every sample its own row
            monkeypatch.setattr(shards, "text_rows", lambda gen, samples: len(samples))
        folders[layout] = root / layout
        cfg = load_distill_config("configs/tiny.yaml", tiny_overrides(
            root, f"data.prompts={prompts}", f"paths.data={folders[layout]}"))
        synthesize(cfg, FakeEncoder(), 0, 1)
        monkeypatch.undo()
    stored = [shards.load_file(shards.shard_path(folders["per-prompt"], k))["tokens"].shape[0] for k in range(3)]
    assert stored == [3, 0, 0]
    assert shards.missing_shards(folders["per-prompt"], 10, 4) == []  # complete as written
    want = FakeEncoder().encode([f"{p}" for p in prompts.read_text().splitlines()])
    for folder in folders.values():
        for reader in (shards.ShardDataset.load(folder), shards.load_data(folder, stream=True)):
            idx = reader.indices(6, 3, 1)
            batch = reader.batch(6, 3, 1)
            torch.testing.assert_close(batch.cond.tokens, want.tokens[idx % 3].half().float(), atol=0, rtol=0)
            torch.testing.assert_close(batch.cond.pooled, want.pooled[idx % 3].half().float(), atol=0, rtol=0)
