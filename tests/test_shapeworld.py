import numpy as np
import pytest

from ladd.nano import shapeworld as sw
from ladd.nano.prompts import caption, group
from ladd.nano.vocab import CELLS, COLORS, SHAPES, SIZES


def test_deterministic_from_seed_and_index():
    a, sa = sw.sample(3, 17)
    b, sb = sw.sample(3, 17)
    c, _ = sw.sample(3, 18)
    d, _ = sw.sample(4, 17)
    assert np.array_equal(a, b) and sa == sb
    assert not np.array_equal(a, c) and not np.array_equal(a, d)
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8


def test_scenes_follow_the_rules():
    for i in range(200):
        _, scene = sw.sample(0, i)
        objs = scene["objects"]
        assert len(objs) in (1, 2, 3)
        cells = [o["position"] for o in objs]
        assert len(set(cells)) == len(cells)
        for o in objs:
            assert o["shape"] in SHAPES and o["color"] in COLORS and o["position"] in CELLS and o["size"] in SIZES
            assert max(abs(j) for j in o["jitter"]) <= sw.JITTER


@pytest.mark.parametrize("hw", [(64, 96), (96, 64), (32, 48)])
def test_non_square_sizes(hw):
    img, _ = sw.sample(0, 1, *hw)
    assert img.shape == (*hw, 3)


@pytest.mark.parametrize("hw", [(63, 64), (64, 40), (16, 16), (0, 64)])
def test_impossible_sizes_raise(hw):
    with pytest.raises(ValueError, match="multiple of 16"):
        sw.sample(0, 1, *hw)


def test_render_spec_satisfies_spec_and_fills_the_rest():
    spec = [{"shape": "circle", "color": "red", "position": "top left"}, {"shape": "cross"}]
    seen_colors = set()
    for seed in range(20):
        img, scene = sw.render_spec(spec, seed)
        a, b = scene["objects"]
        assert (a["shape"], a["color"], a["position"]) == ("circle", "red", "top left")
        assert b["shape"] == "cross" and b["position"] != "top left"
        seen_colors.add(b["color"])
    assert len(seen_colors) > 2  # the unspecified color is drawn at random


def test_object_is_drawn_in_its_cell_with_its_color():
    img, scene = sw.render_spec([{"shape": "square", "color": "blue", "position": "bottom right", "size": "large"}], 0)
    cell = img[43:, 43:].astype(float) / 255
    other = img[:21, :21].astype(float) / 255
    blueness = lambda x: (x[..., 2] - x[..., :2].mean(-1)).mean()
    assert blueness(cell) > blueness(other) + 0.2


@pytest.mark.parametrize("version", [2, 3])
def test_caption_names_every_object(version):
    rng = np.random.default_rng(0)
    for i in range(200):
        _, scene = sw.sample(1, i)
        text, stated = caption(scene, rng, version)
        assert len(stated) == len(scene["objects"])
        assert sum(n for _, n in group(stated)) == len(stated)
        for o, s in zip(scene["objects"], stated):
            assert all(o[k] == v for k, v in s.items())
        assert isinstance(text, str) and text


def test_counting_scenes_and_captions_are_common():
    """The counting prompts ('three triangles') must be in the training distribution: scenes that repeat a shape,
    and sparse captions that name only shapes, so that identical objects are grouped under a number word."""
    rng = np.random.default_rng(0)
    scenes = [sw.sample_scene(sw.scene_rng(1, i)) for i in range(3000)]
    triples = [s for s in scenes if len(s["objects"]) == 3]
    three_of_a_kind = np.mean([len({o["shape"] for o in s["objects"]}) == 1 for s in triples])
    assert three_of_a_kind > 0.2  # 1/16 if objects were independent
    stated = [caption(s, rng)[1] for s in scenes]
    counts = [max(n for _, n in group(spec)) for spec in stated]
    assert np.mean([c == 2 for c in counts]) > 0.03 and np.mean([c == 3 for c in counts]) > 0.01
    assert np.mean([all(set(o) == {"shape"} for o in spec) for spec in stated]) > 0.05
