"""Prompt files for synthetic data (``data.prompts``): a text file with one prompt per line, or a JSON-lines file
whose lines carry a ``"prompt"`` field (our evaluation prompt files; other fields are ignored)."""

from __future__ import annotations

import json
from pathlib import Path

from ladd.config import ConfigError


def read_prompt_texts(path: str | Path) -> list[str]:
    """The prompts of ``path`` in file order (blank lines skipped); ``ConfigError`` naming ``data.prompts`` if the
    file is missing, empty or malformed."""
    path = Path(path)
    fix = "give a .txt file with one prompt per line or a .jsonl file with a 'prompt' field per line"
    if not path.is_file():
        raise ConfigError(f"data.prompts: {path} does not exist; {fix}")
    lines = [(n, line.strip()) for n, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    if path.suffix != ".jsonl":
        texts = [line for _, line in lines]
    else:
        texts = []
        for n, line in lines:
            try:
                item = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"data.prompts: {path}:{n} is not valid JSON ({e.msg}); {fix}") from None
            if not isinstance(item, dict) or not isinstance(item.get("prompt"), str) or not item["prompt"].strip():
                raise ConfigError(f"data.prompts: {path}:{n} has no non-empty string field 'prompt'; {fix}")
            texts.append(item["prompt"].strip())
    if not texts:
        raise ConfigError(f"data.prompts: {path} holds no prompts; {fix}")
    return texts
