"""The shipped nano assets: the evaluator reads real images, FD sees blur and noise, `ladd eval` runs end to end."""

import json

import numpy as np
import pytest
import torch

from ladd.cli import main
from ladd.evaluation.evaluate import load_evaluator, read_back
from ladd.evaluation.metrics import feature_stats, frechet_distance
from ladd.nano.degrade import add_noise, gaussian_blur
from ladd.nano.pool import render_pool
from ladd.images import to_tensor, to_uint8
from ladd.nano.train_evaluator import cell_accuracy


@pytest.fixture(scope="module")
def evaluator():
    return load_evaluator()[0]


@pytest.fixture(scope="module")
def real_sets():
    a, scenes = render_pool(seed=4242, n=600, workers=1)
    b, _ = render_pool(seed=4343, n=600, workers=1)
    return a, scenes, b


def test_evaluator_reads_fresh_images(evaluator, real_sets):
    images, scenes, _ = real_sets
    assert cell_accuracy(evaluator, images, scenes) >= 0.99


@pytest.mark.parametrize("height,width", [(64, 96), (96, 64)])
def test_evaluator_reads_non_square_scenes(evaluator, height, width):
    """Non-square scenes (aspect buckets) read at the square's scale: cells cropped as squares of the shorter cell
    side. These 150 scenes: 99.2% (64x96) and 99.6% (96x64) of cells exactly right, 100% at 64x64."""
    from ladd.nano.shapeworld import sample

    images, scenes = zip(*(sample(4242, i, height, width) for i in range(150)))
    assert images[0].shape == (height, width, 3)
    assert cell_accuracy(evaluator, np.stack(images), list(scenes)) >= 0.97  # per cell (9 per scene)


def test_fd_sees_blur_and_noise(evaluator, real_sets):
    a, _, b = real_sets
    fd = lambda x, y: frechet_distance(*feature_stats(read_back(evaluator, x)[1]), *feature_stats(read_back(evaluator, y)[1]))
    x = to_tensor(a)
    blurred = to_uint8(gaussian_blur(x, 1.0))
    noisy = to_uint8(add_noise(x, 0.1, torch.Generator().manual_seed(0)))
    base = fd(a, b)
    assert fd(blurred, b) >= 5 * base, (fd(blurred, b), base)
    assert fd(noisy, b) >= 5 * base, (fd(noisy, b), base)


def _no_nan(name):
    raise AssertionError(f"metrics.json holds {name}, which is not JSON")


def test_eval_real_images_align(tmp_path):
    out = tmp_path / "real"
    assert main(["eval", "--model", "real", "--per-prompt", "1", "--out", str(out), "--cache-dir", str(tmp_path)]) == 0
    m = json.loads((out / "metrics.json").read_text(), parse_constant=_no_nan)
    assert m["alignment"] >= 0.98 and m["n_images"] == 360
    assert m["diversity"] is None  # one image per prompt: nothing varies across seeds; JSON null, not NaN
    assert min(m["alignment_by_category"].values()) >= 0.95


def test_eval_teacher_end_to_end(tmp_path):
    out = tmp_path / "teacher"
    args = ["eval", "--model", "nano-teacher", "--limit", "6", "--per-prompt", "2", "--steps", "4", "--out", str(out),
            "--cache-dir", str(tmp_path), "--save-images"]
    assert main(args) == 0
    m = json.loads((out / "metrics.json").read_text())
    for key in ("alignment", "alignment_by_category", "fd", "diversity", "nfe_per_image", "seconds_per_image",
                "n_images", "model", "steps", "guidance"):
        assert key in m
    assert m["diversity"] > 0 and m["diversity_real"] > 0
    for c, acc in m["alignment_by_category"].items():  # every miss has one reason
        assert abs(sum(m["failures_by_category"][c].values()) - (1 - acc)) < 1e-9
    assert m["n_images"] == 12 and m["steps"] == 4 and m["nfe_per_image"] == 4 * (2 if m["guidance"] != 1 else 1)
    assert (out / "grid.png").is_file() and len(list((out / "images").glob("*.png"))) == 12
    # the saved images evaluate to the same figures through --images
    again = tmp_path / "again"
    assert main(["eval", "--images", str(out / "images"), "--limit", "6", "--per-prompt", "2", "--out", str(again),
                 "--cache-dir", str(tmp_path)]) == 0
    m2 = json.loads((again / "metrics.json").read_text())
    assert m2["alignment"] == m["alignment"] and m2["fd"] is m["fd"] is None  # 12 images: FD not estimable
    assert "12 images for 192 feature dimensions" in m["fd_note"]


def test_per_image_seeds_do_not_depend_on_batch_size(tmp_path):
    from ladd.generate import generate, image_seed
    from ladd.models.registry import load_generator

    gen = load_generator("nano-teacher")
    prompts = ["a red circle", "two blue squares", "a cross"]
    seeds = [image_seed(0, i, 0) for i in range(3)]
    a, _ = generate(gen, prompts, seeds, steps=3, guidance=3.0, batch_size=3)
    b, _ = generate(gen, prompts, seeds, steps=3, guidance=3.0, batch_size=1)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_shift_overrides_the_cards_time_grid():
    from ladd.generate import generate, image_seed
    from ladd.models.registry import load_generator

    gen = load_generator("nano-teacher")
    assert gen.recommended.get("shift", 1.0) == 1.0
    prompts, seeds = ["a red circle", "two blue squares"], [image_seed(0, i, 0) for i in range(2)]
    card, _ = generate(gen, prompts, seeds, steps=2, guidance=3.0)
    one, _ = generate(gen, prompts, seeds, steps=2, guidance=3.0, shift=1.0)
    three, _ = generate(gen, prompts, seeds, steps=2, guidance=3.0, shift=3.0)
    assert np.array_equal(card, one) and np.abs(card.astype(int) - three.astype(int)).mean() > 1


def test_a_cards_per_step_count_shift_applies_at_that_count_only():
    from ladd.generate import generate, image_seed
    from ladd.models.registry import load_generator, recommended_shift

    gen = load_generator("nano-teacher")
    gen.recommended = {**gen.recommended, "shifts": {"2": 3.0}}
    assert recommended_shift(gen.recommended, 2) == 3.0 and recommended_shift(gen.recommended, 3) == 1.0
    prompts, seeds = ["a red circle", "two blue squares"], [image_seed(0, i, 0) for i in range(2)]
    two, _ = generate(gen, prompts, seeds, steps=2, guidance=3.0)
    assert np.array_equal(two, generate(gen, prompts, seeds, steps=2, guidance=3.0, shift=3.0)[0])
    assert np.abs(two.astype(int) - generate(gen, prompts, seeds, steps=2, guidance=3.0, shift=1.0)[0]).mean() > 1
    three, _ = generate(gen, prompts, seeds, steps=3, guidance=3.0)
    assert np.array_equal(three, generate(gen, prompts, seeds, steps=3, guidance=3.0, shift=1.0)[0])


@pytest.mark.parametrize("name, steps", [("nano-student", 4), ("nano-student-1step", 1)])
def test_shipped_students_sample_with_their_card_setting(name, steps):
    """The shipped students load by name with their recommended setting (no guidance, their grid) and sample
    images that are not the teacher's at that step count (they were trained: same noise, other images)."""
    from ladd.generate import generate, image_seed
    from ladd.models.registry import load_generator

    student, teacher = load_generator(name), load_generator("nano-teacher")
    assert student.recommended["steps"] == steps and student.recommended["guidance"] == 1.0
    prompts, seeds = ["a red circle", "two blue squares"], [image_seed(0, i, 0) for i in range(2)]
    ours, _ = generate(student, prompts, seeds, steps=steps, guidance=1.0, sampler="renoise")
    theirs, _ = generate(teacher, prompts, seeds, steps=steps, guidance=1.0, sampler="renoise")
    assert ours.shape == (2, 64, 64, 3) and np.abs(ours.astype(int) - theirs.astype(int)).mean() > 2
