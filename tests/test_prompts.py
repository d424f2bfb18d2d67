import json

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


def test_missing_file(tmp_path):
    with pytest.raises(PromptFileError, match="does not exist"):
        read_prompts(tmp_path / "nope.jsonl")
