"""Metrics for real models (no nano evaluator): CLIP score and FID, from local weights only.

- CLIP score (Hessel et al. 2021, as torchmetrics computes it): ``100 * max(cos(image, text), 0)`` with a
  transformers CLIP model folder (``CLIPModel`` + its tokenizer and image processor, e.g. a local copy of
  ``openai/clip-vit-large-patch14``), averaged over images.
- FID (Heusel et al. 2017) with the Inception network as a TorchScript file, the one clean-fid and StyleGAN3 load
  (``inception-2015-12-05.pt``): images resized to 299 x 299 with PIL's bicubic filter ("clean" resizing, Parmar
  et al. 2022) and passed as float [0, 255], ``model(x, return_features=True)`` -> 2048 pool features; the
  Frechet distance of the features to those of a reference image folder (e.g. the teacher's images of the same
  prompts, from ``ladd eval --save-images``).

Nothing is downloaded; each loader names the file or folder it needs when it is missing or wrong.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ladd.config import ConfigError

INCEPTION_SIZE = 299
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


class ClipScorer:
    """CLIP score of images against their prompts with a local transformers CLIP folder."""

    def __init__(self, folder: str | Path, device="cpu"):
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise ConfigError(f"--clip {folder}: not a CLIP model folder (no config.json); give a local copy of a "
                              f"transformers CLIP model, e.g. openai/clip-vit-large-patch14")
        try:
            self.model = CLIPModel.from_pretrained(folder, local_files_only=True).eval().to(device)
            self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            self.processor = CLIPImageProcessor.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError) as e:
            raise ConfigError(f"--clip {folder}: could not load a CLIP model, tokenizer and image processor from it "
                              f"({e})") from None
        self.device = device
        self.max_length = min(self.tokenizer.model_max_length, self.model.config.text_config.max_position_embeddings)

    @torch.no_grad()
    def scores(self, images: np.ndarray, texts: list[str], batch: int = 64) -> np.ndarray:
        """Per image ``100 * max(cos, 0)`` of uint8 ``images [N, H, W, 3]`` against ``texts`` (one per image)."""
        out = []
        for s in range(0, len(images), batch):
            pixels = self.processor(images=list(images[s:s + batch]), return_tensors="pt")["pixel_values"]
            tokens = self.tokenizer(texts[s:s + batch], padding=True, truncation=True, max_length=self.max_length,
                                    return_tensors="pt")
            img = self.model.get_image_features(pixel_values=pixels.to(self.device))
            txt = self.model.get_text_features(input_ids=tokens["input_ids"].to(self.device),
                                               attention_mask=tokens["attention_mask"].to(self.device))
            img, txt = _embedding(img), _embedding(txt)
            cos = torch.nn.functional.cosine_similarity(img.float(), txt.float(), dim=-1)
            out.append((100 * cos.clamp(min=0)).cpu().numpy())
        return np.concatenate(out)


def _embedding(x):
    """transformers 5 returns a model output from ``get_*_features``; 4.x a tensor."""
    return x if isinstance(x, torch.Tensor) else x.pooler_output


class InceptionFeatures:
    """2048-d pool features of a TorchScript Inception (clean-fid's / StyleGAN3's ``inception-2015-12-05.pt``)."""

    def __init__(self, path: str | Path, device="cpu"):
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"--fid-inception {path} does not exist; give the TorchScript Inception file "
                              f"inception-2015-12-05.pt (clean-fid, StyleGAN3)")
        try:
            with warnings.catch_warnings():  # TorchScript is deprecated, but it is the format this file ships in
                warnings.simplefilter("ignore", DeprecationWarning)
                self.model = torch.jit.load(str(path), map_location=device).eval()
        except RuntimeError as e:
            raise ConfigError(f"--fid-inception {path} is not a TorchScript file ({str(e).splitlines()[0]}); give "
                              f"inception-2015-12-05.pt (clean-fid, StyleGAN3)") from None
        self.path, self.device = path, device

    @torch.no_grad()
    def __call__(self, images: np.ndarray, batch: int = 32) -> np.ndarray:
        feats = []
        for s in range(0, len(images), batch):
            x = np.stack([_resize(img) for img in images[s:s + batch]])
            x = torch.from_numpy(x).permute(0, 3, 1, 2).float().to(self.device)  # [B, 3, 299, 299] in [0, 255]
            feats.append(self.model(x, return_features=True).reshape(len(x), -1).double().cpu().numpy())
        return np.concatenate(feats)


def _resize(img: np.ndarray) -> np.ndarray:
    if img.shape[:2] == (INCEPTION_SIZE, INCEPTION_SIZE):
        return img
    return np.asarray(Image.fromarray(img).resize((INCEPTION_SIZE, INCEPTION_SIZE), Image.BICUBIC))


def image_folder(folder: str | Path) -> list[Path]:
    """The images of ``folder`` (PNG, JPEG, WebP), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"--fid-reference {folder} is not a folder of images; make one with ladd eval --model "
                          f"TEACHER --prompts P --save-images (its OUT/images)")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ConfigError(f"--fid-reference {folder} holds no .png / .jpg / .webp images")
    return files


def reference_features(inception: InceptionFeatures, folder: str | Path, cache_dir: str | Path) -> np.ndarray:
    """Inception features of the reference folder's images, cached by the images' names, sizes and times and
    the Inception file."""
    files = image_folder(folder)
    h = hashlib.sha1(str(inception.path.resolve()).encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.name}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    path = Path(cache_dir) / f"inception-{h.hexdigest()[:16]}.npy"
    if path.is_file():
        return np.load(path)
    images = np.stack([np.asarray(Image.open(f).convert("RGB").resize((INCEPTION_SIZE, INCEPTION_SIZE),
                                                                      Image.BICUBIC)) for f in files])
    feats = inception(images)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npy")
    np.save(tmp, feats)
    os.replace(tmp, path)
    return feats


def fid(feats: np.ndarray, ref: np.ndarray) -> float | None:
    """Frechet distance of two feature sets; None when either has no more samples than dimensions (a singular
    covariance: not an estimate)."""
    from ladd.evaluation import metrics

    if min(len(feats), len(ref)) <= feats.shape[1]:
        return None
    mu, sigma = metrics.feature_stats(feats)
    mu_r, sigma_r = metrics.feature_stats(ref)
    return float(metrics.frechet_distance(mu, sigma, mu_r, sigma_r))

