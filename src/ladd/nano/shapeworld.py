"""ShapeWorld: a procedural text-to-image world whose ground truth is known exactly.

A *scene* is a JSON-able dict::

    {"objects": [{"shape", "color", "position", "size", "pattern", "jitter": [dx, dy]}, ...],
     "background": {"kind", "base": [r, g, b], ...}}

Everything is deterministic from ``(seed, index)``. Images are ``uint8 [H, W, 3]`` for any H, W that are
multiples of 16; objects sit on a 3x3 grid of cells, at most one per cell, with a little jitter.
Objects carry fine detail (a dark outline and an inner pattern) and backgrounds carry texture, so a blurry
sample is measurably worse than a sharp one.
"""

from __future__ import annotations

import numpy as np

from ladd.config import ConfigError
from ladd.nano.vocab import BACKGROUNDS, CELLS, COLORS, MAX_OBJECTS, PATTERNS, RGB, SHAPES, SIZES

SUPERSAMPLE = 4  # anti-aliasing: draw at 4x, box-filter down
LARGE_RADIUS, SMALL_RADIUS = 0.38, 0.27  # fraction of the smaller cell side (small: ~11 px across at 64x64,
# more than one 8x8 latent cell: at 0.2 the nano VAE could not keep a small cross from a small circle)
JITTER = 0.08  # fraction of the cell side
REPEAT = 0.3  # chance that a scene of 2-3 objects repeats one shape (and half of those one colour too): counting
# scenes. With independent objects only 1 in 16 three-object scenes had three of a kind.
WORLD_VERSION = 2  # bump when the random scene distribution changes, so that cached pools are not reused


def check_size(height: int, width: int) -> None:
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, int) or value < 32 or value % 16:
            raise ConfigError(f"image {name}={value!r} is invalid: use a multiple of 16 that is at least 32 (e.g. 64)")


def scene_rng(seed: int, index: int) -> np.random.Generator:
    """The random stream of sample ``index`` of dataset ``seed``, independent of any other sample."""
    return np.random.default_rng([int(seed), int(index), 0x5A4E])


def complete_objects(objects: list[dict], rng: np.random.Generator) -> list[dict]:
    """Fill every unspecified field of ``objects`` at random; positions stay one object per cell."""
    if len(objects) > MAX_OBJECTS:
        raise ValueError(f"{len(objects)} objects: a scene holds at most {MAX_OBJECTS}")
    taken = [o["position"] for o in objects if o.get("position")]
    if len(set(taken)) != len(taken):
        raise ValueError(f"two objects in one cell: {taken}")
    free = [c for c in CELLS if c not in taken]
    rng.shuffle(free)
    done = []
    for obj in objects:
        done.append({
            "shape": obj.get("shape") or SHAPES[rng.integers(len(SHAPES))],
            "color": obj.get("color") or COLORS[rng.integers(len(COLORS))],
            "position": obj.get("position") or free.pop(),
            "size": obj.get("size") or SIZES[rng.integers(len(SIZES))],
            "pattern": obj.get("pattern") or PATTERNS[rng.integers(len(PATTERNS))],
            "jitter": obj.get("jitter") or [float(v) for v in rng.uniform(-JITTER, JITTER, 2)],
        })
    return done


def sample_background(rng: np.random.Generator) -> dict:
    grey = rng.uniform(0.3, 0.75)
    return {
        "kind": BACKGROUNDS[rng.integers(len(BACKGROUNDS))],
        "base": [float(grey + t) for t in rng.uniform(-0.05, 0.05, 3)],
        "other": float(np.clip(grey + rng.choice([-1, 1]) * rng.uniform(0.1, 0.2), 0.15, 0.9)),
        "amplitude": float(rng.uniform(0.06, 0.12)),
        "period": float(rng.uniform(4.0, 8.0)),
        "angle": float(rng.choice([0.0, 45.0, 90.0, 135.0])),
        "phase": float(rng.uniform(0, 2 * np.pi)),
        "noise_seed": int(rng.integers(2**31)),
    }


def _random_objects(rng: np.random.Generator) -> list[dict]:
    """Partial specs of a random scene: 1-3 objects, independent unless the scene repeats a shape (``REPEAT``)."""
    n = int(rng.integers(1, MAX_OBJECTS + 1))
    if n == 1 or rng.random() >= REPEAT:
        return [{} for _ in range(n)]
    same = {"shape": SHAPES[rng.integers(len(SHAPES))]}
    if rng.random() < 0.5:
        same["color"] = COLORS[rng.integers(len(COLORS))]
    return [dict(same) for _ in range(n)]


def sample_scene(rng: np.random.Generator, objects: list[dict] | None = None) -> dict:
    """A random scene; ``objects`` (partial specs, e.g. from a prompt file) fixes what they specify."""
    if objects is None:
        objects = _random_objects(rng)
    return {"objects": complete_objects(objects, rng), "background": sample_background(rng)}


# ----------------------------------------------------------------------------------------------------------- drawing
def _grid(height: int, width: int, scale: int):
    ys = (np.arange(height * scale) + 0.5) / scale
    xs = (np.arange(width * scale) + 0.5) / scale
    return np.meshgrid(ys, xs, indexing="ij")


def _background(bg: dict, height: int, width: int) -> np.ndarray:
    y, x = _grid(height, width, SUPERSAMPLE)
    base = np.asarray(bg["base"])[None, None, :]
    amp, kind = bg["amplitude"], bg["kind"]
    if kind == "stripes":
        a = np.deg2rad(bg["angle"])
        wave = np.sign(np.sin(2 * np.pi * (x * np.cos(a) + y * np.sin(a)) / bg["period"] + bg["phase"]))
        value = amp * wave
    elif kind == "checks":
        p = bg["period"]
        value = amp * np.where((np.floor(x / p) + np.floor(y / p)) % 2 == 0, 1.0, -1.0)
    elif kind == "noise":  # soft value noise, two octaves (coarse blobs + finer mottling)
        nrng = np.random.default_rng(bg["noise_seed"])
        value = amp * (_value_noise(nrng, 5, y / height, x / width) + 0.6 * _value_noise(nrng, 12, y / height, x / width))
    elif kind == "gradient":
        a = np.deg2rad(bg["angle"])
        proj = (x / width - 0.5) * np.cos(a) + (y / height - 0.5) * np.sin(a)
        value = (bg["other"] - float(np.mean(bg["base"]))) * (proj + 0.5)
    else:
        raise ValueError(f"unknown background kind {kind!r}; expected one of {BACKGROUNDS}")
    return base + value[..., None]


def _value_noise(rng: np.random.Generator, cells: int, v: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Bilinearly interpolated random values on a (cells + 1)^2 lattice over the unit square."""
    lattice = rng.normal(size=(cells + 1, cells + 1))
    iy, ix = np.clip(v * cells, 0, cells - 1e-6), np.clip(u * cells, 0, cells - 1e-6)
    y0, x0 = iy.astype(int), ix.astype(int)
    fy, fx = iy - y0, ix - x0
    return ((1 - fy) * (1 - fx) * lattice[y0, x0] + fy * (1 - fx) * lattice[y0 + 1, x0]
            + (1 - fy) * fx * lattice[y0, x0 + 1] + fy * fx * lattice[y0 + 1, x0 + 1])


def _shape_mask(shape: str, dy: np.ndarray, dx: np.ndarray, r: float) -> np.ndarray:
    if shape == "circle":
        return dx**2 + dy**2 <= r**2
    if shape == "square":
        return (np.abs(dx) <= 0.85 * r) & (np.abs(dy) <= 0.85 * r)
    if shape == "triangle":  # pointing up, apex at -r, base at +0.8 r
        return (dy <= 0.8 * r) & (np.abs(dx) <= (dy + r) * 0.62)
    if shape == "cross":
        arm = 0.36 * r
        return ((np.abs(dx) <= arm) & (np.abs(dy) <= r)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= r))
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def _pattern(pattern: str, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    if pattern == "solid":
        return np.zeros_like(y, dtype=bool)
    if pattern == "dots":
        return ((y % 3.0) < 1.0) & ((x % 3.0) < 1.0)
    if pattern == "stripes":
        return ((x + y) % 3.0) < 1.0
    raise ValueError(f"unknown pattern {pattern!r}; expected one of {PATTERNS}")


def cell_box(position: str, height: int, width: int) -> tuple[float, float, float, float]:
    """(center_y, center_x, cell_h, cell_w) of a named cell in pixels."""
    idx = CELLS.index(position)
    row, col = divmod(idx, 3)
    ch, cw = height / 3, width / 3
    return (row + 0.5) * ch, (col + 0.5) * cw, ch, cw


def _draw_object(canvas: np.ndarray, obj: dict, height: int, width: int) -> None:
    cy, cx, ch, cw = cell_box(obj["position"], height, width)
    cy += obj["jitter"][0] * ch
    cx += obj["jitter"][1] * cw
    r = (LARGE_RADIUS if obj["size"] == "large" else SMALL_RADIUS) * min(ch, cw)
    s = SUPERSAMPLE
    y0, y1 = max(int((cy - r - 2) * s), 0), min(int((cy + r + 2) * s), height * s)
    x0, x1 = max(int((cx - r - 2) * s), 0), min(int((cx + r + 2) * s), width * s)
    y, x = np.meshgrid((np.arange(y0, y1) + 0.5) / s, (np.arange(x0, x1) + 0.5) / s, indexing="ij")
    outer = _shape_mask(obj["shape"], y - cy, x - cx, r)
    inner = _shape_mask(obj["shape"], y - cy, x - cx, r - 1.0)
    fill = np.asarray(RGB[obj["color"]])
    light = 0.6 * fill + 0.4
    patch = canvas[y0:y1, x0:x1]
    patch[outer] = 0.35 * fill
    patch[inner] = fill
    patch[inner & _pattern(obj["pattern"], y, x)] = light


def render(scene: dict, height: int = 64, width: int = 64) -> np.ndarray:
    """Draw ``scene`` as ``uint8 [height, width, 3]``."""
    check_size(height, width)
    canvas = _background(scene["background"], height, width)
    for obj in scene["objects"]:
        _draw_object(canvas, obj, height, width)
    s = SUPERSAMPLE
    img = canvas.reshape(height, s, width, s, 3).mean(axis=(1, 3))
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def render_spec(objects: list[dict], seed: int, height: int = 64, width: int = 64) -> tuple[np.ndarray, dict]:
    """An image satisfying a (partial) prompt-file spec; unspecified attributes drawn from ``seed``."""
    scene = sample_scene(np.random.default_rng([int(seed), 0x5EC]), [dict(o) for o in objects])
    return render(scene, height, width), scene


def sample(seed: int, index: int, height: int = 64, width: int = 64) -> tuple[np.ndarray, dict]:
    """Sample ``index`` of ShapeWorld ``seed``: ``(image uint8 [H, W, 3], scene)``."""
    check_size(height, width)
    scene = sample_scene(scene_rng(seed, index))
    return render(scene, height, width), scene
