"""The LoRA student: low-rank adapters on the copy of the teacher, through peft (docs/method.md, Components: "a copy of
the teacher's weights ... or LoRA on the copy").

``add_lora`` injects peft LoRA layers with diffusers' own ``transformer.add_adapter`` (the path diffusers' SD3
LoRA training script uses, so diffusers' save/load functions read the result) and freezes every other weight:
only ``lora_A`` / ``lora_B`` train, and with peft's default init (``B = 0``) the student starts as the teacher.
``merged_copy`` and ``save_lora`` are the two exports: the adapters folded into plain weights, and the adapters
alone as the ``pytorch_lora_weights.safetensors`` that ``StableDiffusion3Pipeline.load_lora_weights`` and
``SD3Transformer2DModel.load_lora_adapter`` accept.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from ladd.config import ConfigError

# LoRA targets of diffusers' SD3 DreamBooth-LoRA script: q, k, v and output projections of the image (to_*) and
# text (add_*_proj, to_add_out) streams of every JointTransformerBlock's attention.
LORA_TARGETS = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
                "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out")
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"  # diffusers' default LoRA file name
_LAYERS = (torch.nn.Linear, torch.nn.Conv2d)      # what we let a target be (peft supports both)


def _matches(name: str, target: str) -> bool:
    """peft's rule for a list of target names: the full module name or a dotted suffix of it."""
    return name == target or name.endswith("." + target)


def check_targets(transformer: torch.nn.Module, targets: list[str]) -> None:
    """Raise ``ConfigError`` naming every target that matches no Linear/Conv2d of ``transformer``, with valid
    names to choose from (the blocks' first, without their ``transformer_blocks.N.`` prefix)."""
    layers = [n for n, m in transformer.named_modules() if isinstance(m, _LAYERS)]
    unknown = [t for t in targets if not any(_matches(n, t) for n in layers)]
    if unknown:
        in_blocks = [n.split(".", 2)[2] for n in layers if n.startswith("transformer_blocks.")]
        valid = list(dict.fromkeys(in_blocks + [n for n in layers if not n.startswith("transformer_blocks.")]))
        raise ConfigError(f"student.lora_targets: {unknown} match no Linear or Conv2d layer of the student; use "
                          f"module names or suffixes such as {valid[:12]}")


def check_targets_in_config(config: dict, targets: list[str]) -> None:
    """``check_targets`` on the architecture a teacher's config.json describes (meta tensors: no weights)."""
    from ladd.models.teacher import meta_transformer

    check_targets(meta_transformer(config), targets)


def add_lora(model: torch.nn.Module, rank: int, alpha: float | None, targets: list[str]) -> torch.nn.Module:
    """Inject rank-``rank`` LoRA (scale ``alpha / rank``, alpha ``None`` = rank) into ``model.transformer`` (an
    SD3Adapter) at ``targets``, in place; freeze all but the adapters. Returns ``model``."""
    try:
        from peft import LoraConfig
    except ImportError as e:
        raise ImportError("student.lora_rank > 0 needs peft, a dependency of ladd: pip install peft") from e
    check_targets(model.transformer, targets)
    model.transformer.add_adapter(LoraConfig(r=rank, lora_alpha=alpha or rank, target_modules=list(targets)))
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    return model


def is_lora(model: torch.nn.Module) -> bool:
    """Whether ``model`` (an SD3Adapter) carries peft adapters."""
    return bool(getattr(model.transformer, "peft_config", None))


def merged_copy(transformer: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``transformer`` with the adapters folded into its weights (``W + scale * B A``) and the peft
    layers removed: a plain ``SD3Transformer2DModel``. ``transformer`` itself is left as it is."""
    merged = copy.deepcopy(transformer)
    merged.fuse_lora()
    merged.unload_lora()
    return merged


def save_lora(transformer: torch.nn.Module, out_dir: str | Path) -> Path:
    """``out_dir/pytorch_lora_weights.safetensors``: the adapters in diffusers' SD3 LoRA format (keys
    ``transformer.<module>.lora_A.weight``), with the LoraConfig (rank, alpha, targets) in the file's metadata."""
    from diffusers import StableDiffusion3Pipeline
    from peft import get_peft_model_state_dict

    StableDiffusion3Pipeline.save_lora_weights(
        out_dir, transformer_lora_layers=get_peft_model_state_dict(transformer),
        transformer_lora_adapter_metadata=transformer.peft_config["default"].to_dict())
    return Path(out_dir) / LORA_WEIGHTS
