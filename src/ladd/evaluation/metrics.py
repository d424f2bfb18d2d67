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


FAILURES = ("too_few", "too_many", "attributes")


def failure(spec: list[dict], readback: list[dict]) -> str | None:
    """Why an image fails its spec: None (it satisfies it), 'too_few' or 'too_many' objects, or 'attributes' (the
    count is right but no assignment agrees on every stated attribute: a wrong color, a swapped shape)."""
    if len(readback) != len(spec):
        return "too_few" if len(readback) < len(spec) else "too_many"
    return None if satisfies(spec, readback) else "attributes"


def alignment(prompts: list[dict], readbacks: list[list[dict]], prompt_index: list[int]) -> dict:
    """Overall and per-category fraction of images satisfying their prompt's spec, and per category the fraction
    of images failing for each reason in ``FAILURES`` (they sum to 1 - alignment)."""
    why = np.array([failure(prompts[i]["objects"], r) or "" for i, r in zip(prompt_index, readbacks)])
    cats = np.array([prompts[i]["category"] for i in prompt_index])
    return {"alignment": float((why == "").mean()),
            "alignment_by_category": {c: float((why[cats == c] == "").mean()) for c in sorted(set(cats))},
            "failures_by_category": {c: {f: float((why[cats == c] == f).mean()) for f in FAILURES}
                                     for c in sorted(set(cats))}}


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
