"""Model names -> folders, and a loaded text-to-image generator (denoiser + VAE + text encoder + its card).

Names: ``nano-teacher``, ``nano-student``, ``nano-student-1step`` (shipped under ``assets/nano``), or a path to a
model folder. A model folder's ``config.json`` (or, for an export, its ``ladd.json``) may carry ``ladd_recommended`` (steps, guidance, sampler, shift),
``ladd_text_encoder`` and ``ladd_vae`` (a path, relative to the folder or absolute; default: the nano VAE). A
diffusers ``StableDiffusion3Pipeline`` folder brings its own (ladd.models.sd3): its VAE, its text encoders, the
pipeline's default setting with its scheduler's shift.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from ladd.models.io import LADD_META, AssetError, read_config, read_json

DEFAULT_RECOMMENDED = {"steps": 50, "guidance": 4.0, "sampler": "euler", "shift": 1.0}
DEFAULT_TEXT_ENCODER = {"name": "minilm", "max_length": 40}
NAMED = {"nano-teacher": "nano/teacher", "nano-student": "nano/student", "nano-student-1step": "nano/student-1step",
         "nano-vae": "nano/vae", "nano-evaluator": "nano/evaluator"}


# Worlds: a procedural data world with its captions, renderer, prompt files and evaluator. The core reaches the
# nano world only through this entry (docs/architecture.md, "Layers").
WORLDS = {"nano": "ladd.nano.world"}


def world(name: str = "nano"):
    """The named world's interface module (for "nano": ladd.nano.world), imported on first use."""
    if name not in WORLDS:
        raise AssetError(f"unknown world {name!r}; known: {sorted(WORLDS)}")
    return importlib.import_module(WORLDS[name])


def assets_dir() -> Path:
    """``$LADD_ASSETS`` or the ``assets/`` folder of this checkout."""
    return Path(os.environ.get("LADD_ASSETS", Path(__file__).resolve().parents[3] / "assets"))


def resolve(name_or_path: str) -> Path:
    if name_or_path in NAMED:
        path = assets_dir() / NAMED[name_or_path]
        if not path.is_dir():
            raise AssetError(f"model {name_or_path!r} is not at {path}; it ships with the repository (git checkout "
                             f"assets/) or set LADD_ASSETS to the folder holding nano/")
        return path
    path = Path(name_or_path)
    if not path.is_dir():
        raise AssetError(f"model {name_or_path!r} is neither a known name ({sorted(NAMED)}) nor a folder")
    return path


def model_settings(path: str | Path) -> tuple[dict, dict, Path]:
    """(recommended sampling setting, text encoder spec, VAE folder) of a model folder, from its JSON files only."""
    from ladd.models import sd3

    path = Path(path)
    if sd3.is_pipeline_folder(path) and (path / LADD_META).is_file():  # a student exported as a pipeline
        config = read_json(path / LADD_META)
    elif sd3.is_pipeline_folder(path):
        sd3.check_sd3_folder(path)
        return sd3.recommended_settings(path), sd3.text_encoder_spec(path), path / "vae"
    else:
        config = read_config(path)
    vae = Path(config.get("ladd_vae", str(assets_dir() / "nano/vae")))
    return ({**DEFAULT_RECOMMENDED, **config.get("ladd_recommended", {})},
            dict(config.get("ladd_text_encoder", DEFAULT_TEXT_ENCODER)), vae if vae.is_absolute() else path / vae)


def recommended_shift(recommended: dict, steps: int) -> float:
    """The time-grid shift a model's card recommends at ``steps`` steps: its per-step-count choice
    (``shifts``, e.g. ``{"2": 3}``: a 4-step student's 2-step grid chosen on validation prompts) or else ``shift``."""
    return float(recommended.get("shifts", {}).get(str(steps), recommended.get("shift", 1.0)))


def vae_folder(path: str | Path) -> Path:
    """The VAE folder a model folder names (``model_settings``), checked: one error naming ``ladd_vae`` when it
    is gone, e.g. an export whose training checkout has moved or been deleted (its ``ladd_vae`` is relative)."""
    return _checked_vae(path, model_settings(path)[2])


def _checked_vae(path: str | Path, vae: Path) -> Path:
    if not (vae / "config.json").is_file():
        raise AssetError(f"{path} names its VAE folder {vae} (ladd_vae), which holds no config.json; point "
                         f"ladd_vae in {path}'s ladd.json or config.json at the VAE folder (relative to {path} or "
                         f"absolute)")
    return vae


def native_size(name_or_path: str) -> tuple[int, int]:
    """(height, width) in pixels that the model was trained at: its transformer's ``sample_size`` (in latent pixels)
    times its VAE's downsampling, read from the JSON files alone (64 for the nano models, 1024 for SD3)."""
    from ladd.models import sd3

    path = resolve(name_or_path)
    vae_path = vae_folder(path)
    transformer = read_json(path / "transformer" / "config.json") if sd3.is_pipeline_folder(path) else read_config(path)
    vae = read_json(Path(vae_path) / "config.json")
    if "sample_size" not in transformer or "block_out_channels" not in vae:
        raise AssetError(f"cannot tell {name_or_path}'s image size from its configs (no sample_size in the "
                         f"transformer's or no block_out_channels in {vae_path}); pass --height and --width")
    size = int(transformer["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
    return size, size


@dataclass
class Generator:
    name: str
    path: Path
    model: object  # SD3Adapter: velocity(x, t, cond)
    vae: object  # VAE
    text_encoder: object  # encode(prompts) -> TextEmbeddings
    recommended: dict = field(default_factory=dict)
    device: object = "cpu"  # where model and VAE are (torch.device)
    dtype: object = None  # their weights' dtype (torch.dtype; None: float32)


def load_generator(name_or_path: str, device=None, dtype=None) -> Generator:
    """The model ``name_or_path`` with its VAE and text encoder, ready to sample: denoiser and VAE on ``device``
    (default: the GPU when there is one) in ``dtype`` (default: bf16 on a GPU, fp32 on the CPU; see
    ladd.runtime.pick_device / pick_dtype)."""
    from ladd.models.teacher import load_teacher
    from ladd.models.text_encoder import load_text_encoder
    from ladd.models.vae import load_vae
    from ladd.runtime import pick_device, pick_dtype

    device = pick_device(device) if device is None or isinstance(device, str) else device
    dtype = dtype if dtype is not None and not isinstance(dtype, str) else pick_dtype(dtype, device)
    path = resolve(name_or_path)
    recommended, text, vae_path = model_settings(path)
    vae_path = _checked_vae(path, vae_path)  # before the weights load: a moved VAE fails at once
    model = load_teacher(path, device=device).eval().requires_grad_(False).to(device, dtype)
    vae = load_vae(vae_path).eval().requires_grad_(False).to(device, dtype)
    return Generator(name=name_or_path, path=path, model=model, vae=vae,
                     text_encoder=load_text_encoder(**text, device=device), recommended=recommended,
                     device=device, dtype=dtype)
