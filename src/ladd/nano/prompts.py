"""Captions for ShapeWorld scenes, and prompt files: the evaluation contract.

A prompt file is JSON lines ``{"prompt": str, "category": str, "objects": [{"shape", "color", "position",
"size"} with any field optional]}``. The ``objects`` list is the truth an image is judged against: the evaluator
never parses the prompt text, so prompts phrased in any way evaluate exactly.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ladd.config import ConfigError
from ladd.data.prompts import json_prompt_lines
from ladd.nano.vocab import (CELL_WORDS, CELLS, COLORS, FIELDS, GENERIC_SHAPE_WORDS, MAX_OBJECTS, NUMBER_WORDS,
                             SHAPE_WORDS, SHAPES, SIZE_WORDS)

CATEGORIES = ("single_object", "two_objects", "counting", "colors", "position", "color_attr")
BACKGROUND_WORDS = {"stripes": "striped", "checks": "checkered", "noise": "noisy", "gradient": "gradient"}
FRAMES = ("{}", "{}", "a picture of {}", "an image of {}", "a photo of {}", "there is {}", "a drawing with {}", "{}.",
          "render {}")


class PromptFileError(ConfigError):
    """A prompt file line is malformed; the message names the file, the line and the fix."""


@dataclass(frozen=True)
class Phrasing:
    """The words prompts are built from. ``TRAINING`` is what the teacher's captions use; ``UNSEEN`` shares no
    frame, position phrase, join or size word with it (and half its shape words are new synonyms), to test how
    a model handles phrasings it was never trained on."""
    frames: tuple
    shape_words: dict
    size_words: dict
    cell_words: dict
    number_words: dict
    joins: tuple  # between two objects
    last_joins: tuple | None = None  # before the last of three objects (None: ``joins``)
    color_forms: tuple = ("{color} {noun}",)  # how a color attaches to its noun


TRAINING = Phrasing(FRAMES, SHAPE_WORDS, SIZE_WORDS, CELL_WORDS, NUMBER_WORDS, (", ", " and ", ", and ", " with "),
                    last_joins=(" and ", ", and ", ", "))
UNSEEN = Phrasing(
    frames=("we see {}", "an illustration showing {}", "a scene that contains {}", "{}, nothing else",
            "sketch: {}", "somewhere in the frame: {}"),
    shape_words={"circle": (("circle", "circles"), ("ball", "balls")),
                 "square": (("square", "squares"), ("tile", "tiles")),
                 "triangle": (("triangle", "triangles"), ("wedge", "wedges")),
                 "cross": (("cross", "crosses"), ("plus symbol", "plus symbols"))},
    size_words={"small": ("smallish", "mini"), "large": ("oversized", "giant")},
    cell_words={"top left": ("placed in the upper-left area",), "top": ("near the top edge",),
                "top right": ("placed in the upper-right area",), "left": ("near the left edge",),
                "center": ("right in the middle",), "right": ("near the right edge",),
                "bottom left": ("placed in the lower-left area",), "bottom": ("near the bottom edge",),
                "bottom right": ("placed in the lower-right area",)},
    number_words={1: ("a single",), 2: ("a pair of",), 3: ("a trio of",)},
    joins=(" next to ", " as well as "),
)
# A third phrasing for selection (prompts/nano-val-shifted.jsonl): shares no frame, position phrase, join, size or
# number word with the training captions (captions 2-4) nor with UNSEEN, and half its shape words are new synonyms,
# so that a setting can be chosen for unseen phrasings without looking at prompts/nano-unseen.jsonl.
SHIFTED = Phrasing(
    frames=("a view of {}", "visible here: {}", "the panel shows {}", "an artwork featuring {}", "look: {}",
            "{}, as a doodle"),
    shape_words={"circle": (("circle", "circles"), ("roundel", "roundels")),
                 "square": (("square", "squares"), ("squarish patch", "squarish patches")),
                 "triangle": (("triangle", "triangles"), ("three-cornered figure", "three-cornered figures")),
                 "cross": (("cross", "crosses"), ("plus mark", "plus marks"))},
    size_words={"small": ("petite", "teeny"), "large": ("jumbo", "hefty")},
    cell_words={"top left": ("up and to the left",), "top": ("along the top border",),
                "top right": ("up and to the right",), "left": ("along the left border",),
                "center": ("dead center",), "right": ("along the right border",),
                "bottom left": ("down and to the left",), "bottom": ("along the bottom border",),
                "bottom right": ("down and to the right",)},
    number_words={1: ("just one",), 2: ("a couple of",), 3: ("a set of three",)},
    joins=(" beside ", " alongside "),
)
PHRASINGS = {"training": TRAINING, "unseen": UNSEEN, "shifted": SHIFTED}

# Captions 3: the training words and many more frames, synonyms, position phrases and word orders, so that a
# teacher learns the meaning rather than the templates. Nothing here is in UNSEEN, which stays a held-out test
# (tests/test_prompts.py checks both).
WIDE = Phrasing(
    frames=FRAMES + ("an image showing {}", "a simple image of {}", "a diagram of {}", "a rendering of {}",
                     "a canvas with {}", "this picture shows {}", "here is {}", "draw {}", "show {}", "generate {}",
                     "a flat drawing of {}", "clip art of {}", "a toy scene with {}", "the image has {}",
                     "in this image: {}", "a graphic with {}", "a frame with {}", "{} on the canvas",
                     "{} in the picture", "a plain image containing {}", "please draw {}"),
    shape_words={
        "circle": SHAPE_WORDS["circle"] + (("disc", "discs"), ("dot", "dots"), ("round shape", "round shapes"),
                                           ("orb", "orbs")),
        "square": SHAPE_WORDS["square"] + (("square shape", "square shapes"), ("rectangle", "rectangles"),
                                           ("quad", "quads")),
        "triangle": SHAPE_WORDS["triangle"] + (("triangular shape", "triangular shapes"), ("pyramid", "pyramids"),
                                               ("three-sided shape", "three-sided shapes"), ("arrowhead", "arrowheads")),
        "cross": SHAPE_WORDS["cross"] + (("plus shape", "plus shapes"), ("cross shape", "cross shapes"),
                                         ("+ sign", "+ signs")),
    },
    size_words={"small": SIZE_WORDS["small"] + ("smaller", "compact", "wee", "modest"),
                "large": SIZE_WORDS["large"] + ("bigger", "enormous", "massive", "sizable")},
    cell_words={
        "top left": CELL_WORDS["top left"] + ("top-left", "toward the top left", "in the northwest corner"),
        "top": CELL_WORDS["top"] + ("at the top middle", "up top", "in the north"),
        "top right": CELL_WORDS["top right"] + ("top-right", "toward the top right", "in the northeast corner"),
        "left": CELL_WORDS["left"] + ("on the left side", "to the left", "in the west"),
        "center": CELL_WORDS["center"] + ("centered", "in the very center", "at the middle"),
        "right": CELL_WORDS["right"] + ("on the right side", "to the right", "in the east"),
        "bottom left": CELL_WORDS["bottom left"] + ("bottom-left", "toward the bottom left",
                                                    "in the southwest corner"),
        "bottom": CELL_WORDS["bottom"] + ("at the bottom middle", "down low", "in the south"),
        "bottom right": CELL_WORDS["bottom right"] + ("bottom-right", "toward the bottom right",
                                                      "in the southeast corner"),
    },
    number_words={1: NUMBER_WORDS[1] + ("1", "one lone"), 2: NUMBER_WORDS[2] + ("two separate", "exactly two"),
                  3: NUMBER_WORDS[3] + ("three separate", "exactly three")},
    joins=TRAINING.joins + (" along with ", " together with ", "; ", " & "),
    last_joins=TRAINING.last_joins,
    color_forms=("{color} {noun}", "{color} {noun}", "{color} {noun}", "{color}-colored {noun}",
                 "{noun} in {color}", "{noun} colored {color}"),
)
CAPTION_PHRASINGS = {2: TRAINING, 3: WIDE, 4: WIDE}  # what each CAPTION_VERSION's captions are made of
READING_ORDER_FROM = 4  # from this version, captions that state no position name objects in reading order


def caption_words(version: int) -> Phrasing:
    """The words of captions ``version``; an unknown version raises ValueError naming the known ones."""
    if version not in CAPTION_PHRASINGS:
        raise ValueError(f"unknown caption version {version}; use one of {sorted(CAPTION_PHRASINGS)}")
    return CAPTION_PHRASINGS[version]


# ------------------------------------------------------------------------------------------------------- captions
def _pick(rng: np.random.Generator, options):
    return options[rng.integers(len(options))]


def _noun(obj: dict, rng, plural: bool, words: Phrasing = TRAINING) -> str:
    pair = _pick(rng, words.shape_words[obj["shape"]]) if obj.get("shape") else _pick(rng, GENERIC_SHAPE_WORDS)
    return pair[1] if plural else pair[0]


def describe(obj: dict, rng: np.random.Generator, count: int = 1, words: Phrasing = TRAINING) -> str:
    """Words for ``count`` identical objects with the fields present in ``obj``, e.g. 'two small red circles'."""
    out = [_pick(rng, words.number_words[count])]
    if obj.get("size"):
        out.append(_pick(rng, words.size_words[obj["size"]]))
    noun = _noun(obj, rng, count > 1, words)
    if obj.get("color"):  # one form draws nothing from rng, so that captions 2 stay as they were
        form = _pick(rng, words.color_forms) if len(words.color_forms) > 1 else words.color_forms[0]
        noun = form.format(color=obj["color"], noun=noun)
    out.append(noun)
    if obj.get("position"):
        out.append(_pick(rng, words.cell_words[obj["position"]]))
    if out[0] == "a" and out[1][0] in "aeiou":
        out[0] = "an"
    return " ".join(out)


def join(parts: list[str], rng: np.random.Generator, words: Phrasing = TRAINING) -> str:
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        return parts[0] + _pick(rng, words.joins) + parts[1]
    last = words.joins if words.last_joins is None else words.last_joins
    return ", ".join(parts[:-1]) + _pick(rng, last) + parts[-1]


def group(objects: list[dict]) -> list[tuple[dict, int]]:
    """Merge identical partial specs without a position into (spec, count) pairs, keeping first-seen order."""
    groups: list[tuple[dict, int]] = []
    for o in objects:
        for k, (g, n) in enumerate(groups):
            if g == o and not o.get("position"):
                groups[k] = (g, n + 1)
                break
        else:
            groups.append((o, 1))
    return groups


PER_OBJECT_KEEP = {"shape": 0.92, "color": 0.85, "size": 0.5, "position": 0.6}
PER_CAPTION_KEEP = {"shape": 0.95, "color": 0.5, "size": 0.3, "position": 0.35}
# The captions the shipped teacher was trained on, and the default of `train-teacher --captions` and of synthetic
# data; a new version gets a new key, so cached caption embeddings and synthetic shards are never reused across it.
CAPTION_VERSION = 4


def caption(scene: dict, rng: np.random.Generator, version: int = CAPTION_VERSION) -> tuple[str, list[dict]]:
    """A random caption of ``scene`` and the partial spec it states. Every object is named, so the caption fixes the
    object count; any other attribute may be left out.

    Half the captions drop attributes object by object; the other half choose one set of attributes for all the
    objects, so that sparse captions such as 'two circles and a square' (the style of the counting prompts) are
    common: with per-object dropout alone, 0.15% of captions held a number word and 0.9% named shapes only, and a
    teacher trained on them drew 'three triangles' as one triangle. ``version`` picks the words
    (``CAPTION_PHRASINGS``): 2 the templates of the eval prompts, 3 many more, 4 those of 3.

    From version 4 a caption that states no position names the objects in reading order (top left first, row by
    row; otherwise the rules and words of version 3), so that 'a circle and a triangle' says which object is
    which: the circle is the one read first. With random order (versions 2-3) the teacher chose each object's shape
    from the named ones independently and drew 'a circle and a triangle' as two triangles in 40% of its images
    (run 7: two_objects 0.40); oversampling such captions 6x did not change that. Any layout that reads the
    objects in the named order satisfies the caption, so prompts in any order stay satisfiable."""
    words = caption_words(version)
    if rng.random() < 0.5:
        stated = [{k: o[k] for k in FIELDS if rng.random() < PER_OBJECT_KEEP[k]} for o in scene["objects"]]
    else:
        fields = [k for k in FIELDS if rng.random() < PER_CAPTION_KEEP[k]]
        stated = [{k: o[k] for k in fields} for o in scene["objects"]]
    order = rng.permutation(len(stated))
    if version >= READING_ORDER_FROM and not any(o.get("position") for o in stated):
        order = sorted(range(len(stated)), key=lambda i: CELLS.index(scene["objects"][i]["position"]))
    text = join([describe(g, rng, n, words) for g, n in group([stated[i] for i in order])], rng, words)
    if rng.random() < 0.15:
        text += f" on a {BACKGROUND_WORDS[scene['background']['kind']]} background"
    return _pick(rng, words.frames).format(text), stated


# --------------------------------------------------------------------------------------------------- prompt files
def make_prompt(category: str, rng: np.random.Generator, words: Phrasing = TRAINING) -> dict:
    """One prompt of ``category`` with the objects it specifies, phrased with ``words``."""
    shapes, colors, cells = ([str(v) for v in rng.permutation(vocab)] for vocab in (SHAPES, COLORS, CELLS))
    if category == "single_object":
        objects = [{"shape": shapes[0]}]
    elif category == "two_objects":
        objects = [{"shape": shapes[0]}, {"shape": shapes[1]}]
    elif category == "counting":
        n = int(rng.integers(1, MAX_OBJECTS + 1))
        objects = [{"shape": shapes[0]}] * n
    elif category == "colors":
        objects = [{"shape": shapes[0], "color": colors[0]}]
    elif category == "position":
        objects = [{"shape": shapes[i], "position": cells[i]} for i in range(int(rng.integers(1, 3)))]
    elif category == "color_attr":
        objects = [{"shape": shapes[0], "color": colors[0]}, {"shape": shapes[1], "color": colors[1]}]
    else:
        raise ValueError(f"unknown category {category!r}; expected one of {CATEGORIES}")
    objects = [dict(o) for o in objects]
    text = join([describe(g, rng, n, words) for g, n in group(objects)], rng, words)
    return {"prompt": _pick(rng, words.frames).format(text), "category": category, "objects": objects}


@dataclass
class MakePromptsConfig:
    out: str = "prompts/nano-eval.jsonl"
    per_category: int = 60
    seed: int = 1234
    # "training" (the captions' words), "unseen" (prompts/nano-unseen.jsonl) or "shifted" (nano-val-shifted.jsonl)
    phrasing: str = "training"
    exclude: str | None = None   # comma-separated prompt files whose prompt texts must not recur (a validation file)


def make_prompts(per_category: int, seed: int, phrasing: str = "training") -> list[dict]:
    if phrasing not in PHRASINGS:
        raise ValueError(f"unknown phrasing {phrasing!r}; use one of {sorted(PHRASINGS)}")
    rng = np.random.default_rng(seed)
    return [make_prompt(c, rng, PHRASINGS[phrasing]) for c in CATEGORIES for _ in range(per_category)]


def make_prompts_cmd(cfg: MakePromptsConfig) -> None:
    taken = {p["prompt"] for f in (cfg.exclude or "").split(",") if f for p in read_prompts(f)}
    prompts = make_prompts(cfg.per_category, cfg.seed, cfg.phrasing)
    if taken:  # draw more and keep the first per_category of each category whose text is new
        pool, kept = make_prompts(cfg.per_category * 4, cfg.seed, cfg.phrasing), {c: [] for c in CATEGORIES}
        for p in pool:
            if p["prompt"] not in taken and len(kept[p["category"]]) < cfg.per_category:
                kept[p["category"]].append(p)
                taken.add(p["prompt"])
        prompts = [p for c in CATEGORIES for p in kept[c]]
    write_prompts(prompts, cfg.out)
    print(f"wrote {len(prompts)} prompts to {cfg.out}")


def write_prompts(prompts: list[dict], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(p) + "\n" for p in prompts))
    os.replace(tmp, path)


def validate_objects(objects, where: str) -> list[dict]:
    if not isinstance(objects, list) or not 1 <= len(objects) <= MAX_OBJECTS:
        n = len(objects) if isinstance(objects, list) else objects
        raise PromptFileError(f"{where}: 'objects' must be a list of 1 to {MAX_OBJECTS} objects, got {n!r}")
    for k, obj in enumerate(objects):
        if not isinstance(obj, dict):
            raise PromptFileError(f"{where}: object {k} must be a JSON object like {{\"shape\": \"circle\"}}")
        for field, value in obj.items():
            if field not in FIELDS:
                raise PromptFileError(f"{where}: object {k} has unknown field {field!r}; fields: {list(FIELDS)}")
            if value is not None and value not in FIELDS[field]:
                raise PromptFileError(f"{where}: object {k} has unknown {field} {value!r}; "
                                      f"valid: {list(FIELDS[field])}")
    cells = [o["position"] for o in objects if o.get("position")]
    if len(set(cells)) != len(cells):
        raise PromptFileError(f"{where}: two objects in one cell {cells}; each cell holds at most one object")
    return [{k: v for k, v in o.items() if v is not None} for o in objects]


def read_prompts(path: str | Path) -> list[dict]:
    """Read and validate a prompt file; any problem raises PromptFileError naming the line."""
    path = Path(path)
    if not path.is_file():
        raise PromptFileError(f"prompt file {path} does not exist (make one with `ladd nano make-prompts`)")
    prompts = []
    for where, item in json_prompt_lines(path, PromptFileError):
        if "category" in item and not isinstance(item["category"], str):
            raise PromptFileError(f"{where}: 'category' must be a string such as {CATEGORIES[0]!r}")
        if "objects" not in item:
            raise PromptFileError(f"{where}: missing 'objects', the spec the image is judged against")
        prompts.append({"prompt": item["prompt"], "category": item.get("category", "uncategorized"),
                        "objects": validate_objects(item["objects"], where)})
    if not prompts:
        raise PromptFileError(f"{path} holds no prompts")
    return prompts
