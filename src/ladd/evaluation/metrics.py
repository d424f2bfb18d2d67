"""Pure metric functions: GenEval-style prompt alignment, Frechet distance, diversity."""

from __future__ import annotations

import itertools

import numpy as np
from scipy import linalg


def satisfies(spec: list[dict], readback: list[dict]) -> bool:
    """GenEval's rule: the image shows exactly ``len(spec)`` objects and some one-to-one assignment of specified
    objects to detected ones agrees on every attribute the spec states (missing fields mean "any")."""
    if len(spec) != len(readback):
        return False
    return any(all(all(d.get(k) == v for k, v in s.items()) for s, d in zip(spec, perm))
               for perm in itertools.permutations(readback))


def alignment(prompts: list[dict], readbacks: list[list[dict]], prompt_index: list[int]) -> dict:
    """Overall and per-category fraction of images satisfying their prompt's spec."""
    ok = np.array([satisfies(prompts[i]["objects"], r) for i, r in zip(prompt_index, readbacks)], dtype=float)
    cats = np.array([prompts[i]["category"] for i in prompt_index])
    return {"alignment": float(ok.mean()),
            "alignment_by_category": {c: float(ok[cats == c].mean()) for c in sorted(set(cats))}}


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(features, dtype=np.float64)
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """``|mu1 - mu2|^2 + tr(S1 + S2 - 2 sqrt(S1 S2))`` as in FID (Heusel et al. 2017; pytorch-fid's numerics)."""
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    covmean = np.real(covmean)
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def diversity(features: np.ndarray, prompt_index: list[int]) -> float:
    """Mean pairwise feature distance between images of the same prompt, averaged over prompts with >= 2 images:
    how much the attributes a prompt leaves open (and textures) vary across seeds."""
    f = np.asarray(features, dtype=np.float64)
    idx = np.asarray(prompt_index)
    per_prompt = []
    for i in np.unique(idx):
        g = f[idx == i]
        if len(g) >= 2:
            d = np.sqrt(((g[:, None] - g[None]) ** 2).sum(-1))
            per_prompt.append(d[np.triu_indices(len(g), 1)].mean())
    return float(np.mean(per_prompt)) if per_prompt else float("nan")
