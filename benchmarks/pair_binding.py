"""How a model binds two different shapes named without positions ("a circle and a triangle"), read from the
`readback.jsonl` of one or more `ladd eval` runs. Prints a Markdown table and writes JSON.

For every image of a prompt that names exactly two objects of two different shapes and states no position:
- `pass`: the image satisfies its prompt (the alignment rule);
- `two`: the evaluator reads exactly two objects;
- `same`: of those, the share holding one shape twice (a model that picks each object's shape on its own, from the
  two words, draws one shape twice half the time: 0.5);
- `first_first`: of the two-object images holding both named shapes, the share whose first-named shape comes first
  in reading order (top left to bottom right, `ladd.nano.vocab.CELLS`): captions 4 name objects in that order, so
  0.5 means the order is not used and 1.0 that it always is.

    ladd eval --model OLD --out runs/eval-old && ladd eval --model NEW --out runs/eval-new
    python benchmarks/pair_binding.py runs/eval-old runs/eval-new --category two_objects --out runs/bench-pairs
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ladd.nano.prompts import read_prompts
from ladd.nano.vocab import CELLS


def is_pair(objects: list[dict]) -> bool:
    shapes = [o.get("shape") for o in objects]
    return len(objects) == 2 and None not in shapes and len(set(shapes)) == 2 and not any(
        o.get("position") for o in objects)


def binding(prompts: list[dict], readbacks: list[dict], category: str | None = None) -> dict:
    """The shares above over the readback rows of pair prompts (of one category, if given)."""
    n = passed = two = same = both = first = 0
    for r in readbacks:
        prompt = prompts[r["prompt_index"]]
        objects = prompt["objects"]
        if not is_pair(objects) or category not in (None, prompt.get("category")):
            continue
        n += 1
        passed += r["ok"]
        read = sorted(r["read"], key=lambda o: CELLS.index(o["position"]))
        if len(read) != 2:
            continue
        two += 1
        shapes = [o["shape"] for o in read]
        same += shapes[0] == shapes[1]
        if sorted(shapes) == sorted(o["shape"] for o in objects):
            both += 1
            first += shapes[0] == objects[0]["shape"]
    share = lambda a, b: round(a / b, 3) if b else None  # noqa: E731
    return {"images": n, "pass": share(passed, n), "two": share(two, n), "same": share(same, two),
            "first_first": share(first, both), "n_two": two, "n_both": both}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("evals", nargs="+", help="`ladd eval --out` folders (metrics.json + readback.jsonl)")
    p.add_argument("--prompts", default=None, help="the prompt file (default: the one in each metrics.json)")
    p.add_argument("--category", default=None, help="only this category's prompts (e.g. two_objects)")
    p.add_argument("--out", default="runs/bench-pairs")
    args = p.parse_args()
    rows = {}
    for d in map(Path, args.evals):
        for name in ("metrics.json", "readback.jsonl"):
            if not (d / name).is_file():
                raise SystemExit(f"error: {d / name} is missing: pass folders written by `ladd eval --out`")
        prompts = read_prompts(args.prompts or json.loads((d / "metrics.json").read_text())["prompts"])
        readbacks = [json.loads(line) for line in (d / "readback.jsonl").read_text().splitlines() if line]
        rows[str(d)] = binding(prompts, readbacks, args.category)
    cols = ["images", "pass", "two", "same", "first_first"]
    print("| eval | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols))
    for name, r in rows.items():
        print(f"| {name} | " + " | ".join(str(r[c]) for c in cols) + " |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pair_binding.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {out / 'pair_binding.json'}")


if __name__ == "__main__":
    main()
