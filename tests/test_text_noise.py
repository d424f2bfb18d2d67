"""``ladd.text_noise``: noise on the student's prompt embeddings only (NEFTune-style); the heads' and the targets'
prompts stay clean, zero padding stays zero. Tiny random SD3 teacher, CPU."""

import pytest
import torch

from helpers import setup
from ladd.config import ConfigError
from ladd.distill.config import load_distill_config
from ladd.methods.components.student import jitter_text
from ladd.methods.ladd import generator_step
from ladd.models.text_encoder import TextEmbeddings

pytestmark = pytest.mark.usefixtures("one_thread")


def test_jitter_is_relative_to_each_vector_and_leaves_padding():
    tokens = torch.randn(8, 6, 256) * torch.tensor([1.0, 3.0, 0.5, 2.0, 0.0, 0.0]).view(1, 6, 1)  # two padded slots
    cond = TextEmbeddings(tokens, 5 * torch.randn(8, 64))
    out = jitter_text(cond, 0.2, torch.Generator().manual_seed(0))
    assert torch.equal(out.tokens[:, 4:], tokens[:, 4:])
    rel = (out.tokens - tokens)[:, :4].pow(2).mean(-1).sqrt() / tokens[:, :4].pow(2).mean(-1).sqrt()
    assert abs(rel.mean().item() - 0.2) < 0.02
    rel = (out.pooled - cond.pooled).pow(2).mean(-1).sqrt() / cond.pooled.pow(2).mean(-1).sqrt()
    assert abs(rel.mean().item() - 0.2) < 0.03
    again = jitter_text(cond, 0.2, torch.Generator().manual_seed(0))
    assert torch.equal(again.tokens, out.tokens) and torch.equal(again.pooled, out.pooled)


def test_the_student_sees_noisy_prompts_and_the_heads_clean_ones():
    cfg, teacher, student, disc, x0, cond = setup()
    def run(scale):
        cfg.ladd.text_noise = scale
        return generator_step(student, teacher, disc, x0, cond, cfg.ladd, cfg.student, torch.Generator().manual_seed(0))
    clean, noisy, off = run(0.0), run(0.5), run(0.0)
    assert torch.equal(clean.fake.x0_hat, off.fake.x0_hat)  # deterministic: the difference below is the noise
    assert not torch.allclose(clean.fake.x0_hat, noisy.fake.x0_hat)
    assert torch.equal(noisy.fake.pooled, cond.pooled[:len(noisy.fake.pooled)])  # the heads' prompts: clean
    with pytest.raises(ConfigError, match="ladd.text_noise"):
        load_distill_config(None, ["ladd.text_noise=-0.1"])
