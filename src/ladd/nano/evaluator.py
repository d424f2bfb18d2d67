"""The nano evaluator: reads back every cell of a ShapeWorld image, and gives features for FD.

Two small CNNs:
- a *cell reader* shared over the 3x3 cells (each cell cropped with a margin from the image resized to 72x72):
  shape-or-empty (5 classes), color (6), size (2);
- a *texture net* on the whole image, trained to regress the blur and noise applied to it and to name the
  background texture. A network trained only to read attributes ignores blur and texture, so FD uses both:
  features = [mean over cells of the reader's embedding, texture embedding].
It is never a training signal for the generators: it only measures them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ladd.nano.vocab import BACKGROUNDS, CELLS, COLORS, SHAPES, SIZES

SIDE = 72  # the cell reader sees images resized to SIDE x SIDE: cells of 24 px, cropped with a 4 px margin
MARGIN = 4
TEXTURE_SIDE = 64  # the texture net sees the image at ShapeWorld's native 64 x 64, where blur and noise live
EVALUATOR_CONFIG = dict(width=16, embed=128, texture_embed=64, side=SIDE, margin=MARGIN)


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.GELU())


class Evaluator(nn.Module):
    def __init__(self, width: int = 16, embed: int = 128, texture_embed: int = 64, side: int = SIDE,
                 margin: int = MARGIN):
        super().__init__()
        self.side, self.margin = side, margin
        w = width
        self.reader = nn.Sequential(  # 32x32 cell crop -> embed
            _conv(3, w), _conv(w, 2 * w, 2), _conv(2 * w, 4 * w, 2), _conv(4 * w, embed, 2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.shape_head = nn.Linear(embed, len(SHAPES) + 1)  # class 0 = empty cell
        self.color_head = nn.Linear(embed, len(COLORS))
        self.size_head = nn.Linear(embed, len(SIZES))
        self.texture = nn.Sequential(  # 64x64 image -> texture_embed; stride 1 first to keep pixel detail
            _conv(3, w), _conv(w, 2 * w, 2), _conv(2 * w, 2 * w, 2), _conv(2 * w, texture_embed, 2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.degradation_head = nn.Linear(texture_embed, 2)  # (blur sigma, 10 * noise std)
        self.background_head = nn.Linear(texture_embed, len(BACKGROUNDS))

    @staticmethod
    def resize(images: torch.Tensor, side: int) -> torch.Tensor:
        """Images in [-1, 1] ``[B, 3, H, W]`` of any size, resized so that the shorter side is ``side`` (aspect
        kept: ShapeWorld sizes objects by the shorter cell side, so a non-square scene reads at the square's scale)."""
        h, w = images.shape[-2:]
        size = (round(h * side / min(h, w)), round(w * side / min(h, w)))
        if (h, w) != size:
            images = F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)
        return images

    def cells(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` (shorter side ``side``) -> cell crops ``[B * 9, 3, c + 2m, c + 2m]`` in CELLS order:
        squares of the shorter cell side ``c`` plus a margin ``m``, centred on the 3x3 grid's cells."""
        h, w = images.shape[-2:]
        c, m = self.side // 3, self.margin
        k = c + 2 * m
        padded = F.pad(images, (m, m, m, m), mode="replicate")
        tops = [round((r + 0.5) * h / 3 - c / 2) for r in range(3)]  # in the padded image: centre - k/2 + m
        lefts = [round((q + 0.5) * w / 3 - c / 2) for q in range(3)]
        crops = [padded[:, :, y:y + k, x:x + k] for y in tops for x in lefts]  # CELLS order: row-major
        return torch.stack(crops, 1).reshape(-1, 3, k, k)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        b = images.shape[0]
        emb = self.reader(self.cells(self.resize(images, self.side)))  # [B*9, embed]
        tex = self.texture(self.resize(images, TEXTURE_SIDE))  # [B, texture_embed] (pooled: any aspect)
        return {
            "shape": self.shape_head(emb).view(b, 9, -1),
            "color": self.color_head(emb).view(b, 9, -1),
            "size": self.size_head(emb).view(b, 9, -1),
            "degradation": self.degradation_head(tex),
            "background": self.background_head(tex),
            "features": torch.cat([emb.view(b, 9, -1).mean(1), tex], dim=1),
        }


def decode_readback(out: dict[str, torch.Tensor]) -> list[list[dict]]:
    """Logits -> per image, the list of objects read back: ``{"shape", "color", "size", "position"}``."""
    shape = out["shape"].argmax(-1).tolist()
    color = out["color"].argmax(-1).tolist()
    size = out["size"].argmax(-1).tolist()
    result = []
    for b in range(len(shape)):
        objs = []
        for cell in range(9):
            if shape[b][cell] == 0:
                continue
            objs.append({"shape": SHAPES[shape[b][cell] - 1], "color": COLORS[color[b][cell]],
                         "size": SIZES[size[b][cell]], "position": CELLS[cell]})
        result.append(objs)
    return result


def cell_targets(scenes: list[dict]) -> dict[str, torch.Tensor]:
    """Per-cell targets ``[B, 9]``: shape (0 empty), color and size (-100 where the cell is empty)."""
    b = len(scenes)
    shape = torch.zeros(b, 9, dtype=torch.long)
    color = torch.full((b, 9), -100, dtype=torch.long)
    size = torch.full((b, 9), -100, dtype=torch.long)
    for i, scene in enumerate(scenes):
        for o in scene["objects"]:
            c = CELLS.index(o["position"])
            shape[i, c] = SHAPES.index(o["shape"]) + 1
            color[i, c] = COLORS.index(o["color"])
            size[i, c] = SIZES.index(o["size"])
    return {"shape": shape, "color": color, "size": size}
