"""A deeper student that starts as its teacher's function: transformer blocks inserted with their gates at zero.

SD3's joint blocks add their attention and MLP outputs to the residual streams through adaLN-zero gates (DiT's
init, Peebles & Xie 2023): with every gate at zero a block passes both streams through unchanged. ``insert_blocks``
copies some of the model's blocks, zeroes the copies' gate rows and places each copy after its original, so that
the deeper model computes exactly what the model computed, and training opens the gates
(``student.extra_blocks``; docs/method.md, "A deeper student").
"""

from __future__ import annotations

import copy

import torch
from diffusers import SD3Transformer2DModel

# AdaLayerNormZero's linear writes [shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp] (diffusers)
GATE_CHUNKS = (2, 5)
NUM_CHUNKS = 6


def check_growth(config: dict, extra: int) -> None:
    """``extra`` blocks can be inserted into the transformer of ``config`` (its config.json), else ValueError."""
    num_blocks = config["num_layers"]
    if not 0 <= extra <= num_blocks - 1:
        raise ValueError(f"student.extra_blocks: got {extra}, the teacher has {num_blocks} blocks; use 0 to "
                         f"{num_blocks - 1} (one copy after each block but the last)")
    if extra and config.get("dual_attention_layers"):
        raise ValueError("student.extra_blocks: SD3.5's dual-attention blocks are not supported; use 0")


def twin_positions(num_blocks: int, extra: int) -> list[int]:
    """The blocks whose zero-gated copies are inserted: ``extra`` of the first ``num_blocks - 1`` spread evenly
    (the last block writes no text stream, so nothing can follow it)."""
    return [round((i + 0.5) * (num_blocks - 1) / extra - 0.5) for i in range(extra)] if extra else []


def scale_gates(norm: torch.nn.Module, scale: float) -> None:
    """Scale the gate rows of an AdaLayerNormZero's modulation linear (at 0 its block's output adds nothing)."""
    rows = norm.linear.out_features // NUM_CHUNKS
    with torch.no_grad():
        for c in GATE_CHUNKS:
            norm.linear.weight[c * rows:(c + 1) * rows].mul_(scale)
            norm.linear.bias[c * rows:(c + 1) * rows].mul_(scale)


def insert_blocks(transformer: SD3Transformer2DModel, extra: int, gate: float = 0.0) -> SD3Transformer2DModel:
    """A new ``SD3Transformer2DModel`` with ``extra`` more joint blocks (its config's ``num_layers`` says so): each
    a copy of a block (``twin_positions``) with its gates at ``gate`` times the original's, right after it; every
    other weight is ``transformer``'s (the same tensors: ``transformer`` is to be dropped). At ``gate = 0`` the two compute the same function; above, the copies' gates
    are open from the start (zero gates get no gradient into their block's other weights until they move)."""
    check_growth(transformer.config, extra)
    if extra == 0:
        return transformer
    blocks = list(transformer.transformer_blocks)
    twins = set(twin_positions(len(blocks), extra))
    grown = []
    for i, block in enumerate(blocks):
        grown.append(block)
        if i in twins:
            twin = copy.deepcopy(block)
            scale_gates(twin.norm1, gate)
            scale_gates(twin.norm1_context, gate)
            grown.append(twin)
    config = {k: v for k, v in transformer.config.items() if not k.startswith("_")}
    config["num_layers"] = len(grown)
    with torch.device("meta"):
        deeper = SD3Transformer2DModel.from_config(config)
    state = {k: v for k, v in transformer.state_dict().items() if not k.startswith("transformer_blocks.")}
    for i, block in enumerate(grown):
        state.update({f"transformer_blocks.{i}.{k}": v for k, v in block.state_dict().items()})
    deeper.load_state_dict(state, assign=True)  # the weights themselves (also a meta model's, under FSDP)
    if transformer.is_gradient_checkpointing:  # train.gradient_checkpointing, set on the teacher before the copy
        deeper.enable_gradient_checkpointing()
    return deeper
