"""`ladd eval`: generate K images per prompt of a prompt file (or read them, or render real ones), read them back
with the nano evaluator, and report alignment, FD, diversity, NFE and latency.

Image files (``--images DIR``, and what ``--save-images`` writes): ``DIR/{i:05d}_{k:02d}.png`` is image ``k`` of
prompt ``i``, where ``i`` counts the non-empty lines of the prompt file from 0.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ladd.config import ConfigError, option
from ladd.evaluation import metrics
from ladd.images import save_grid
from ladd.models.registry import native_size, world
from ladd.runtime import check_output

log = logging.getLogger(__name__)
REAL_SEED_OFFSET = 10_000_019  # reference images use seeds disjoint from any evaluated run's


def check_counts(cfg, names) -> None:
    """Each of ``names`` on ``cfg`` is None or an integer >= 1, else one line naming the flag."""
    for name in names:
        value = getattr(cfg, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"--{name.replace('_', '-')} must be an integer >= 1, got {value!r}")


@dataclass
class EvalConfig:
    """``ladd eval``'s options (flags ``--per-prompt`` etc., ladd.config.add_arguments)."""
    model: str = option("real | nano-teacher | nano-student | nano-student-1step | PATH to a model folder | nano-vae "
                      "or vae:PATH (real images reconstructed by a VAE)", default="nano-teacher")
    prompts: str = option("prompt file (JSON lines)", default="prompts/nano-eval.jsonl")
    per_prompt: int = option("images per prompt", default=4)
    steps: int | None = option("sampling steps (default: the model card's)")
    guidance: float | None = option("CFG scale, 1 = none (default: the model card's)")
    sampler: str | None = option("default: the model card's", choices=["euler", "renoise"])
    shift: float | None = option("time-grid shift, > 1 spends more steps at high noise (default: the model card's)")
    seed: int = option("noise seed (image k of prompt i uses a seed of (seed, i, k))", default=0)
    out: str = option("output folder", default="runs/eval")
    images: str | None = option("evaluate images from this folder instead of generating")
    save_images: bool = option("also write OUT/images/{i:05d}_{k:02d}.png", default=False)
    batch_size: int = option("images per batch", default=64)
    height: int | None = option("image height (default: the model's, 64 for the nano world)")
    width: int | None = option("image width (default: the model's)")
    evaluator: str = option("the evaluator (a name or a folder)", default="nano-evaluator")
    cache_dir: str = option("where FD reference statistics are cached", default="cache/eval")
    limit: int | None = option("use only the first N prompts")
    clip: str | None = option("a transformers CLIP model folder: adds clip_score (100 x cosine of image and prompt)")
    fid_inception: str | None = option("the TorchScript Inception file (clean-fid's inception-2015-12-05.pt): adds "
                                       "fid against --fid-reference")
    fid_reference: str | None = option("a folder of reference images for --fid-inception, e.g. the teacher's "
                                       "(ladd eval --model TEACHER --save-images: OUT/images)")
    device: str | None = option("where the model samples: cpu, cuda, cuda:N (default: the GPU when there is one)")
    dtype: str = option("the model's weights when sampling (auto: bf16 on a GPU, fp32 on the CPU)", default="auto",
                        choices=["auto", "fp32", "bf16", "fp16"])

    def __post_init__(self):
        check_counts(self, ("per_prompt", "batch_size", "steps", "limit"))


def load_evaluator(name: str = "nano-evaluator"):
    from ladd.models.io import load_state, read_config
    from ladd.models.registry import resolve

    path = resolve(name)
    return load_state(world().Evaluator(**read_config(path)), path).eval(), path


@torch.no_grad()
def read_back(evaluator, images: np.ndarray, batch: int = 256) -> tuple[list[list[dict]], np.ndarray]:
    """(objects read back per image, FD features ``[N, D]``) of uint8 images ``[N, H, W, 3]``."""
    from ladd.images import to_tensor

    objs, feats = [], []
    for i in range(0, len(images), batch):
        out = evaluator(to_tensor(images[i:i + batch]))
        objs += world().decode_readback(out)
        feats.append(out["features"].double().numpy())
    return objs, np.concatenate(feats)


def render_real(prompts: list[dict], index: list[tuple[int, int]], seed: int, height: int, width: int):
    from ladd.generate import image_seed

    render = world().render_spec
    return np.stack([render(prompts[i]["objects"], image_seed(seed, i, k), height, width)[0] for i, k in index])


def reference_stats(cfg: EvalConfig, prompts, index, evaluator, evaluator_path: Path):
    """FD reference: features of real ShapeWorld images of the same prompts (other seeds), cached on disk."""
    h = hashlib.sha1(json.dumps([prompts, index, cfg.height, cfg.width]).encode())
    h.update(Path(evaluator_path, "model.safetensors").read_bytes())
    path = Path(cfg.cache_dir) / f"ref-{h.hexdigest()[:16]}.npz"
    if path.exists():
        d = np.load(path)
        return d["mu"], d["sigma"], float(d["diversity"])
    real = render_real(prompts, index, cfg.seed + REAL_SEED_OFFSET, cfg.height, cfg.width)
    _, feats = read_back(evaluator, real)
    mu, sigma = metrics.feature_stats(feats)
    div = metrics.diversity(feats, [i for i, _ in index])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, mu=mu, sigma=sigma, diversity=div)
    os.replace(tmp, path)
    return mu, sigma, div


def load_images(folder: str, index: list[tuple[int, int]], height: int, width: int) -> np.ndarray:
    out = []
    for i, k in index:
        path = Path(folder) / f"{i:05d}_{k:02d}.png"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: --images expects DIR/{{prompt:05d}}_{{k:02d}}.png for every "
                                    f"prompt line i (from 0) and k < --per-prompt")
        img = Image.open(path).convert("RGB")
        out.append(np.asarray(img if img.size == (width, height) else img.resize((width, height), Image.BICUBIC)))
    return np.stack(out)


@torch.no_grad()
def reconstruct_real(cfg: EvalConfig, prompts, index):
    """Real images through a VAE (``--model nano-vae`` or ``vae:PATH``): encode, decode; adds PSNR to the settings."""
    from ladd.models.registry import resolve
    from ladd.models.vae import load_vae
    from ladd.images import to_tensor, to_uint8
    from ladd.images import psnr

    vae = load_vae(resolve(cfg.model.removeprefix("vae:")))
    real = render_real(prompts, index, cfg.seed, cfg.height, cfg.width)
    out, scores = [], []
    for i in range(0, len(real), cfg.batch_size):
        x = to_tensor(real[i:i + cfg.batch_size])
        rec = vae.decode(vae.encode(x))
        scores.append(psnr(rec, x))
        out.append(to_uint8(rec))
    return np.concatenate(out), float("nan"), {"steps": 0, "guidance": 0.0, "nfe_per_image": 0,
                                               "psnr": float(torch.cat(scores).mean())}


def produce(cfg: EvalConfig, prompts, index, generator=None):
    """(images, seconds spent generating, settings) for the model, image folder or real renderer."""
    from ladd.generate import generate, image_seed
    from ladd.models.registry import load_generator

    if cfg.images:
        return load_images(cfg.images, index, cfg.height, cfg.width), float("nan"), {"steps": 0, "guidance": 0.0,
                                                                                     "nfe_per_image": 0}
    if cfg.model == "real":
        return render_real(prompts, index, cfg.seed, cfg.height, cfg.width), float("nan"), {
            "steps": 0, "guidance": 0.0, "nfe_per_image": 0}
    if is_vae(cfg.model):
        return reconstruct_real(cfg, prompts, index)
    gen = generator or load_generator(cfg.model, cfg.device, cfg.dtype)
    setting = sampling_setting(cfg, gen.recommended)
    texts = [prompts[i]["prompt"] for i, _ in index]
    seeds = [image_seed(cfg.seed, i, k) for i, k in index]
    with tqdm(total=len(index), desc=f"sampling {cfg.model}", dynamic_ncols=True, mininterval=2) as bar:
        images, seconds = generate(gen, texts, seeds, setting["steps"], setting["guidance"], setting["sampler"],
                                   cfg.height, cfg.width, cfg.batch_size, progress=bar, shift=setting["shift"])
    nfe = setting["steps"] * (2 if setting["guidance"] != 1.0 else 1)
    return images, seconds, {**setting, "nfe_per_image": nfe, "device": str(gen.device),
                             "dtype": str(gen.dtype or torch.float32).removeprefix("torch.")}


def sampling_setting(cfg: EvalConfig, recommended: dict) -> dict:
    """The steps, guidance, sampler and shift a model samples with under ``cfg``: each option given, else the
    model's card's (``recommended``; its shift at that step count, ladd.models.registry.recommended_shift)."""
    from ladd.models.registry import recommended_shift

    steps = cfg.steps or recommended["steps"]
    return {"steps": steps, "guidance": recommended["guidance"] if cfg.guidance is None else cfg.guidance,
            "sampler": cfg.sampler or recommended["sampler"],
            "shift": recommended_shift(recommended, steps) if cfg.shift is None else cfg.shift}


def is_vae(model: str) -> bool:
    return model.endswith("vae") or model.startswith("vae:")


def generates(cfg: EvalConfig) -> bool:
    """Whether ``cfg`` evaluates a generative model (not real images, a VAE's reconstructions or a folder)."""
    return not (cfg.images or cfg.model == "real" or is_vae(cfg.model))


def with_size(cfg: EvalConfig, generator=None) -> EvalConfig:
    """``cfg`` with ``--height`` / ``--width`` filled in where not given: the model's own size (a loaded
    ``generator``'s, or the model folder's from its JSON files: ladd.models.registry.native_size), and 64 (the nano
    world's scenes) for real images, VAE reconstructions and image folders."""
    if cfg.height and cfg.width:
        return cfg
    if generator is not None:
        side = generator.model.config.sample_size * generator.vae.downsample
        size = (side, side)
    else:
        size = native_size(cfg.model) if generates(cfg) else (64, 64)
    return replace(cfg, height=cfg.height or size[0], width=cfg.width or size[1])


def is_plain(prompts: str) -> bool:
    """A file of plain prompts (``.txt``, one per line, or ``.jsonl`` lines without the nano world's ``objects``: a
    real model's), which the nano evaluator cannot score: such an evaluation reports only what needs no world
    (``--clip``, ``--fid-inception``, timing)."""
    path = Path(prompts)
    if path.suffix != ".jsonl":
        return True
    try:
        first = next(line for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
        return "objects" not in json.loads(first)
    except (OSError, UnicodeDecodeError, StopIteration, json.JSONDecodeError, TypeError):
        return False  # the nano reader says what is wrong with the file


def real_scorers(cfg: EvalConfig, device="cpu") -> dict:
    """The CLIP scorer and the Inception network that ``cfg`` asks for, loaded (and checked) before generating."""
    from ladd.evaluation import real_metrics

    if cfg.fid_inception and not cfg.fid_reference:
        raise ConfigError("--fid-inception needs --fid-reference, a folder of reference images (e.g. the teacher's: "
                          "ladd eval --model TEACHER --prompts P --save-images, then OUT/images)")
    if cfg.fid_reference and not cfg.fid_inception:
        raise ConfigError("--fid-reference needs --fid-inception, the TorchScript Inception file")
    scorers = {**({"clip": real_metrics.ClipScorer(cfg.clip, device)} if cfg.clip else {}),
               **({"inception": real_metrics.InceptionFeatures(cfg.fid_inception, device)}
                  if cfg.fid_inception else {})}
    if cfg.fid_reference:
        real_metrics.image_folder(cfg.fid_reference)
    return scorers


def real_scores(cfg: EvalConfig, scorers: dict, images: np.ndarray, texts: list[str]) -> dict:
    from ladd.evaluation import real_metrics

    out = {}
    if "clip" in scorers:
        out["clip_score"] = float(scorers["clip"].scores(images, texts).mean())
    if "inception" in scorers:
        ref = real_metrics.reference_features(scorers["inception"], cfg.fid_reference, cfg.cache_dir)
        out["fid"] = real_metrics.fid(scorers["inception"](images), ref)
        out["fid_reference"] = cfg.fid_reference
        if out["fid"] is None:
            out["fid_note"] = "not computed: no more images than Inception features (2048); use more"
    return out


def _preflight(cfg: EvalConfig, generator) -> dict:
    """Every check that needs no model, before anything loads: the output folder, --device / --dtype, and the
    real-model scorers (loaded here, so a bad file fails before generating). Returns the scorers."""
    check_output(cfg.out, "--out")
    if generator is None:
        from ladd.runtime import pick_device, pick_dtype

        pick_dtype(cfg.dtype, pick_device(cfg.device))
    return real_scorers(cfg)


def evaluate(cfg: EvalConfig, generator=None) -> dict:
    """Evaluate ``cfg.model`` (or the already loaded ``generator``, a ladd.models.registry.Generator: e.g. a
    student during training) on ``cfg.prompts``; writes ``cfg.out`` and returns the metrics. A plain prompt file
    (``is_plain``) is scored by ``--clip`` / ``--fid-inception`` only (``evaluate_plain``)."""
    cfg = with_size(cfg, generator)
    if is_plain(cfg.prompts):
        return evaluate_plain(cfg, generator)
    prompts = world().read_prompts(cfg.prompts)[: cfg.limit]
    if cfg.per_prompt < 1:
        raise ConfigError(f"--per-prompt must be >= 1, got {cfg.per_prompt}")
    if cfg.shift is not None and cfg.shift <= 0:
        raise ConfigError(f"--shift must be > 0 (1 = no shift, > 1 = more steps at high noise), got {cfg.shift}")
    world().check_size(cfg.height, cfg.width)
    scorers = _preflight(cfg, generator)
    evaluator, evaluator_path = load_evaluator(cfg.evaluator)
    index = [(i, k) for i in range(len(prompts)) for k in range(cfg.per_prompt)]
    images, seconds, settings = produce(cfg, prompts, index, generator)
    readbacks, feats = read_back(evaluator, images)
    mu_ref, sigma_ref, div_ref = reference_stats(cfg, prompts, index, evaluator, evaluator_path)
    mu, sigma = metrics.feature_stats(feats)
    pidx = [i for i, _ in index]
    div = metrics.diversity(feats, pidx)
    result = {
        "model": "real" if cfg.model == "real" and not cfg.images else (cfg.images or cfg.model),
        **metrics.alignment(prompts, readbacks, pidx),
        # FD from no more images than feature dimensions has a singular covariance: not an estimate (and sqrtm of
        # it can take minutes); reported as null with the reason instead
        "fd": metrics.frechet_distance(mu, sigma, mu_ref, sigma_ref) if len(index) > feats.shape[1] else None,
        "diversity": _finite_or_none(div),  # None (JSON null) with one image per prompt: nothing to vary
        "diversity_real": _finite_or_none(div_ref),
        "n_images": len(index),
        **({} if len(index) > feats.shape[1] else {"fd_note": f"not computed: {len(index)} images for "
                                                              f"{feats.shape[1]} feature dimensions; use more"}),
        "n_prompts": len(prompts),
        "seconds_per_image": _finite_or_none(seconds / len(index)),  # None for real or given images
        **settings,
        **real_scores(cfg, scorers, images, [prompts[i]["prompt"] for i, _ in index]),
        "prompts": cfg.prompts,
        "seed": cfg.seed,
    }
    write_outputs(cfg, result, images, index, prompts, readbacks)
    return result


def evaluate_plain(cfg: EvalConfig, generator=None) -> dict:
    """A real model on plain prompts: images, CLIP score and FID when asked for, timing; no nano evaluator."""
    from ladd.data.prompts import read_prompt_texts

    texts = read_prompt_texts(cfg.prompts, "--prompts")[: cfg.limit]
    if not generates(cfg):
        raise ConfigError(f"--prompts {cfg.prompts}: plain prompts (not a .jsonl file of the nano world) are for "
                          f"evaluating a model; --images / real / VAE evaluations need a nano prompt file")
    scorers = _preflight(cfg, generator)
    prompts = [{"prompt": t} for t in texts]
    index = [(i, k) for i in range(len(prompts)) for k in range(cfg.per_prompt)]
    images, seconds, settings = produce(cfg, prompts, index, generator)
    result = {"model": cfg.model, "n_images": len(index), "n_prompts": len(prompts),
              "seconds_per_image": _finite_or_none(seconds / len(index)), **settings,
              **real_scores(cfg, scorers, images, [prompts[i]["prompt"] for i, _ in index]),
              "prompts": cfg.prompts, "seed": cfg.seed}
    write_outputs(cfg, result, images, index, prompts, None)
    return result


def write_outputs(cfg: EvalConfig, result: dict, images, index, prompts, readbacks) -> None:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "metrics.json.tmp"
    tmp.write_text(json.dumps({**result, "config": asdict(cfg)}, indent=2) + "\n")
    os.replace(tmp, out / "metrics.json")
    if readbacks is not None:  # the nano evaluator's reading of each image (not for plain prompts)
        with open(out / "readback.jsonl.tmp", "w") as f:
            for (i, k), r in zip(index, readbacks):
                why = metrics.failure(prompts[i]["objects"], r)
                f.write(json.dumps({"prompt_index": i, "k": k, "prompt": prompts[i]["prompt"], "ok": why is None,
                                    "failure": why, "read": r}) + "\n")
        os.replace(out / "readback.jsonl.tmp", out / "readback.jsonl")
    # grid: one row per prompt for a spread of prompts over the file, per_prompt images each (at most 8)
    rows = np.linspace(0, len(prompts) - 1, min(16, len(prompts))).round().astype(int)
    k = min(cfg.per_prompt, 8)
    pick = [n for n, (i, kk) in enumerate(index) if i in set(rows.tolist()) and kk < k]
    save_grid(images[pick], out / "grid.png", ncols=k)
    if cfg.save_images:
        img_dir = out / "images"
        img_dir.mkdir(exist_ok=True)
        for (i, kk), img in zip(index, images):
            Image.fromarray(img).save(img_dir / f"{i:05d}_{kk:02d}.png")


def _finite_or_none(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None or not np.isfinite(x) else format(x, spec)


def format_table(rows: list[dict]) -> str:
    """A Markdown table of evaluation results (one row per result)."""
    if any("alignment" not in r for r in rows):  # plain prompts: what was asked for
        head = ["model", "steps", "cfg", "NFE", "CLIP score", "FID", "s/img"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in rows:
            lines.append("| " + " | ".join([str(r.get("label", r["model"])), str(r["steps"]), f"{r['guidance']:g}",
                                            str(r["nfe_per_image"]), _fmt(r.get("clip_score"), ".2f"),
                                            _fmt(r.get("fid"), ".2f"), _fmt(r["seconds_per_image"], ".4f")]) + " |")
        return "\n".join(lines)
    cats = sorted({c for r in rows for c in r["alignment_by_category"]})
    head = ["model", "steps", "cfg", "NFE", "align"] + cats + ["FD", "div", "s/img"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        vals = [str(r.get("label", r["model"])), str(r["steps"]), f"{r['guidance']:g}", str(r["nfe_per_image"]),
                f"{r['alignment']:.3f}"] + [f"{r['alignment_by_category'].get(c, float('nan')):.2f}" for c in cats]
        vals += [_fmt(r["fd"], ".2f"), _fmt(r['diversity'], ".2f"), _fmt(r['seconds_per_image'], ".4f")]
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines)
