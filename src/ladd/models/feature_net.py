"""Frozen pixel-space feature networks: ADD's discriminator backbone (docs/methods/add.md).

``features(images) -> list of [B, C_k, h_k, w_k]`` maps, one per tap, from images in [-1, 1] ``[B, 3, H, W]``;
``channels`` lists ``C_k``. Differentiable w.r.t. the images (the student's gradient flows back through it) and
never trained by a method. Two kinds, chosen by the folder's ``config.json``:

- ``ladd_feature_net: nano``: ``NanoFeatureNet``, a small CNN trained on ShapeWorld images *without labels*
  (``ladd nano train-featnet``, a masked auto-encoder; shipped as ``assets/nano/featnet``). The nano evaluator
  is the yardstick and never a training signal, so ADD in the nano world needs a network of its own.
- ``model_type: dinov2``: a transformers DINOv2 (ADD's choice: ViT-S/14) from a local folder; patch tokens of
  evenly spaced layers as ``[B, hidden, 16, 16]`` maps at 224 px input with ImageNet normalisation.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from ladd.models.io import AssetError, load_state, read_config

NANO_FEATURE_NET_CONFIG = {"ladd_feature_net": "nano", "channels": [32, 64, 128, 128]}
DINO_TAPS = 4  # DinoFeatures' default: four evenly spaced layers ending with the last
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class NanoFeatureNet(nn.Module):
    """Four stride-2 stages (conv 3x3 s2 -> GroupNorm -> SiLU -> conv 3x3 -> GroupNorm -> SiLU): 64 px images
    give maps of 32, 16, 8 and 4 cells, each stage's output a tap."""

    def __init__(self, channels: list[int] | tuple[int, ...] = (32, 64, 128, 128)):
        super().__init__()
        self.channels = list(channels)
        stages, cin = [], 3
        for c in self.channels:
            stages.append(nn.Sequential(nn.Conv2d(cin, c, 3, stride=2, padding=1), nn.GroupNorm(8, c), nn.SiLU(),
                                        nn.Conv2d(c, c, 3, padding=1), nn.GroupNorm(8, c), nn.SiLU()))
            cin = c
        self.stages = nn.ModuleList(stages)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        feats, h = [], images
        for stage in self.stages:
            h = stage(h)
            feats.append(h)
        return feats


class DinoFeatures(nn.Module):
    """A transformers DINOv2 as a feature network: patch tokens of ``layers`` (indices into the hidden states,
    0 = the embeddings) reshaped to maps. ``layers=None``: four evenly spaced layers ending with the last."""

    def __init__(self, model: nn.Module, layers: list[int] | None = None, size: int = 224):
        super().__init__()
        self.model, self.size = model, size
        n = model.config.num_hidden_layers
        self.layers = layers or [round((i + 1) * n / DINO_TAPS) for i in range(DINO_TAPS)]
        self.channels = [model.config.hidden_size] * len(self.layers)
        self.skip = 1 + getattr(model.config, "num_register_tokens", 0)  # CLS (+ register) tokens
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = F.interpolate((images + 1) / 2, size=(self.size, self.size), mode="bilinear", align_corners=False)
        x = (x - self.mean.to(x)) / self.std.to(x)
        hidden = self.model(pixel_values=x, output_hidden_states=True).hidden_states
        g = self.size // self.model.config.patch_size
        return [hidden[k][:, self.skip:].transpose(1, 2).reshape(x.shape[0], -1, g, g) for k in self.layers]


def load_feature_net(path: str | Path) -> nn.Module:
    """The frozen feature network in ``path`` (eval mode, no parameter grads); an AssetError naming the folder
    when it holds neither kind."""
    path = Path(path)
    config = read_config(path)
    if config.get("ladd_feature_net") == "nano":
        net = load_state(NanoFeatureNet(config["channels"]), path)
    elif str(config.get("model_type", "")).startswith("dinov2"):
        from transformers import AutoModel

        try:
            net = DinoFeatures(AutoModel.from_pretrained(path, local_files_only=True))
        except OSError as e:
            raise AssetError(f"{path}: the DINOv2 folder does not load ({e}); give a complete transformers "
                             f"folder (config.json + model.safetensors)") from None
    else:
        raise AssetError(f"{path} is not a feature network: its config.json has neither ladd_feature_net "
                         f"(a ladd nano network, `ladd nano train-featnet`) nor model_type dinov2 (a transformers "
                         f"DINOv2 folder)")
    return net.eval().requires_grad_(False)
