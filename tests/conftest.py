import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", min(2, os.cpu_count() or 1))))


@pytest.fixture
def tiny_teacher():
    """A tiny random SD3-architecture model on 4-channel latents with 32-d text embeddings."""
    from ladd.models.teacher import build_nano_teacher

    torch.manual_seed(0)
    return build_nano_teacher(num_layers=2, attention_head_dim=8, num_attention_heads=2, caption_projection_dim=16,
                              joint_attention_dim=32, pooled_projection_dim=32, in_channels=4, out_channels=4).eval()


@pytest.fixture
def tiny_cond():
    from ladd.models.text_encoder import TextEmbeddings

    def make(b: int, seed: int = 0) -> TextEmbeddings:
        g = torch.Generator().manual_seed(seed)
        return TextEmbeddings(torch.randn(b, 7, 32, generator=g), torch.randn(b, 32, generator=g))

    return make


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for the loop/shard tests: on a shared 2-core machine a busy core makes every parallel
    op wait for a descheduled thread (seen: ~30x slower)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
