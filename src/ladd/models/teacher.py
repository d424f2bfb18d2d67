"""The teacher adapter for SD3-architecture models (diffusers ``SD3Transformer2DModel``).

Everything else in ladd talks to a model through two methods:

- ``velocity(x, t, cond) -> v``: ``x`` latents ``[B, C, h, w]``, ``t`` in [0, 1] ``[B]``, ``cond`` TextEmbeddings;
  ``v = eps - x0`` in our convention (see ``ladd.flow``).
- ``features(x, t, cond, blocks) -> list of [B, C', h', w']``: the image-token outputs of the chosen transformer
  blocks, reshaped to the latent's patch grid (forward hooks; the discriminator's feature network).

The one model-specific scale, diffusers' ``timestep = 1000 t``, lives here. SD3's transformer predicts
``eps - x0`` directly, so no sign or scale conversion of the output is needed.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import SD3Transformer2DModel

from ladd.models.io import DIFFUSERS_WEIGHTS, from_pretrained, load_state, read_config
from ladd.models.text_encoder import TextEmbeddings
from ladd.models.wrap import is_sharded

TIMESTEP_SCALE = 1000.0

NANO_TEACHER_CONFIG = dict(
    sample_size=8,
    patch_size=1,
    in_channels=16,
    out_channels=16,
    num_layers=6,
    attention_head_dim=32,
    num_attention_heads=4,
    joint_attention_dim=384,
    caption_projection_dim=128,
    pooled_projection_dim=384,
    pos_embed_max_size=16,
    qk_norm="rms_norm",
)


class SD3Adapter(torch.nn.Module):
    def __init__(self, transformer: SD3Transformer2DModel):
        super().__init__()
        self.transformer = transformer

    @property
    def config(self):
        return self.transformer.config

    @property
    def num_blocks(self) -> int:
        return len(self.transformer.transformer_blocks)

    @property
    def feature_dim(self) -> int:
        """Channels of the maps ``features`` returns (the transformer's inner width)."""
        return self.config.num_attention_heads * self.config.attention_head_dim

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: TextEmbeddings, blocks: list[int] | None = None):
        """``velocity``, or ``features`` of ``blocks`` when given. Training calls models this way, through
        ``__call__``: DDP syncs gradients and FSDP gathers a sharded model's weights only there."""
        return self.velocity(x, t, cond) if blocks is None else self.features(x, t, cond, blocks)

    def enable_gradient_checkpointing(self) -> None:
        """Recompute each transformer block's activations in the backward pass (diffusers' switch): less memory
        for the student and for the teacher the generator step backpropagates through, ~30% more compute."""
        self.transformer.enable_gradient_checkpointing()

    def velocity(self, x: torch.Tensor, t: torch.Tensor, cond: TextEmbeddings) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        return self.transformer(hidden_states=x, encoder_hidden_states=cond.tokens.to(x.dtype),
                                pooled_projections=cond.pooled.to(x.dtype), timestep=t * TIMESTEP_SCALE,
                                return_dict=False)[0]

    def features(self, x: torch.Tensor, t: torch.Tensor, cond: TextEmbeddings, blocks: list[int]):
        """Image-token outputs of ``blocks`` as ``[B, inner_dim, h/p, w/p]`` maps (forward hooks).

        The forward stops after the last tapped block (diffusers has no such switch: its hook raises, and the
        exception ends the forward here), so heads on the first k of n blocks cost k/n of a teacher pass, forward
        and backward. Not under FSDP, whose forward must run to its end to reshard; there the rest runs too."""
        n = self.num_blocks
        bad = [b for b in blocks if not -n <= b < n]
        if bad:
            raise ValueError(f"feature blocks {bad} out of range: the model has {n} blocks")
        p = self.config.patch_size
        h, w = x.shape[-2] // p, x.shape[-1] // p
        last = max(b % n for b in blocks)
        stop = last < n - 1 and not is_sharded(self)
        taps: dict[int, torch.Tensor] = {}
        handles = []
        for b in blocks:
            def hook(_module, _inputs, output, b=b):
                image_tokens = output[1]  # JointTransformerBlock returns (text tokens, image tokens)
                taps[b] = image_tokens.transpose(1, 2).reshape(x.shape[0], -1, h, w)
                if stop and b % n == last:
                    raise _Tapped
            handles.append(self.transformer.transformer_blocks[b].register_forward_hook(hook))
        try:
            self.velocity(x, t, cond)
        except _Tapped:
            pass
        finally:
            for handle in handles:
                handle.remove()
        return [taps[b] for b in blocks]


class _Tapped(Exception):
    """Raised by the last tapped block's hook: the features are all taken, the rest of the forward is skipped."""


def meta_transformer(config: dict) -> SD3Transformer2DModel:
    """The architecture a teacher's config.json describes, with parameters on the meta device (no weights, no
    memory): for checking names (LoRA targets, frozen parameters) before any work starts."""
    with torch.device("meta"):
        return SD3Transformer2DModel.from_config({k: v for k, v in config.items() if not k.startswith("ladd_")})


def build_nano_teacher(**overrides) -> SD3Adapter:
    return SD3Adapter(SD3Transformer2DModel.from_config({**NANO_TEACHER_CONFIG, **overrides}))


def load_teacher(path: str | Path, weights: bool = True, device=None) -> SD3Adapter:
    """An SD3-architecture transformer from a ladd asset folder or a diffusers transformer folder. ``weights=False``
    builds it from its config alone with parameters on the meta device (no weight file is read, no memory taken):
    the other processes of an FSDP launch that loads on rank 0 only (ladd.runtime.loads_on_rank0_only). ``device``
    puts it there; a diffusers folder's weights are read straight onto a GPU (no full copy in host memory), so that
    every process of a launch that samples with the whole teacher (``ladd synth`` under torchrun, ``ladd eval``)
    costs the host only the page cache that they share."""
    path = Path(path)
    # one weights file, save_pretrained's shards (a large model), or a pipeline folder
    diffusers_folder = any((path / f).exists() for f in DIFFUSERS_WEIGHTS) or (path / "transformer").is_dir()
    sub = "transformer" if (path / "transformer").is_dir() else None
    on = torch.device(device) if device is not None else torch.device("cpu")
    if diffusers_folder and weights:
        return SD3Adapter(from_pretrained(SD3Transformer2DModel, path, "transformer", subfolder=sub,
                                          **({"device_map": {"": on}} if on.type != "cpu" else {})))
    config = SD3Transformer2DModel.load_config(path, subfolder=sub) if diffusers_folder else read_config(path)
    config = {k: v for k, v in config.items() if not k.startswith("ladd_") and not k.startswith("_")}
    if not weights:
        from accelerate import init_empty_weights

        with init_empty_weights():  # parameters on meta; buffers (the position embedding) computed as usual
            return SD3Adapter(SD3Transformer2DModel.from_config(config).eval())
    return SD3Adapter(load_state(SD3Transformer2DModel.from_config(config), path).eval()).to(on)  # small: nano assets
