"""The discriminator sanity check (issue: LADD end to end): heads on the frozen *shipped* nano teacher, trained alone,
tell teacher latents from copies blurred in latent space when both are re-noised at low noise (m = -1, s = 1)."""

import pytest
import torch

from ladd.distill.config import load_distill_config
from ladd.methods.components.heads import build_discriminator
from ladd.methods.components.probe import blur_latents, shuffled_prompts, train_probe
from ladd.methods.components.student import freeze
from ladd.models.text_encoder import TextEmbeddings


def test_blur_latents_keeps_constants_and_smooths_noise():
    x = torch.full((1, 2, 5, 5), 3.0)
    assert torch.allclose(blur_latents(x), x)  # borders average only the pixels inside
    noise = torch.randn(4, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    assert blur_latents(noise).std() < 0.5 * noise.std()


def test_probe_learns_a_trivial_task_on_a_tiny_teacher(tiny_teacher, tiny_cond):
    cfg = load_distill_config("configs/tiny.yaml")
    teacher = freeze(tiny_teacher)
    torch.manual_seed(0)
    disc = build_discriminator(teacher, cfg.ladd.disc)
    x = torch.randn(32, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    cond = tiny_cond(32)
    res = train_probe(teacher, disc, (x, cond), (blur_latents(x), cond), m=-2.0, steps=200, batch_size=8, lr=1e-3,
                      eval_every=20, target=0.95)
    assert res.accuracy >= 0.95 and res.steps <= 200, res.history
    assert [s for s, _ in res.history] == list(range(20, res.steps + 1, 20))
    with pytest.raises(ValueError, match="same number"):
        train_probe(teacher, disc, (x, cond), (x[:4], cond[:4]))
    assert torch.equal(shuffled_prompts(cond).pooled[1], cond.pooled[0])


@pytest.fixture(scope="module")
def nano_latents():
    """128 teacher samples (8 Euler steps, the card's CFG) for ShapeWorld captions: enough to see sharp shapes."""
    import sys

    sys.path.insert(0, "benchmarks")
    from disc_probe import teacher_samples

    return teacher_samples("assets/nano/teacher", 128, steps=8)


def test_heads_on_nano_teacher_see_latent_blur(nano_latents):
    """Accuracy >= 0.9 within 500 steps at low noise (the preset's heads and learning rate)."""
    from ladd.models.teacher import load_teacher

    cfg = load_distill_config("configs/nano.yaml")
    teacher = freeze(load_teacher(cfg.paths.teacher))
    latents, cond = nano_latents
    torch.manual_seed(0)
    disc = build_discriminator(teacher, cfg.ladd.disc)
    res = train_probe(teacher, disc, (latents, cond), (blur_latents(latents), cond), m=-1.0, s=1.0, steps=500,
                      batch_size=16, lr=cfg.optim["heads"].lr, eval_every=50, target=0.9)
    assert res.accuracy >= 0.9, res.history
    assert isinstance(cond, TextEmbeddings)
