"""JSONL reading shared by datagen (data.source: jsonl) and eval (--prompts F.jsonl)."""

from __future__ import annotations

import json

from speculators_kit.core.errors import SpecKitError


def read_jsonl(path) -> list[tuple[int, dict]]:
    """(line number, row) for every non-blank line; a line that is not a JSON object is one
    error naming the file and line."""
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise SpecKitError(f"{path}:{n} is not valid JSON ({err.msg}); "
                                   f"every line must be one JSON object") from None
            if not isinstance(row, dict):
                raise SpecKitError(f"{path}:{n} is a JSON {type(row).__name__}, not an object")
            rows.append((n, row))
    return rows
