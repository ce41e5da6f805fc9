"""Writing and reading files so that no reader ever sees half of one: atomic writes and JSON Lines.

Every file the suite writes for others to read (run records, reports, caches) goes through
`atomic_write_bytes`: written to a temporary name beside the target, fsynced, renamed over it.
A failure (a full disk) removes the temporary file, so nothing half-written is left behind.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def jsonl_line(row: dict) -> str:
    return json.dumps(row, sort_keys=True) + "\n"


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(jsonl_line(r) for r in rows))


def append_jsonl(path: Path, row: dict) -> None:
    """One row added to a log that only its run's writer appends to (the run lock makes it the only one)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(jsonl_line(row))


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSON Lines file the suite wrote itself (records of others are read through bench.records)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
