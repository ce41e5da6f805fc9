"""Loading and validating the rows algorithms train on, from a task or from the user's JSONL files."""

from __future__ import annotations

import codecs
import json
from pathlib import Path

from bench.errors import UserError

PREFERENCE_KEYS = ("prompt", "chosen", "rejected")
SFT_KEYS = ("prompt", "completion")
PROMPT_KEYS = ("prompt",)
SAVE_AS_UTF8 = "save it as UTF-8"
PASS_JSONL = "pass a UTF-8 JSON Lines file"


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
                what = (
                    "missing"
                    if key not in row
                    else ("empty" if isinstance(value, str) else f"not a string ({type(value).__name__})")
                )
                raise UserError(
                    f"{source} row {i}: '{key}' is {what}; every row needs non-empty string fields {', '.join(keys)}"
                )
    return rows


def drop_identical_pairs(pairs: list[dict], source: str) -> tuple[list[dict], int]:
    """(the pairs whose chosen and rejected differ after stripping, how many were dropped).

    Such a pair carries no preference: its loss gradient is zero for DPO and contradictory for
    unlikelihood, and it can never count as correct in pair accuracy. A set with nothing else is refused.
    """
    kept = [p for p in pairs if p["chosen"].strip() != p["rejected"].strip()]
    if pairs and not kept:
        raise UserError(
            f"{source}: all {len(pairs)} preference pairs have chosen equal to rejected; "
            "a pair needs two different completions"
        )
    return kept, len(pairs) - len(kept)


def _looks_like_utf16(raw: bytes) -> bool:
    """UTF-16 without a byte-order mark: mostly-ASCII text puts a NUL in every other byte."""
    head = raw[:4096]
    even, odd = head[0::2], head[1::2]
    return any(
        len(half) >= 2 and half.count(0) >= 0.4 * len(half) and other.count(0) <= 0.1 * len(other)
        for half, other in ((even, odd), (odd, even))
    )


def decode_text(raw: bytes, path: str) -> str:
    """A data file's bytes as UTF-8 text (a leading byte-order mark dropped), else one line naming file, line, fix."""
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or (b"\0" in raw and _looks_like_utf16(raw)):
        raise UserError(f"{path}: UTF-16 text; {SAVE_AS_UTF8}")
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8) :]
    if b"\0" in raw:
        line = raw.count(b"\n", 0, raw.index(b"\0")) + 1
        raise UserError(f"{path} line {line}: binary data (a NUL byte), not JSON Lines text; {PASS_JSONL}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        head = raw[:4096].decode("utf-8", errors="replace")
        # Mostly undecodable or control characters: not a text file at all, so "save it as UTF-8" would mislead.
        junk = sum(ch == "\ufffd" or (ch < " " and ch not in "\t\r\n") for ch in head)
        if junk > 0.1 * len(head):
            raise UserError(f"{path} line {line}: binary data, not JSON Lines text; {PASS_JSONL}") from None
        raise UserError(f"{path} line {line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); {SAVE_AS_UTF8}") from None


def read_rows(path: str, keys: tuple[str, ...]) -> list[dict]:
    """A user's JSON Lines file, validated; every problem with it is one line naming the file (and the line)."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise UserError(f"{path}: a directory, not a file; pass a JSON Lines file")
    if not p.is_file():
        raise UserError(f"{path}: no such file; pass an existing JSON Lines file")
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read it ({exc.strerror or exc}); pass a readable JSON Lines file") from None
    text = decode_text(raw, path)
    rows = []
    # Line breaks as text-mode files read them (\n, \r\n or \r), not str.splitlines's wider set:
    # U+2028 may stand unescaped inside a JSON string.
    for i, line in enumerate(text.replace("\r\n", "\n").replace("\r", "\n").split("\n"), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise UserError(f"{path} line {i}: not valid JSON ({exc.msg}); write one JSON object per line") from None
    return validate(rows, keys, path)
