"""Latent feature heads, LADD's discriminator: the frozen teacher as feature network plus one small conditioned
2D head per tapped block.

The teacher part lives in the teacher adapter (``features(x, t, cond, blocks)``, forward hooks); this module holds
only the trainable heads. Each head follows StyleGAN-T's ``DiscHead`` (Sauer et al. 2023), in 2D on the latent's
patch grid as LADD does (docs/method.md, step 6):

    feat [B, C, h, w] -> 1x1 conv -> norm -> LeakyReLU(0.2)              (h_0: [B, W, h, w])
                      -> depth x residual (3x3 conv -> norm -> LeakyReLU(0.2))   (h: [B, W, h, w])
    logit map = conv1x1(h) + <h, e_k(c)> / sqrt(W)                        ([B, 1, h, w])

with ``c = MLP([sinusoidal(t_hat), pooled])`` shared by all heads and ``e_k`` a per-head linear map: the
projection-discriminator conditioning (Miyato & Koyama 2018) that docs/method.md asks for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import spectral_norm

from ladd.config import fail, number


@dataclass
class DiscriminatorConfig:
    # Tapped teacher blocks: "all" (docs/method.md's default for small teachers), "spaced:K" (K evenly spaced blocks
    # ending with the last, docs/method.md's choice for large teachers; SANA uses 4 of 20) or a list of block indices.
    # The teacher's passes stop after the last tapped block: heads on the first k of n blocks cost k/n of them.
    # Typed Any because ladd.config coerces only one branch of a Union; checked here instead.
    blocks: Any = "all"
    # Heads: width 64, two residual 3x3 blocks (StyleGAN-T has one; a previous attempt's heads were too weak).
    # Measured on the nano teacher (CPU, batch 16): 6 such heads add ~0.2x of a teacher training step per
    # iteration; width 128 / depth 1 adds ~0.35x. The teacher passes alone already cost ~2x (ladd.methods.ladd).
    head_width: int = 64
    head_depth: int = 2        # residual 3x3 conv blocks per head
    norm: str = "group"        # "group" (GroupNorm) or "spectral" (spectral norm on the convs)
    t_embed_dim: int = 128     # sinusoidal embedding of t_hat, concatenated with the pooled text embedding
    # t_hat ~ LogitNormal(m, s) (docs/method.md: m = 1, s = 1; median t_hat 0.73). A list of centres, e.g.
    # [1.0, 1.5], is a mixture: each sample's m is drawn from the list with equal probability (ladd.draws), so the
    # heads see both noise levels in one batch; they are conditioned on t_hat and can tell them apart.
    noise_m: Any = 1.0
    noise_s: float = 1.0
    shared_t: bool = False     # real and fake share t_hat (docs/method.md unconfirmed; default: independent draws)
    # A global term in each head's logit (pooled over the patch grid, conditioned like the map): the map's 3x3
    # convolutions see ~5x5 patches (GroupNorm adds only the grid's mean and variance), too little to count objects
    # or to notice a second one far away.
    global_logit: bool = False

    def __post_init__(self):
        self._check_blocks()
        for name in ("head_width", "head_depth", "t_embed_dim"):
            if getattr(self, name) < 1:
                fail(f"ladd.disc.{name}", f"got {getattr(self, name)}", "give a positive integer")
        if self.norm not in ("group", "spectral"):
            fail("ladd.disc.norm", f"got {self.norm!r}", "use 'group' or 'spectral'")
        self.noise_m = self._check_noise_m(self.noise_m)
        self.noise_s = number("ladd.disc.noise_s", self.noise_s)
        if not 0 < self.noise_s <= 5:
            fail("ladd.disc.noise_s", f"got {self.noise_s}", "use 0 < s <= 5 (docs/method.md default 1)")

    @staticmethod
    def _check_noise_m(m):
        """A number, or a list of numbers (a mixture; a one-element list is that number)."""
        many = isinstance(m, (list, tuple))
        if many and len(m) == 0:
            fail("ladd.disc.noise_m", "got an empty list", "give a number, e.g. 1, or a list of centres, e.g. [1, 1.5]")
        ms = [number("ladd.disc.noise_m", v) for v in (m if many else [m])]
        for v in ms:
            if not abs(v) <= 5:
                fail("ladd.disc.noise_m", f"got {v}, t_hat would be almost always 0 or 1",
                     "use -5 <= m <= 5 (docs/method.md default 1)")
        return ms if len(ms) > 1 else ms[0]

    def _check_blocks(self) -> None:
        b = self.blocks
        if isinstance(b, str):
            if b == "all":
                return
            if b.startswith("spaced:") and b[7:].isdigit() and int(b[7:]) >= 1:
                return
            fail("ladd.disc.blocks", f"got {b!r}", "use 'all', 'spaced:K' (K >= 1) or a list of block indices")
        if not isinstance(b, (list, tuple)) or len(b) == 0:
            fail("ladd.disc.blocks", f"got {b!r}", "use 'all', 'spaced:K' or a non-empty list of block indices")
        bad = [i for i in b if isinstance(i, bool) or not isinstance(i, int) or i < 0]
        if bad:
            fail("ladd.disc.blocks", f"{bad} are not block indices", "give integers >= 0 (block 0 is the first)")
        if len(set(b)) != len(b):
            fail("ladd.disc.blocks", f"{list(b)} has duplicates", "list each block once")
        self.blocks = list(b)

    def resolve_blocks(self, num_blocks: int) -> list[int]:
        """The tapped block indices for a teacher with ``num_blocks`` transformer blocks."""
        if self.blocks == "all":
            return list(range(num_blocks))
        if isinstance(self.blocks, str):  # "spaced:K"
            k = int(self.blocks[7:])
            if k > num_blocks:
                fail("ladd.disc.blocks", f"asks for {k} blocks but the teacher has {num_blocks}",
                      f"use spaced:K with K <= {num_blocks}")
            return [round((i + 1) * num_blocks / k) - 1 for i in range(k)]
        unknown = [i for i in self.blocks if i >= num_blocks]
        if unknown:
            fail("ladd.disc.blocks", f"unknown block index {unknown}: the teacher has {num_blocks} blocks "
                  f"(0..{num_blocks - 1})", "remove them or use 'all'")
        return list(self.blocks)


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

    def __init__(self, in_channels: int, width: int = 64, depth: int = 2, norm: str = "group",
                 global_logit: bool = False):
        super().__init__()
        self.main = nn.Sequential(_ConvBlock(in_channels, width, 1, norm),
                                  *[_Residual(_ConvBlock(width, width, 3, norm)) for _ in range(depth)])
        self.out = _conv(width, 1, 1, norm)
        self.cond = nn.Linear(width, width)  # e_k: the shared condition code -> this head's projection vector
        self.width = width
        self.whole = _GlobalLogit(width) if global_logit else None

    def forward(self, feat: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.main(feat)                                             # [B, W, h, w]
        proj = self.cond(c).to(h.dtype)[:, :, None, None]               # [B, W, 1, 1]
        logits = self.out(h) + (h * proj).sum(1, keepdim=True) / math.sqrt(self.width)  # [B, 1, h, w]
        if self.whole is None:
            return logits
        return logits + self.whole(h, c)[:, :, None, None]              # the same global logit at every patch


class _GlobalLogit(nn.Module):
    """``ladd.disc.global_logit``: a head's features averaged over the grid -> linear + LeakyReLU -> one logit
    ``[B, 1]``, conditioned by its own projection of the condition code, as the map is."""

    def __init__(self, width: int):
        super().__init__()
        self.pool = nn.Sequential(nn.Linear(width, width), nn.LeakyReLU(0.2))
        self.out = nn.Linear(width, 1)
        self.cond = nn.Linear(width, width)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        g = self.pool(h.mean((2, 3)))                                   # [B, W]
        return self.out(g) + (g * self.cond(c).to(g.dtype)).sum(1, keepdim=True) / math.sqrt(g.shape[1])


class Discriminator(nn.Module):
    """Heads for the teacher features of ``blocks``.

    ``forward(features, t_hat, pooled)``: ``features[k]`` ``[B, C_k, h, w]`` (any h, w), ``t_hat`` ``[B]`` in
    [0, 1], ``pooled`` ``[B, P]`` -> list of logit maps ``[B, 1, h, w]``, one per head.
    """

    def __init__(self, channels: list[int], pooled_dim: int, blocks: list[int], width: int = 64, depth: int = 2,
                 norm: str = "group", t_embed_dim: int = 128, global_logit: bool = False):
        super().__init__()
        if len(channels) != len(blocks):
            raise ValueError(f"{len(channels)} channel counts for {len(blocks)} blocks")
        self.blocks = list(blocks)  # the teacher blocks these heads read, in order
        self.t_embed_dim = t_embed_dim
        self.cond_mlp = nn.Sequential(nn.Linear(t_embed_dim + pooled_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.heads = nn.ModuleList(DiscriminatorHead(c, width, depth, norm, global_logit) for c in channels)

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
                         cfg.head_width, cfg.head_depth, cfg.norm, cfg.t_embed_dim, cfg.global_logit)

