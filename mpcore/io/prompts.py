"""Prompt lists for ``mpcore generate``: plain text files and VBench's JSON prompt file.

Two formats, chosen by the file suffix:

* ``.txt`` -- one prompt per line, as VBench's ``prompts/all_category.txt`` (800 prompts, 8 content
  categories x 100) and ``prompts/prompts_per_category/*.txt``. Surrounding whitespace is stripped;
  blank lines and lines starting with ``#`` are ignored. A comment ``# category: NAME`` sets the
  category of the prompts that follow it (until the next such line). Duplicate prompts are kept:
  each line is its own item.
* ``.json`` -- the shape of VBench's ``VBench_full_info.json``: a list of objects, each with a
  ``prompt_en`` string and optionally a ``dimension`` list of strings (the VBench evaluation
  dimensions the prompt belongs to; they become the prompt's category, joined by ``,``).

``read_prompts(EXAMPLE_PROMPTS)`` reads the small example list shipped with mpcore
(``mpcore/data/prompts/example.txt``); ``mpcore generate --prompts example`` uses it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

EXAMPLE_PROMPTS = "example"
"""Reserved ``--prompts`` name of the example list shipped as package data."""

_CATEGORY_LINE = re.compile(r"^#\s*category\s*:\s*(.*?)\s*$", re.IGNORECASE)


class PromptFileError(ValueError):
    """A prompt file that cannot be used; the message names the file (and the line or entry)."""


@dataclass(frozen=True)
class Prompt:
    """One prompt of a list: its text, its category (None if the file gives none) and its
    0-based position in the list (which names the videos generated from it)."""

    text: str
    category: str | None
    index: int


def example_prompts_path() -> Path:
    """Path of the example prompt list shipped with mpcore (package data)."""
    return Path(str(resources.files("mpcore") / "data" / "prompts" / "example.txt"))


def resolve_prompts_path(name: str | Path) -> Path:
    """``example`` (:data:`EXAMPLE_PROMPTS`) -> the shipped example list; anything else is a path."""
    if str(name) == EXAMPLE_PROMPTS:
        return example_prompts_path()
    return Path(name).expanduser()


def read_prompts(path: str | Path) -> list[Prompt]:
    """Read a ``.txt`` or VBench-style ``.json`` prompt file (see the module docstring).

    Raises :class:`PromptFileError` for a missing file, an unsupported suffix, invalid JSON or a
    malformed entry (named by its position), and a file that holds no prompt.
    """
    path = resolve_prompts_path(path)
    if not path.is_file():
        raise PromptFileError(f"prompt file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in (".txt", ".json"):
        raise PromptFileError(f"unsupported prompt file {path} (suffix {path.suffix!r}): use .txt (one prompt per line) "
                              "or .json (a list of objects with 'prompt_en', as VBench_full_info.json)")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise PromptFileError(f"cannot read prompt file {path}: {error}") from None
    entries = _parse_txt(text) if suffix == ".txt" else _parse_json(text, path)
    if not entries:
        raise PromptFileError(f"no prompts in {path}")
    return [Prompt(text=prompt, category=category, index=index) for index, (prompt, category) in enumerate(entries)]


def _parse_txt(text: str) -> list[tuple[str, str | None]]:
    entries = []
    category = None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("#"):
            match = _CATEGORY_LINE.match(line)
            if match:
                category = match.group(1) or None
            continue
        if line:
            entries.append((line, category))
    return entries


def _parse_json(text: str, path: Path) -> list[tuple[str, str | None]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise PromptFileError(f"{path} is not valid JSON (line {error.lineno}, column {error.colno}): {error.msg}") from None
    if not isinstance(data, list):
        raise PromptFileError(f"{path}: expected a JSON list of objects with 'prompt_en' (the shape of VBench_full_info.json), "
                              f"got a JSON {type(data).__name__}")
    entries = []
    for number, entry in enumerate(data):
        where = f"{path}: entry {number}"
        if not isinstance(entry, dict):
            raise PromptFileError(f"{where}: expected an object with 'prompt_en', got {json.dumps(entry)[:80]}")
        prompt = entry.get("prompt_en")
        if not isinstance(prompt, str) or not prompt.strip():
            raise PromptFileError(f"{where}: 'prompt_en' must be a non-empty string, got {json.dumps(prompt)[:80]}")
        dimension = entry.get("dimension")
        if dimension is not None and not (isinstance(dimension, list) and all(isinstance(d, str) for d in dimension)):
            raise PromptFileError(f"{where} ({prompt.strip()!r}): 'dimension' must be a list of strings, got {json.dumps(dimension)[:80]}")
        entries.append((prompt.strip(), ",".join(dimension) if dimension else None))
    return entries
