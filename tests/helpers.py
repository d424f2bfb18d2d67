"""What several test files share: tiny random assets, a fake text encoder, the tiny preset's overrides, a tiny
LADD setup. (Fixtures are in conftest.py; these are plain functions and constants.)"""

import zlib
from pathlib import Path

import torch

from ladd.distill.config import load_distill_config
from ladd.methods.components.heads import build_discriminator
from ladd.methods.components.student import freeze, init_student
from ladd.models.io import save_model
from ladd.models.teacher import build_nano_teacher
from ladd.models.text_encoder import TextEmbeddings

TINY_TEACHER = dict(num_layers=2, attention_head_dim=8, num_attention_heads=2, caption_projection_dim=16,
                    joint_attention_dim=32, pooled_projection_dim=32, in_channels=4, out_channels=4)
TINY_VAE = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
                up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[8, 8, 8, 8], layers_per_block=1,
                latent_channels=4, norm_num_groups=4, sample_size=64, scaling_factor=1.0, shift_factor=0.0)



class FakeEncoder:
    """The text-encoder interface with deterministic random 32-d embeddings per prompt (MiniLM's 384-d ones
    do not fit the tiny teacher). Counts the prompts it encodes."""

    def __init__(self, length: int = 6, dim: int = 32):
        self.length, self.dim, self.calls = length, dim, 0

    def encode(self, prompts):
        self.calls += len(prompts)
        gens = [torch.Generator().manual_seed(zlib.crc32(p.encode())) for p in prompts]
        return TextEmbeddings(torch.stack([torch.randn(self.length, self.dim, generator=g) for g in gens]),
                              torch.stack([torch.randn(self.dim, generator=g) for g in gens]))


def make_assets(root: Path, recommended=None) -> dict:
    """A tiny random teacher (2 SD3 blocks, 4-channel latents, 32-d text) and VAE (8x down) as ladd folders."""
    from diffusers import AutoencoderKL

    from ladd.models.teacher import build_nano_teacher

    torch.manual_seed(0)
    teacher = build_nano_teacher(**TINY_TEACHER)
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in teacher.transformer.config.items()
              if not k.startswith("_")}
    config.update(ladd_recommended=recommended or {"steps": 3, "guidance": 2.0, "sampler": "euler"},
                  ladd_text_encoder={"name": "fake", "max_length": 6}, ladd_vae=str(root / "vae"))
    save_model(teacher.transformer, root / "teacher", config)
    save_model(AutoencoderKL.from_config(TINY_VAE), root / "vae", TINY_VAE)
    return {"teacher": root / "teacher", "vae": root / "vae"}


TINY_FEATNET = [8, 8, 16, 16]


def save_tiny_featnet(path: Path) -> Path:
    """A tiny random nano feature network (ADD's discriminator backbone) as a ladd folder."""
    from ladd.models.feature_net import NANO_FEATURE_NET_CONFIG, NanoFeatureNet

    torch.manual_seed(1)
    save_model(NanoFeatureNet(TINY_FEATNET), path, dict(NANO_FEATURE_NET_CONFIG, channels=TINY_FEATNET))
    return path


def assets_with_data(root: Path) -> Path:
    """``make_assets`` plus the tiny preset's synthetic data in ``root/data`` (for tests that train)."""
    from ladd.data.synth import synthesize
    from ladd.distill.config import load_distill_config

    make_assets(root)
    synthesize(load_distill_config("configs/tiny.yaml", tiny_overrides(root)), FakeEncoder(), 0, 1)
    return root


def tiny_overrides(root: Path, *extra: str) -> list[str]:
    return [f"paths.teacher={root / 'teacher'}", f"paths.vae={root / 'vae'}", f"paths.data={root / 'data'}",
            f"paths.run_dir={root / 'run'}", "data.num_samples=10", "data.shard_size=4", "data.batch_size=4",
            "eval.enabled=false", *extra]


def setup(*overrides, shape=(4, 4, 8, 8)):
    """The tiny preset's config, a frozen tiny random teacher, its student copy, heads, latents and prompts."""
    torch.manual_seed(0)
    cfg = load_distill_config("configs/tiny.yaml", overrides)
    teacher = freeze(build_nano_teacher(**TINY_TEACHER))
    student = init_student(teacher)
    disc = build_discriminator(teacher, cfg.ladd.disc)
    x0 = torch.randn(shape)
    cond = TextEmbeddings(torch.randn(shape[0], 5, 32), torch.randn(shape[0], 32))
    return cfg, teacher, student, disc, x0, cond


def snapshot(module):
    return [p.detach().clone() for p in module.parameters()]


def changed(module, before):
    return any(not torch.equal(p, q) for p, q in zip(module.parameters(), before))


def cli_with_fake_encoder(argv: list[str]) -> int:
    """``ladd.cli.main(argv)`` with ``FakeEncoder`` as every text encoder: the entry point of test subprocesses
    (``python -c 'from helpers import cli_with_fake_encoder ...'``), which cannot be monkeypatched from outside."""
    from ladd.cli import main
    from ladd.models import text_encoder as te

    te.load_text_encoder = lambda name="minilm", max_length=32, **_: FakeEncoder(max_length)
    return main(argv)
