"""What the core asks of the nano world, in one place: the core reaches it only through
``ladd.models.registry.world("nano")`` (docs/architecture.md, "Layers"), never by importing ``ladd.nano``.

ShapeWorld's versions (data made under other ones is not reused), the caption of a training scene, real images,
the renderer of a prompt's object spec, the check of an image size, the evaluation prompt files (the contract in
docs/evaluation.md, checked against the vocabulary) and the evaluator that reads images back.
"""

from __future__ import annotations

import numpy as np

from ladd.nano import prompts, shapeworld
from ladd.nano.evaluator import Evaluator, decode_readback
from ladd.nano.prompts import caption, read_prompts, write_prompts
from ladd.nano.shapeworld import check_size, render_spec, sample, sample_scene, scene_rng

__all__ = ["Evaluator", "caption_of", "check_size", "data_version", "decode_readback", "read_prompts", "real_image",
           "render_spec", "write_prompts"]


def data_version() -> str:
    """The versions of the scenes and of their captions; training data made under other ones is remade."""
    return f"world {shapeworld.WORLD_VERSION}, captions {prompts.CAPTION_VERSION}"


def caption_of(seed: int, index: int) -> tuple[str, list[dict]]:
    """The caption (text, object spec) of scene ``index`` of ShapeWorld ``seed`` (without rendering it)."""
    scene = sample_scene(scene_rng(seed, index))
    return caption(scene, np.random.default_rng([int(seed), int(index), 0xCA9]))


def real_image(seed: int, index: int, height: int, width: int) -> np.ndarray:
    """Image ``index`` of ShapeWorld ``seed``: uint8 ``[H, W, 3]``."""
    return sample(seed, index, height, width)[0]
