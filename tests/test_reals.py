"""paths.reals (ladd.data.reals): batches carry the heads' reals from a second data folder, drawn from a stream of
their own; LADD's and ADD's discriminator phases judge those by their prompts and the fakes by theirs; a folder
that cannot serve as reals is refused by the config check, before any model loads; nano reals still missing are to
be made."""

import json
import shutil

import pytest
import torch

from ladd.config import ConfigError
from ladd.data.batch import Batch
from ladd.data.reals import REALS_STREAM, WithReals
from ladd.data.shards import ShardDataset, sample_seed
from ladd.data.synth import synthesize
from ladd.distill.config import load_distill_config
from ladd.distill.run import build_method, check_config, reals_to_make
from ladd.draws import Draws
from ladd.training.contract import Context
from helpers import FakeEncoder, assets_with_data, save_tiny_featnet, tiny_overrides

pytestmark = pytest.mark.usefixtures("one_thread")


def make_reals(root, name, *extra):
    cfg = load_distill_config("configs/tiny.yaml", tiny_overrides(root, "data.source=real", "data.num_samples=6",
                                                                  f"paths.data={root / name}", *extra))
    synthesize(cfg, FakeEncoder(), 0, 1)
    return root / name


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = assets_with_data(tmp_path_factory.mktemp("reals"))
    make_reals(root, "real")
    return root


def test_batches_carry_reals_drawn_from_their_own_stream(root):
    data, reals = ShardDataset.load(root / "data", pairs=True), ShardDataset.load(root / "real")
    both = WithReals(data, reals).to("cpu")
    got, plain = both.batch(4, 3, 5, 1), data.batch(4, 3, 5, 1)
    # the training data's part is the plain batch, pairs included
    for a, b in ((got.x0, plain.x0), (got.noise, plain.noise), (got.cond.tokens, plain.cond.tokens)):
        assert torch.equal(a, b)
    rows = reals.indices(4, sample_seed(3, REALS_STREAM), 5, 1)
    assert torch.equal(got.reals.x0, reals.latents[rows]) and got.reals.noise is None and got.reals.reals is None
    assert torch.equal(got.reals.cond.tokens, reals.text_of(rows).tokens.float())
    assert not torch.equal(rows, data.indices(4, 3, 5, 1) % len(reals))  # not the data's draw again
    halves = [both.batch(2, 3, 5, 1, r, 2).reals.x0 for r in range(2)]  # two processes: the same global reals
    assert torch.equal(torch.cat(halves), got.reals.x0)
    assert len(both) == len(data) and both.latent_shape == data.latent_shape and both.paired
    assert data.batch(4, 3, 5, 1).reals is None


class Recording(torch.nn.Module):
    """The heads, recording the condition (pooled prompts) of every call."""

    def __init__(self, heads):
        super().__init__()
        self.heads, self.blocks, self.seen = heads, getattr(heads, "blocks", None), []

    def forward(self, feats, t, pooled):
        self.seen.append(pooled.detach().clone())
        return self.heads(feats, t, pooled)


@pytest.mark.parametrize("method_name", ["ladd", "add"])
def test_the_discriminator_judges_the_reals_by_their_prompts_and_the_fakes_by_theirs(root, method_name):
    extra = [] if method_name == "ladd" else \
        ["method=add", "add.head_width=16", f"add.feature_net={save_tiny_featnet(root / 'featnet')}"]
    cfg = load_distill_config("configs/tiny.yaml", tiny_overrides(root, "ladd.loss.misaligned_weight=0", *extra))
    method = build_method(cfg, uncond=FakeEncoder().encode([""]))
    method.attach(method.modules("cpu"), method.frozen())
    method.heads = Recording(method.heads)
    data, reals = ShardDataset.load(root / "data"), ShardDataset.load(root / "real")
    batch, real = data.batch(2, 0, 0), reals.batch(2, 7, 0)
    assert not torch.equal(batch.cond.pooled, real.cond.pooled)
    store = {}
    method.loss("generator", batch, Context(0, Draws(torch.Generator().manual_seed(0)), store=store))

    def d_loss(b):
        ctx = Context(0, Draws(torch.Generator().manual_seed(1)), store=store)
        return method.loss("discriminator", b, ctx).loss, method.heads.seen[-1]

    with_reals, judged = d_loss(Batch(batch.x0, batch.cond, reals=real))
    torch.testing.assert_close(judged, torch.cat([real.cond.pooled, batch.cond.pooled]), atol=0, rtol=0)
    torch.testing.assert_close(with_reals, d_loss(Batch(real.x0, real.cond, reals=None))[0], atol=0, rtol=0)
    assert not torch.allclose(with_reals, d_loss(batch)[0])


@pytest.mark.parametrize("case, message", [
    ("missing", "holds no data"),
    ("same", "is paths.data"),
    ("shape", "latent shape"),
    ("vae", "another VAE"),
    ("buckets", "one latent size"),
])
def test_reals_that_cannot_serve_are_refused_by_the_config_check(root, case, message):
    reals, extra = root / "real", []
    if case == "missing":  # with a prompt file: the user's own images, which ladd cannot make
        reals = root / "nothing"
        (root / "p.txt").write_text("a red circle\n")
        extra = [f"data.prompts={root / 'p.txt'}", f"paths.data={root / 'pdata'}"]
    elif case == "same":
        reals = root / "data"
    elif case == "shape":
        reals = root / "small"
        if not reals.exists():
            make_reals(root, "small", "data.height=32", "data.width=32")
    elif case == "buckets":  # reals to be made beside bucketed data
        reals = root / "new-reals"
        extra = ["data.buckets=[[64,64],[64,96]]", f"paths.data={root / 'bucketed'}"]
    elif case == "vae":
        reals = root / "other-vae"
        shutil.rmtree(reals, ignore_errors=True)
        shutil.copytree(root / "real", reals)
        manifest = json.loads((reals / "dataset.json").read_text())
        manifest["generation"]["vae_fingerprint"] = "0" * 32
        (reals / "dataset.json").write_text(json.dumps(manifest))
    cfg = load_distill_config("configs/tiny.yaml", tiny_overrides(root, f"paths.reals={reals}", *extra))
    with pytest.raises(ConfigError, match=message):
        check_config(cfg)


@pytest.mark.parametrize("case", ["lcm", "add-image"])
def test_reals_are_set_aside_for_a_method_whose_discriminator_takes_none(root, case):
    """configs/nano.yaml names the heads' reals; `ladd distill method=lcm` on it trains LCM on the data alone."""
    extra = ["method=lcm"] if case == "lcm" else [  # ADD's heads conditioned on each fake's clean source
        "method=add", "add.image_conditioning=true", f"add.feature_net={save_tiny_featnet(root / 'fn')}"]
    cfg = load_distill_config("configs/tiny.yaml", tiny_overrides(root, f"paths.reals={root / 'real'}", *extra))
    assert cfg.paths.reals is None
    check_config(cfg)
    assert load_distill_config("configs/nano.yaml", ["method=few_step"]).paths.reals is None
    assert load_distill_config("configs/nano.yaml").paths.reals == "runs/nano-real"


def test_reals_of_the_teachers_latent_space_pass_and_missing_nano_reals_are_to_be_made(root):
    cfg = load_distill_config("configs/tiny.yaml", tiny_overrides(root, f"paths.reals={root / 'real'}"))
    assert check_config(cfg)["source"] == "synthetic" and reals_to_make(cfg) is None
    cfg = load_distill_config("configs/tiny.yaml", tiny_overrides(root, f"paths.reals={root / 'new'}"))
    check_config(cfg)  # ShapeWorld's real images: ladd distill makes them
    make = reals_to_make(cfg)
    assert make.data.source == "real" and make.paths.data == str(root / "new") and make.data.seed == cfg.data.seed
    shutil.rmtree(root / "part", ignore_errors=True)
    shutil.copytree(root / "real", root / "part")
    (root / "part" / "shard-00001.safetensors").unlink()  # a partial folder made with other settings
    with pytest.raises(ConfigError, match="other settings"):
        check_config(load_distill_config("configs/tiny.yaml", tiny_overrides(
            root, f"paths.reals={root / 'part'}", "data.seed=5")))
