"""Loading and validating the rows algorithms train on, from a task or from the user's JSONL files."""
from __future__ import annotations

import json
from pathlib import Path

from bench.errors import UserError

PREFERENCE_KEYS = ("prompt", "chosen", "rejected")
SFT_KEYS = ("prompt", "completion")
PROMPT_KEYS = ("prompt",)


def validate(rows: list, keys: tuple[str, ...], source: str) -> list[dict]:
    """Every row must be an object whose `keys` are non-empty strings; the first bad row is reported."""
    if not isinstance(rows, list):
        raise UserError(f"{source}: expected a list of rows, got {type(rows).__name__}")
    for i, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise UserError(f"{source} row {i}: expected an object with {', '.join(keys)}, got {type(row).__name__}")
        for key in keys:
            value = row.get(key)
            if not isinstance(value, str) or not value.strip():
                what = "missing" if key not in row else ("empty" if isinstance(value, str) else f"not a string ({type(value).__name__})")
                raise UserError(f"{source} row {i}: '{key}' is {what}; every row needs non-empty string fields {', '.join(keys)}")
    return rows


def read_rows(path: str, keys: tuple[str, ...]) -> list[dict]:
    """A user's JSON Lines file, validated."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"{path}: no such file; pass an existing JSON Lines file")
    rows = []
    with open(p, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise UserError(f"{path} line {i}: not valid JSON ({exc.msg}); write one JSON object per line") from None
    return validate(rows, keys, path)
