import json
from pathlib import Path

import pytest

from ladd.nano.prompts import CATEGORIES, PromptFileError, make_prompts, read_prompts


def write(tmp_path, lines):
    p = tmp_path / "p.jsonl"
    p.write_text("\n".join(l if isinstance(l, str) else json.dumps(l) for l in lines) + "\n")
    return p


def test_shipped_prompt_file_is_valid_and_covers_all_categories():
    prompts = read_prompts("prompts/nano-eval.jsonl")
    assert len(prompts) >= 300
    assert {p["category"] for p in prompts} == set(CATEGORIES)


def test_shipped_prompt_file_is_made_by_the_documented_command():
    lines = open("prompts/nano-eval.jsonl").read().splitlines()
    assert [json.loads(l) for l in lines] == make_prompts(60, 1234)


GOOD = {"prompt": "a red circle", "category": "colors", "objects": [{"shape": "circle", "color": "red"}]}


@pytest.mark.parametrize("bad, message", [
    ("{not json", "not valid JSON"),
    ({"prompt": "x", "objects": [{"shape": "hexagon"}]}, "unknown shape 'hexagon'"),
    ({"prompt": "x", "objects": [{"color": "pink"}]}, "unknown color 'pink'"),
    ({"prompt": "x", "objects": [{"position": "middle"}]}, "unknown position 'middle'"),
    ({"prompt": "x", "objects": [{"shape": "circle"}] * 4}, "1 to 3 objects"),
    ({"prompt": "x", "objects": []}, "1 to 3 objects"),
    ({"prompt": "x", "objects": [{"position": "top"}, {"position": "top"}]}, "two objects in one cell"),
    ({"prompt": "x", "objects": [{"shape": "circle", "texture": "wood"}]}, "unknown field 'texture'"),
    ({"objects": [{"shape": "circle"}]}, "'prompt'"),
    ({"prompt": "x"}, "missing 'objects'"),
])
def test_bad_lines_name_the_line_and_the_problem(tmp_path, bad, message):
    path = write(tmp_path, [GOOD, bad])
    with pytest.raises(PromptFileError) as e:
        read_prompts(path)
    assert f"{path}:2" in str(e.value) and message in str(e.value)


@pytest.mark.parametrize("suffix", [".jsonl", ".txt"])
def test_non_utf8_files_and_huge_lines_are_one_clear_error_naming_the_line(tmp_path, suffix):
    """Both readers (evaluation files and data.prompts) refuse, naming file and line, before any model loads."""
    from ladd.config import ConfigError
    from ladd.data.prompts import MAX_PROMPT_CHARS, read_prompt_texts

    good = json.dumps(GOOD) if suffix == ".jsonl" else "a red circle"
    latin1 = tmp_path / f"latin1{suffix}"
    cafe = json.dumps({**GOOD, "prompt": "a caf\u00e9"}, ensure_ascii=False) if suffix == ".jsonl" else "a caf\u00e9"
    latin1.write_bytes((good + "\n").encode() + cafe.encode("latin-1"))
    huge = tmp_path / f"huge{suffix}"
    huge.write_text(good + "\n" + good + "\n" + "x" * (MAX_PROMPT_CHARS + 1) + "\n")
    readers = [(read_prompt_texts, ConfigError)] + [(read_prompts, PromptFileError)] * (suffix == ".jsonl")
    for read, error in readers:
        with pytest.raises(error, match=f"{latin1}:2: not UTF-8 text .*save the file as UTF-8"):
            read(latin1)
        with pytest.raises(error, match=f"{huge}:3: a line of 10,001 characters"):
            read(huge)


def test_missing_file(tmp_path):
    with pytest.raises(PromptFileError, match="does not exist"):
        read_prompts(tmp_path / "nope.jsonl")


@pytest.mark.parametrize("version", [2, 3, 4])
def test_unseen_phrasing_is_disjoint_from_the_training_captions(version):
    import numpy as np

    from ladd.nano.prompts import UNSEEN, caption, make_prompts
    from ladd.nano.shapeworld import sample_scene, scene_rng

    captions = [caption(sample_scene(scene_rng(1, i)), np.random.default_rng(i), version)[0] for i in range(2000)]
    new_phrases = [f.replace("{}", "").strip(" :,.") for f in UNSEEN.frames]
    new_phrases += [w for ws in UNSEEN.cell_words.values() for w in ws] + [j.strip() for j in UNSEEN.joins]
    new_phrases += [w for ws in UNSEEN.size_words.values() for w in ws] + ["ball", "tile", "wedge", "a pair of"]
    for phrase in new_phrases:
        assert not any(phrase in c for c in captions), phrase
    unseen = make_prompts(10, seed=4321, phrasing="unseen")
    assert len(unseen) == 60 and all(any(p in u["prompt"] for p in new_phrases) for u in unseen)


def test_the_shifted_validation_phrasing_is_disjoint_from_the_captions_and_from_unseen(tmp_path):
    """prompts/nano-val-shifted.jsonl selects for unseen phrasings without nano-unseen's words; it is made by the
    command docs/evaluation.md gives."""
    from ladd.cli import main
    import numpy as np

    from ladd.nano.prompts import SHIFTED, UNSEEN, caption, make_prompts, read_prompts
    from ladd.nano.shapeworld import sample_scene, scene_rng

    captions = [caption(sample_scene(scene_rng(1, i)), np.random.default_rng(i), v)[0]
                for v in (2, 3, 4) for i in range(1500)]
    unseen = " | ".join(p["prompt"] for p in make_prompts(60, seed=4321, phrasing="unseen"))
    new = [f.replace("{}", "").strip(" :,.") for f in SHIFTED.frames] + [j.strip() for j in SHIFTED.joins]
    new += [w for words in (SHIFTED.cell_words, SHIFTED.size_words, SHIFTED.number_words) for ws in words.values()
            for w in ws]
    new += [pair[0] for shape, pairs in SHIFTED.shape_words.items() for pair in pairs if pair[0] != shape]
    for phrase in new:
        assert not any(phrase in c for c in captions) and phrase not in unseen, phrase
    assert not set(SHIFTED.frames) & set(UNSEEN.frames)
    shipped = read_prompts("prompts/nano-val-shifted.jsonl")
    assert len(shipped) == 240 and all(any(p in s["prompt"] for p in new) for s in shipped)
    others = {p["prompt"] for f in ("nano-eval", "nano-unseen", "nano-val") for p in read_prompts(f"prompts/{f}.jsonl")}
    assert not others & {s["prompt"] for s in shipped}
    assert main(["nano", "make-prompts", "--phrasing", "shifted", "--per-category", "40", "--seed", "5678", "--exclude",
                 "prompts/nano-eval.jsonl,prompts/nano-unseen.jsonl,prompts/nano-val.jsonl",
                 "--out", str(tmp_path / "v.jsonl")]) == 0
    assert (tmp_path / "v.jsonl").read_text() == Path("prompts/nano-val-shifted.jsonl").read_text()


def test_captions_3_use_many_more_words_than_captions_2():
    import numpy as np

    from ladd.nano.prompts import caption
    from ladd.nano.shapeworld import sample_scene, scene_rng

    def vocabulary(version):
        rng = np.random.default_rng(0)
        return {w for i in range(2000) for w in caption(sample_scene(scene_rng(1, i)), rng, version)[0].split()}

    v2, v3 = vocabulary(2), vocabulary(3)
    assert len(v3) > 1.5 * len(v2)


def test_unknown_caption_version_is_refused():
    import numpy as np

    from ladd.nano.prompts import caption
    from ladd.nano.shapeworld import sample_scene, scene_rng

    with pytest.raises(ValueError, match="caption version 9"):
        caption(sample_scene(scene_rng(1, 0)), np.random.default_rng(0), 9)


@pytest.mark.parametrize("version, in_reading_order", [(3, False), (4, True)])
def test_captions_4_name_objects_in_reading_order_when_no_position_is_stated(version, in_reading_order):
    import numpy as np

    from ladd.nano.prompts import caption, caption_words

    # a circle at the bottom right and a square at the top left: read first, the square is named first
    scene = {"objects": [{"shape": "circle", "color": "red", "size": "small", "position": "bottom right"},
                         {"shape": "square", "color": "blue", "size": "large", "position": "top left"}],
             "background": {"kind": "stripes"}}
    words = caption_words(version).shape_words
    first = []
    for seed in range(400):
        text, stated = caption(scene, np.random.default_rng(seed), version)
        if any(o.get("position") for o in stated) or not all(o.get("shape") for o in stated):
            continue
        at = {s: min(text.find(w[0]) for w in words[s] if w[0] in text) for s in ("circle", "square")}
        first.append(at["square"] < at["circle"])
    assert len(first) > 50
    assert all(first) if in_reading_order else 0.3 < np.mean(first) < 0.7
