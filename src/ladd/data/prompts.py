"""Prompt files for synthetic data (``data.prompts``): a text file with one prompt per line, or a JSON-lines file
whose lines carry a ``"prompt"`` field (our evaluation prompt files; other fields are ignored)."""

from __future__ import annotations

import json
from pathlib import Path

from ladd.config import ConfigError


# Text encoders keep a few hundred tokens (CLIP 77, T5 256 in SD3, MiniLM 40 here); a far longer line is a wrong
# file (seen: a 36 MB line, which got as far as a shard's header before failing).
MAX_PROMPT_CHARS = 10_000


def prompt_lines(path: Path, error) -> list[tuple[int, str]]:
    """``(line number, text)`` of every line of ``path`` (UTF-8); ``error(problem)`` for a file that is not UTF-8
    text or has a line longer than ``MAX_PROMPT_CHARS``, naming the line."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise error(f"{path}:{line}: not UTF-8 text (byte {data[e.start]:#04x} at offset {e.start}); save the "
                    f"file as UTF-8") from None
    lines = text.splitlines()
    for n, line in enumerate(lines, 1):
        if len(line) > MAX_PROMPT_CHARS:
            raise error(f"{path}:{n}: a line of {len(line):,} characters; prompts are at most {MAX_PROMPT_CHARS:,} "
                        f"(text encoders keep a few hundred tokens): is this the right file?")
    return list(enumerate(lines, 1))


def json_prompt_lines(path: Path, error) -> list[tuple[str, dict]]:
    """``(where, item)`` for every non-blank line of the JSON-lines prompt file ``path`` (``where`` = ``file:line``),
    each a JSON object with a non-empty string ``"prompt"``; for the first line that is not, raises
    ``error(problem)`` (the caller's exception, with its own context and fix). Shared by ``data.prompts`` and the
    evaluation prompt files (ladd.nano.prompts.read_prompts)."""
    out = []
    for n, line in prompt_lines(path, error):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise error(f"{where}: not valid JSON ({e.msg}); each line must be one JSON object") from None
        if not isinstance(item, dict) or not isinstance(item.get("prompt"), str) or not item["prompt"].strip():
            raise error(f"{where}: each line needs a non-empty string field 'prompt'")
        out.append((where, item))
    return out


def read_prompt_texts(path: str | Path, name: str = "data.prompts") -> list[str]:
    """The prompts of ``path`` in file order (blank lines skipped); ``ConfigError`` naming ``name`` (the option
    that gave the file) if the file is missing, empty or malformed."""
    path = Path(path)
    fix = "give a .txt file with one prompt per line or a .jsonl file with a 'prompt' field per line"
    if not path.is_file():
        raise ConfigError(f"{name}: {path} does not exist; {fix}")
    if path.suffix == ".jsonl":
        texts = [item["prompt"].strip()
                 for _, item in json_prompt_lines(path, lambda problem: ConfigError(f"{name}: {problem}; {fix}"))]
    else:
        texts = [line.strip() for _, line in prompt_lines(path, lambda problem: ConfigError(f"{name}: {problem}"))
                 if line.strip()]
    if not texts:
        raise ConfigError(f"{name}: {path} holds no prompts; {fix}")
    return texts
