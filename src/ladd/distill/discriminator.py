"""LADD's discriminator: the frozen teacher as feature network plus one small conditioned 2D head per tapped block.

The teacher part lives in the teacher adapter (``features(x, t, cond, blocks)``, forward hooks); this module holds
only the trainable heads. Each head follows StyleGAN-T's ``DiscHead`` (Sauer et al. 2023), in 2D on the latent's
patch grid as LADD does (shared/LADD.md, step 6):

    feat [B, C, h, w] -> 1x1 conv -> norm -> LeakyReLU(0.2)              (h_0: [B, W, h, w])
                      -> depth x residual (3x3 conv -> norm -> LeakyReLU(0.2))   (h: [B, W, h, w])
    logit map = conv1x1(h) + <h, e_k(c)> / sqrt(W)                        ([B, 1, h, w])

with ``c = MLP([sinusoidal(t_hat), pooled])`` shared by all heads and ``e_k`` a per-head linear map: the
projection-discriminator conditioning (Miyato & Koyama 2018) that LADD.md asks for.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import spectral_norm

from ladd.distill.config import DiscriminatorConfig


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding ``[B, dim]`` of ``t`` in [0, 1] ``[B]``, on the 0..1000 scale diffusion models use
    so that neighbouring noise levels get distinguishable codes."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    return F.pad(emb, (0, dim % 2))


def _conv(cin: int, cout: int, k: int, norm: str) -> nn.Module:
    conv = nn.Conv2d(cin, cout, k, padding=k // 2)
    return spectral_norm(conv) if norm == "spectral" else conv


def _norm(width: int, norm: str) -> nn.Module:
    # GroupNorm, not BatchNorm: per-sample statistics keep real and fake batches from leaking into each other
    # and keep R1 a per-sample quantity. Groups: 32 where the width allows (gcd keeps any width valid).
    return nn.GroupNorm(math.gcd(32, width), width) if norm == "group" else nn.Identity()


class _ConvBlock(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int, norm: str):
        super().__init__(_conv(cin, cout, k, norm), _norm(cout, norm), nn.LeakyReLU(0.2))


class _Residual(nn.Module):
    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return (x + self.fn(x)) / math.sqrt(2)  # variance-preserving skip, as StyleGAN-T


class DiscriminatorHead(nn.Module):
    """One head on one block's features: ``[B, C, h, w]`` and condition ``[B, W]`` -> logit map ``[B, 1, h, w]``."""

    def __init__(self, in_channels: int, width: int = 64, depth: int = 2, norm: str = "group"):
        super().__init__()
        self.main = nn.Sequential(_ConvBlock(in_channels, width, 1, norm),
                                  *[_Residual(_ConvBlock(width, width, 3, norm)) for _ in range(depth)])
        self.out = _conv(width, 1, 1, norm)
        self.cond = nn.Linear(width, width)  # e_k: the shared condition code -> this head's projection vector
        self.width = width

    def forward(self, feat: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.main(feat)                                             # [B, W, h, w]
        proj = self.cond(c).to(h.dtype)[:, :, None, None]               # [B, W, 1, 1]
        return self.out(h) + (h * proj).sum(1, keepdim=True) / math.sqrt(self.width)  # [B, 1, h, w]


class Discriminator(nn.Module):
    """Heads for the teacher features of ``blocks``.

    ``forward(features, t_hat, pooled)``: ``features[k]`` ``[B, C_k, h, w]`` (any h, w), ``t_hat`` ``[B]`` in
    [0, 1], ``pooled`` ``[B, P]`` -> list of logit maps ``[B, 1, h, w]``, one per head.
    """

    def __init__(self, channels: list[int], pooled_dim: int, blocks: list[int], width: int = 64, depth: int = 2,
                 norm: str = "group", t_embed_dim: int = 128):
        super().__init__()
        if len(channels) != len(blocks):
            raise ValueError(f"{len(channels)} channel counts for {len(blocks)} blocks")
        self.blocks = list(blocks)  # the teacher blocks these heads read, in order
        self.t_embed_dim = t_embed_dim
        self.cond_mlp = nn.Sequential(nn.Linear(t_embed_dim + pooled_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.heads = nn.ModuleList(DiscriminatorHead(c, width, depth, norm) for c in channels)

    def condition(self, t_hat: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """The shared condition code ``[B, W]`` from ``t_hat`` ``[B]`` and ``pooled`` ``[B, P]``."""
        w = self.cond_mlp[0].weight
        # Text embeddings come at their encoder's scale: MiniLM's pooled vector has unit norm, so over 384 dims a
        # prompt differs from another by ~0.04 per dim against the sinusoid's +-1, and the heads barely saw the
        # prompt (probe: 0.65 accuracy on shuffled prompts). A parameter-free LayerNorm puts both on one scale.
        pooled = F.layer_norm(pooled.to(w), pooled.shape[-1:])
        x = torch.cat([timestep_embedding(t_hat, self.t_embed_dim).to(w), pooled], dim=1)
        return self.cond_mlp(x)

    def forward(self, features: list[torch.Tensor], t_hat: torch.Tensor, pooled: torch.Tensor) -> list[torch.Tensor]:
        if len(features) != len(self.heads):
            raise ValueError(f"got {len(features)} feature maps for {len(self.heads)} heads (blocks {self.blocks})")
        c = self.condition(t_hat, pooled)
        return [head(f, c) for head, f in zip(self.heads, features)]


def feature_channels(teacher) -> int:
    """Channels of the teacher's block outputs. SD3-specific (inner dim = heads x head dim); an adapter property
    would remove this coupling."""
    cfg = teacher.config
    return cfg.num_attention_heads * cfg.attention_head_dim


def build_discriminator(teacher, cfg: DiscriminatorConfig) -> Discriminator:
    """Heads for ``teacher`` per ``cfg``; raises ConfigError for block indices the teacher does not have."""
    blocks = cfg.resolve_blocks(teacher.num_blocks)
    return Discriminator([feature_channels(teacher)] * len(blocks), teacher.config.pooled_projection_dim, blocks,
                         cfg.head_width, cfg.head_depth, cfg.norm, cfg.t_embed_dim)

