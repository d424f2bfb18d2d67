"""benchmarks/read_marginals.py and benchmarks/background_kinds.py: what a model draws when the prompt leaves a choice."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from background_kinds import shares as kind_shares  # noqa: E402
from background_kinds import train_classifier  # noqa: E402
from read_marginals import open_prompts, render_with_shares, shares, total_variation  # noqa: E402

PROMPTS = [{"prompt": "a red circle", "objects": [{"shape": "circle", "color": "red"}]},
           {"prompt": "two squares", "objects": [{"shape": "square"}, {"shape": "square"}]}]


def test_shares_count_the_read_objects_of_the_prompts_that_leave_the_attribute_open():
    rows = [{"prompt_index": 0, "read": [{"color": "red"}]},
            {"prompt_index": 1, "read": [{"color": "orange"}, {"color": "green"}]},
            {"prompt_index": 1, "read": [{"color": "orange"}]}]
    assert open_prompts(PROMPTS, "color") == {1}
    assert shares(rows, "color") == {"green": 0.25, "orange": 0.5, "red": 0.25}
    assert shares(rows, "color", open_prompts(PROMPTS, "color")) == pytest.approx({"green": 1 / 3, "orange": 2 / 3})
    assert total_variation({"a": 1.0}, {"a": 1.0}) == 0.0
    assert total_variation({"a": 1.0}, {"b": 1.0}) == 1.0
    assert total_variation({"a": 0.5, "b": 0.5}, {"a": 0.75, "b": 0.25}) == pytest.approx(0.25)


def test_renders_with_shares_draw_the_open_colors_from_them_and_keep_the_stated_ones():
    from ladd.evaluation.evaluate import load_evaluator, read_back

    images = render_with_shares(PROMPTS, 4, 0, {"color": {"green": 1.0}, "size": {"large": 0.5, "small": 0.5}})
    assert images.shape == (8, 64, 64, 3) and images.dtype == np.uint8
    reads, _ = read_back(load_evaluator()[0], images)
    stated = [o["color"] for r in reads[:4] for o in r]
    chosen = [o["color"] for r in reads[4:] for o in r]
    assert stated and stated.count("red") >= 0.75 * len(stated)  # the prompt's own color stays
    assert chosen and chosen.count("green") >= 0.75 * len(chosen)  # the open one follows the shares


def test_read_marginals_script_prints_the_tables_and_writes_json(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    rows = [{"prompt_index": i, "k": k, "read": [{"shape": "square", "color": "orange", "size": "small"}]}
            for i in range(2) for k in range(2)]
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "readback.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "read_marginals.py"), "--prompts", str(prompts),
                           "--per-prompt", "2", "--unspecified", f"m={tmp_path / 'm'}", "--out", str(tmp_path / "o"),
                           "--fd-of", "m"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    out = json.loads((tmp_path / "o" / "results.json").read_text())
    assert out["m"]["color"]["shares"] == {"orange": 1.0} and out["m"]["color"]["tv_to_real"] > 0.5
    assert "shape" not in out["m"]  # every prompt states its shapes: no choice to count
    assert out["m"]["fd_of_shares"] > out["real"]["fd_of_shares"]  # all-orange open colors are further from real
    bad = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "read_marginals.py"), "--prompts", str(prompts),
                          f"m={tmp_path / 'none'}"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode != 0 and "readback.jsonl" in bad.stderr
    unknown = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "read_marginals.py"), "--prompts", str(prompts),
                              f"m={tmp_path / 'm'}", "--fd-of", "x"], capture_output=True, text=True, cwd=ROOT)
    assert unknown.returncode != 0 and "--fd-of x" in unknown.stderr


def test_background_classifier_tells_the_four_kinds_apart():
    predict, accuracy, real = train_classifier(480, 7, epochs=150)
    assert accuracy > 0.8, accuracy
    assert set(real) == {"stripes", "checks", "noise", "gradient"} and sum(real.values()) == pytest.approx(1.0)
    assert kind_shares([0, 0, 1, 3]) == {"stripes": 0.5, "checks": 0.25, "noise": 0.0, "gradient": 0.25}
