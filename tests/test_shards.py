"""`ladd synth` shards: resumable (interrupted shards redone, finished ones skipped), per-process ownership,
deterministic per sample, real-data mode, and the reader's deterministic batches. Tiny random models, CPU.
"""

import os

import pytest
import torch

from ladd.data import shards
from ladd.data.synth import synthesize
from ladd.distill.config import load_distill_config
from helpers import FakeEncoder, make_assets, tiny_overrides

pytestmark = pytest.mark.usefixtures("one_thread")


class CountingTeacher(torch.nn.Module):
    """Wraps the teacher to count the samples it denoises."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.samples = inner, 0

    def velocity(self, x, t, cond):
        self.samples += x.shape[0]
        return self.inner.velocity(x, t, cond)


@pytest.fixture
def assets(tmp_path):
    make_assets(tmp_path)
    return tmp_path


def run_synth(root, *extra, rank=0, world=1):
    cfg = load_distill_config("configs/tiny.yaml", tiny_overrides(root, *extra))
    return synthesize(cfg, FakeEncoder(), rank, world)


def test_synth_writes_shards_with_metadata(assets):
    assert run_synth(assets) == [0, 1, 2]
    data = shards.ShardDataset.load(assets / "data")
    assert len(data) == 10 and data.latent_shape == (4, 8, 8)
    distinct = len({r['prompt'] for r in data.records})  # text states are kept once per distinct prompt
    assert data.text.tokens.shape == (distinct, 6, 32) and data.text.tokens.dtype == torch.float16
    assert data.text_of(range(10)).tokens.shape == (10, 6, 32)
    assert [r["index"] for r in data.records] == list(range(10))
    meta = shards.read_meta(shards.shard_path(assets / "data", 2))
    gen = meta["generation"]
    assert (gen["guidance"], gen["steps"], gen["sampler"], gen["seed"]) == (2.0, 3, "euler", 2)  # teacher's card
    rec = meta["records"][0]
    assert rec["index"] == 8 and rec["prompt"] and isinstance(rec["spec"], list) and rec["spec"]
    assert all(set(o) <= {"shape", "color", "size", "position"} for o in rec["spec"])
    from ladd.evaluation.metrics import satisfies
    from ladd.nano.shapeworld import sample

    for r in data.records:  # each caption's spec describes the scene of shapeworld.sample(seed, index)
        assert satisfies(r["spec"], sample(2, r["index"])[1]["objects"])
    assert torch.isfinite(data.latents).all() and data.latents.std() > 0.1


def test_interrupted_shards_are_redone_and_finished_ones_skipped(assets, monkeypatch):
    run_synth(assets)
    d = assets / "data"
    before = {k: shards.ShardDataset.load(d).latents[4 * k:4 * k + 4].clone() for k in range(3)}
    mtime0 = os.stat(shards.shard_path(d, 0)).st_mtime_ns
    # shard 1: killed while writing (temp file left, no final file); shard 2: truncated final file
    shards.shard_path(d, 1).rename(shards.temp_path(shards.shard_path(d, 1)))
    raw = shards.shard_path(d, 2).read_bytes()
    shards.shard_path(d, 2).write_bytes(raw[: len(raw) - 50])
    assert not shards.shard_ok(shards.shard_path(d, 2), 2)
    with pytest.raises(shards.DataError, match="incomplete"):
        shards.ShardDataset.load(d)

    from ladd.models import teacher as teacher_mod

    counters = []
    real_load = teacher_mod.load_teacher
    monkeypatch.setattr(teacher_mod, "load_teacher", lambda p, **kw: counters.append(
        CountingTeacher(real_load(p, **kw))) or counters[-1])
    assert run_synth(assets) == [1, 2]
    # only the 4 + 2 samples of shards 1 and 2 were sampled again: 3 Euler steps, CFG doubles the batch
    assert counters[0].samples == (4 + 2) * 3 * 2
    assert os.stat(shards.shard_path(d, 0)).st_mtime_ns == mtime0
    assert not shards.temp_path(shards.shard_path(d, 1)).exists()
    after = shards.ShardDataset.load(d).latents
    for k in range(3):  # per-sample noise seeds: redone shards equal the originals
        assert torch.equal(after[4 * k:4 * k + 4], before[k])
    assert run_synth(assets) == [] and len(counters) == 1  # all finished: no model loaded, nothing written


def test_each_process_writes_its_own_shards(assets):
    assert run_synth(assets, rank=1, world=2) == [1]
    assert [shards.shard_path(assets / "data", k).exists() for k in range(3)] == [False, True, False]
    assert run_synth(assets, rank=0, world=2) == [0, 2]
    assert len(shards.ShardDataset.load(assets / "data")) == 10


def test_other_settings_in_the_same_folder_fail_before_loading(assets):
    run_synth(assets)
    with pytest.raises(shards.DataError, match=r"guidance: folder 2\.0 vs config 5\.0"):
        run_synth(assets, "data.guidance=5")


def test_more_samples_extend_full_shards(assets, tmp_path):
    """data.num_samples may grow over full shards: the shards there are kept (sample i depends on (seed, i) only)
    and the new set equals one made at that size from scratch; it may not shrink."""
    run_synth(assets, "data.num_samples=8")                  # two full shards of 4
    first = (assets / "data" / "shard-00000.safetensors").stat().st_mtime_ns
    assert run_synth(assets, "data.num_samples=12") == [2]  # only the new shard is written
    assert (assets / "data" / "shard-00000.safetensors").stat().st_mtime_ns == first
    fresh = run_synth(assets, "data.num_samples=12", f"paths.data={tmp_path / 'fresh'}")
    assert fresh == [0, 1, 2]
    grown = shards.ShardDataset.load(assets / "data")
    direct = shards.ShardDataset.load(tmp_path / "fresh")
    assert torch.equal(grown.latents, direct.latents)
    with pytest.raises(shards.DataError, match="num_samples: folder 12 vs config 8"):
        run_synth(assets, "data.num_samples=8")


def test_data_from_older_captions_is_not_reused(assets, monkeypatch):
    run_synth(assets)
    from ladd.nano import prompts

    monkeypatch.setattr(prompts, "CAPTION_VERSION", prompts.CAPTION_VERSION + 1)
    with pytest.raises(shards.DataError, match="captions: folder"):
        run_synth(assets)


def test_real_source_encodes_shapeworld_images(assets):
    assert run_synth(assets, "data.source=real", "data.num_samples=3") == [0]
    data = shards.ShardDataset.load(assets / "data")
    assert data.generation["source"] == "real" and "teacher" not in data.generation
    assert data.latent_shape == (4, 8, 8) and len(data.records) == 3


def test_batches_depend_only_on_seed_step_and_the_global_batch(assets):
    run_synth(assets)
    data = shards.ShardDataset.load(assets / "data")
    (x1, c1), (x2, c2) = [(b.x0, b.cond) for b in (data.batch(3, seed=0, step=5, micro=1) for _ in range(2))]
    assert torch.equal(x1, x2) and torch.equal(c1.tokens, c2.tokens) and c1.tokens.dtype == torch.float32
    assert not torch.equal(data.indices(8, 0, 5), data.indices(8, 0, 6))
    # two processes of a global batch of 8 hold the two halves of one process's batch of 8
    halves = [data.indices(4, 0, 5, rank=r, world=2) for r in (0, 1)]
    assert torch.equal(torch.cat(halves), data.indices(8, 0, 5))


def test_bf16_teacher_samples_near_fp32_and_is_recorded(assets):
    """data.precision=bf16 (for GPUs): the same samples up to bf16 rounding, recorded in the data's settings, so
    fp32 data are not reused for it."""
    run_synth(assets)
    fp32 = shards.ShardDataset.load(assets / "data")
    run_synth(assets, "data.precision=bf16", f"paths.data={assets / 'bf16'}")
    bf16 = shards.ShardDataset.load(assets / "bf16")
    assert bf16.generation["precision"] == "bf16" and "precision" not in fp32.generation
    rel = float((bf16.latents - fp32.latents).norm() / fp32.latents.norm())
    assert 0 < rel < 0.05, rel
    with pytest.raises(shards.DataError, match="precision"):
        run_synth(assets, "data.precision=bf16")


def test_a_synth_that_fails_loading_leaves_nothing_that_blocks_the_fix(assets, monkeypatch):
    from ladd.data import synth

    def broken(*args, **kwargs):
        raise RuntimeError("damaged teacher")

    monkeypatch.setattr(synth, "load_models", broken)
    with pytest.raises(RuntimeError, match="damaged"):
        run_synth(assets, "data.guidance=5")
    assert not (assets / "data" / "dataset.json").exists()
    monkeypatch.undo()
    assert run_synth(assets) == [0, 1, 2]  # the corrected command (other settings) runs


def test_sigterm_during_synth_is_an_interrupt():
    """`kill` during `ladd synth` raises KeyboardInterrupt (the CLI then says how to resume, exit 130)."""
    import signal

    from ladd.runtime import sigterm_as_interrupt

    with pytest.raises(KeyboardInterrupt):
        with sigterm_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            import time

            time.sleep(5)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_paired_data_give_each_latent_the_noise_the_teacher_started_from(assets):
    """``load(pairs=True)``: the noise regenerated from each record's seed is the start of the teacher's Euler
    ODE that made the latent (the regression term's pairs), and batches carry it as a third item."""
    from ladd import flow
    from ladd.models.teacher import load_teacher
    from ladd.models.text_encoder import TextEmbeddings
    from ladd.sampling import euler

    run_synth(assets)
    data = shards.ShardDataset.load(assets / "data", pairs=True)
    assert data.paired and data.noise.shape == data.latents.shape
    gen = data.generation
    teacher = load_teacher(assets / "teacher")
    enc = FakeEncoder()
    cond, uncond = enc.encode([r["prompt"] for r in data.records[:3]]), enc.encode([""])
    u = TextEmbeddings(uncond.tokens.expand(3, -1, -1), uncond.pooled.expand(3, -1))
    with torch.no_grad():
        again = euler(teacher, data.noise[:3], flow.sampling_times("euler", gen["steps"]), cond, u, gen["guidance"])
    assert torch.allclose(again, data.latents[:3], atol=1e-5)
    assert not torch.allclose(data.noise[0], data.noise[1])
    batch = data.batch(3, seed=0, step=5)
    idx = data.indices(3, 0, 5)
    assert torch.equal(batch.noise, data.noise[idx]) and torch.equal(batch.x0, data.latents[idx])
    assert shards.ShardDataset.load(assets / "data").batch(3, 0, 5).noise is None  # unpaired by default


def test_pairs_are_refused_for_data_that_are_not_deterministic_teacher_samples(assets):
    run_synth(assets, "data.sampler=renoise", f"paths.data={assets / 'renoise'}")
    with pytest.raises(shards.DataError, match="data.sampler=euler"):
        shards.ShardDataset.load(assets / "renoise", pairs=True)
