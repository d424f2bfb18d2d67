"""SD3 / SD3.5 from a local diffusers ``StableDiffusion3Pipeline`` folder: the folder check, the prompt encoder and
the settings the folder implies. Every SD3-specific detail outside the transformer (ladd.models.teacher) and the
VAE (ladd.models.vae) lives here.

A pipeline folder (``huggingface-cli download stabilityai/stable-diffusion-3-medium-diffusers --local-dir D``)::

    model_index.json   _class_name StableDiffusion3Pipeline
    transformer/       SD3Transformer2DModel: the teacher (paths.teacher=D)
    vae/               AutoencoderKL, 16 channels (paths.vae=D/vae)
    scheduler/         FlowMatchEulerDiscreteScheduler: its shift is the teacher's recommended time shift
    text_encoder/ tokenizer/       CLIP-L
    text_encoder_2/ tokenizer_2/   CLIP-G
    text_encoder_3/ tokenizer_3/   T5-XXL, optional (without it the pipeline zero-fills T5's tokens)

The prompt encoder runs the pipeline's own ``encode_prompt`` (CLIP-L/G penultimate states concatenated and zero-padded
to T5's width, then T5's tokens appended; pooled = the two CLIP projections concatenated): tokens
``[B, 77 + max_length, joint_attention_dim]`` (4096 for SD3), pooled ``[B, pooled_projection_dim]`` (2048).
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import torch

from ladd.models.io import AssetError
from ladd.models.text_encoder import CachedEncoder, TextEmbeddings

log = logging.getLogger(__name__)
PIPELINE = "StableDiffusion3Pipeline"
# component -> (what it is, a file it must hold: a glob pattern)
REQUIRED = {
    "transformer": ("the SD3Transformer2DModel", "config.json"),
    "vae": ("the 16-channel AutoencoderKL", "config.json"),
    "scheduler": ("FlowMatchEulerDiscreteScheduler", "scheduler_config.json"),
    "text_encoder": ("CLIP-L text encoder", "config.json"),
    "text_encoder_2": ("CLIP-G text encoder", "config.json"),
    "tokenizer": ("CLIP-L tokenizer", "*"),
    "tokenizer_2": ("CLIP-G tokenizer", "*"),
}
T5 = ("text_encoder_3", "tokenizer_3")
WEIGHTS = ("*.safetensors", "*.bin")
# StableDiffusion3Pipeline.__call__'s defaults (num_inference_steps, guidance_scale, max_sequence_length): the
# setting of SD3-medium's model card. SD3.5-Large's card uses guidance 3.5 (set data.guidance in its preset).
PIPELINE_STEPS, PIPELINE_GUIDANCE, T5_LENGTH = 28, 7.0, 256
EXPECTED = ("model_index.json (_class_name StableDiffusion3Pipeline) with transformer/, vae/, scheduler/, "
            "text_encoder/ + tokenizer/ (CLIP-L), text_encoder_2/ + tokenizer_2/ (CLIP-G) and optionally "
            "text_encoder_3/ + tokenizer_3/ (T5)")


def is_pipeline_folder(path: str | Path) -> bool:
    """A diffusers pipeline folder (it has ``model_index.json``), as opposed to a single model folder."""
    return (Path(path) / "model_index.json").is_file()


def _complete(folder: Path, pattern: str, weights: bool) -> bool:
    return folder.is_dir() and any(folder.glob(pattern)) and (not weights or any(
        f for w in WEIGHTS for f in folder.glob(w)))


def check_sd3_folder(path: str | Path) -> dict:
    """Check a local ``StableDiffusion3Pipeline`` folder from its JSON files and folder listing only (no weights
    are read); returns ``model_index.json``. Raises ``AssetError`` naming what is missing and what was expected."""
    path = Path(path)
    if not path.is_dir():
        raise AssetError(f"{path} does not exist; expected a local diffusers SD3 pipeline folder: {EXPECTED} "
                         f"(e.g. huggingface-cli download stabilityai/stable-diffusion-3-medium-diffusers "
                         f"--local-dir {path})")
    if not is_pipeline_folder(path):
        raise AssetError(f"{path} has no model_index.json, so it is not a diffusers pipeline folder; "
                         f"expected {EXPECTED}")
    try:
        index = json.loads((path / "model_index.json").read_text())
    except json.JSONDecodeError as e:
        raise AssetError(f"{path / 'model_index.json'} is not valid JSON ({e}); download it again") from e
    if index.get("_class_name") != PIPELINE:
        raise AssetError(f"{path / 'model_index.json'} names {index.get('_class_name')!r}, expected {PIPELINE!r} "
                         f"(SD3 / SD3.5); other pipelines (FLUX, SANA) have no adapter yet")
    missing = [f"{name}/ ({what})" for name, (what, pattern) in REQUIRED.items()
               if not _complete(path / name, pattern, weights=pattern == "config.json")]
    if (path / T5[0]).is_dir() != (path / T5[1]).is_dir():
        missing.append(f"{T5[0]}/ and {T5[1]}/ (T5 text encoder and tokenizer: both or neither)")
    elif (path / T5[0]).is_dir() and not _complete(path / T5[0], "config.json", weights=True):
        missing.append(f"{T5[0]}/ (T5 text encoder)")
    if missing:
        raise AssetError(f"{path} is not a complete {PIPELINE} folder: missing or incomplete (no config or no "
                         f"weights): {', '.join(missing)}; expected {EXPECTED}. Download the missing parts again")
    return index


def has_t5(path: str | Path) -> bool:
    return all((Path(path) / name).is_dir() for name in T5)


def text_encoder_spec(path: str | Path) -> dict:
    """The text encoder spec (ladd.models.text_encoder.load_text_encoder) of an SD3 pipeline folder."""
    return {"name": "sd3", "path": str(Path(path).resolve()), "max_length": T5_LENGTH}


def recommended_settings(path: str | Path) -> dict:
    """The teacher's many-step setting: the pipeline's default steps and guidance, Euler (its scheduler) with the
    time shift of its ``scheduler_config.json`` (SD3: 3.0)."""
    scheduler = json.loads((Path(path) / "scheduler" / "scheduler_config.json").read_text())
    if scheduler.get("use_dynamic_shifting"):
        raise AssetError(f"{path}/scheduler uses a resolution-dependent (dynamic) shift, which ladd does not "
                         f"implement; SD3 / SD3.5 use a fixed shift")
    return {"steps": PIPELINE_STEPS, "guidance": PIPELINE_GUIDANCE, "sampler": "euler",
            "shift": float(scheduler.get("shift", 1.0))}


def load_prompt_pipeline(path: str | Path, device, dtype: torch.dtype):
    """The pipeline's text encoders and tokenizers only (no transformer, no VAE)."""
    from diffusers import StableDiffusion3Pipeline

    path = Path(path)
    no_t5 = {} if has_t5(path) else {"text_encoder_3": None, "tokenizer_3": None}
    pipe = StableDiffusion3Pipeline.from_pretrained(path, transformer=None, vae=None, torch_dtype=dtype,
                                                    local_files_only=True, **no_t5).to(device)
    pipe.set_progress_bar_config(disable=True)
    if pipe.text_encoder_3 is None:
        log.warning("%s has no T5 (text_encoder_3/): prompts are encoded by the two CLIP encoders alone, T5's "
                    "tokens zero-filled, as StableDiffusion3Pipeline does without it", path)
        # without T5, encode_prompt zero-fills T5's tokens at the transformer's width, read from its config
        width = json.loads((path / "transformer" / "config.json").read_text())["joint_attention_dim"]
        pipe.transformer = SimpleNamespace(config=SimpleNamespace(joint_attention_dim=width))
    return pipe


class SD3PromptEncoder(CachedEncoder):
    """CLIP-L + CLIP-G (+ T5) of a StableDiffusion3Pipeline folder through the pipeline's ``encode_prompt``.

    Loaded on first use; ``release()`` frees the encoders (and their GPU memory) while the caches stay. With
    ``cache_dir`` each prompt's embeddings are also stored there (one safetensors file per prompt, named by a hash
    of the prompt, the folder, the T5 length and the dtype), so they are computed once across runs."""

    name = "sd3"

    def __init__(self, path: str | Path, max_length: int = T5_LENGTH, device=None, dtype: torch.dtype | None = None,
                 cache_dir: str | Path | None = None):
        super().__init__()
        check_sd3_folder(path)
        self.path = Path(path).resolve()
        self.max_length = max_length
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        # bf16 on GPUs (T5-XXL overflows in fp16), fp32 on CPU
        self.dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self._identity = f"{self.path}\0{max_length}\0{self.dtype}"
        self._pipe = None

    @property
    def pipe(self):
        if self._pipe is None:
            log.info("loading the SD3 text encoders of %s on %s (%s)", self.path, self.device, self.dtype)
            self._pipe = load_prompt_pipeline(self.path, self.device, self.dtype)
        return self._pipe

    def release(self) -> None:
        """Free the text encoders; a later cache miss loads them again."""
        self._pipe = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    @torch.no_grad()
    def _encode(self, prompts: list[str]) -> TextEmbeddings:
        tokens, _, pooled, _ = self.pipe.encode_prompt(prompts, None, None, device=self.device,
                                                       do_classifier_free_guidance=False,
                                                       max_sequence_length=self.max_length)
        return TextEmbeddings(tokens.float().cpu(), pooled.float().cpu())

    def _file(self, prompt: str) -> Path:
        key = hashlib.sha1(f"{self._identity}\0{prompt}".encode()).hexdigest()
        return self.cache_dir / key[:2] / f"{key}.safetensors"

    def _load(self, prompt: str):
        if self.cache_dir is None or not self._file(prompt).is_file():
            return None
        from safetensors.torch import load_file

        t = load_file(self._file(prompt))
        return t["tokens"].float(), t["pooled"].float()

    def _store(self, prompt: str, tokens: torch.Tensor, pooled: torch.Tensor) -> None:
        if self.cache_dir is None:
            return
        import os

        from safetensors.torch import save_file

        path = self._file(prompt)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        # the encoders' own dtype: lossless, since the embeddings were computed in it
        save_file({"tokens": tokens.to(self.dtype).contiguous(), "pooled": pooled.to(self.dtype).contiguous()}, tmp)
        os.replace(tmp, path)
