"""Range checks of settings, with one message shape: `--set SECTION.KEY=VALUE: what is accepted`.

Every config dataclass (TrainConfig, Generation, RunOptions, DataConfig, each plugin's Config)
checks its own ranges in a `check(section)` method built from these; bench.config.apply_overrides
calls it, so every section is validated the same way, before anything is built or written.
"""

from __future__ import annotations

import math
from typing import Any

from bench.errors import UserError


def show(value: Any) -> str:
    """A value as it reads on the command line: 0.0 as 0, True as true."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = repr(value)
        return text[:-2] if text.endswith(".0") else text
    return str(value)


def comma_list(text: str) -> list[str]:
    """The items of a comma-separated setting or flag, stripped, blanks left out: "dpo, sft," -> ["dpo", "sft"]."""
    return [item.strip() for item in text.split(",") if item.strip()]


def require(ok: bool, section: str, key: str, value: Any, accepted: str) -> None:
    """UserError `--set section.key=value: accepted` unless `ok`."""
    if not ok:
        raise UserError(f"--set {section}.{key}={show(value)}: {accepted}")


def _note(note: str) -> str:
    return f" ({note})" if note else ""


def number(obj: Any, section: str, key: str) -> float:
    """The field's value; UserError unless it is a finite number (settings built in code skip parse_value's check)."""
    value = getattr(obj, key)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    require(ok, section, key, value, "expected a finite number")
    return value


def at_least(obj: Any, section: str, key: str, low: int, note: str = "") -> None:
    value = number(obj, section, key)
    require(value >= low, section, key, value, f"must be at least {low}{_note(note)}")


def positive(obj: Any, section: str, key: str, note: str = "") -> None:
    value = number(obj, section, key)
    require(value > 0, section, key, value, f"must be > 0{_note(note)}")


def non_negative(obj: Any, section: str, key: str, note: str = "") -> None:
    value = number(obj, section, key)
    require(value >= 0, section, key, value, f"must be >= 0{_note(note)}")


def between(obj: Any, section: str, key: str, low: float, high: float, closed: str = "[]", note: str = "") -> None:
    """low <= value <= high, with `closed` saying which ends are included: "[]", "(]", "[)" or "()"."""
    value = number(obj, section, key)
    ok = (value >= low if closed[0] == "[" else value > low) and (value <= high if closed[1] == "]" else value < high)
    require(ok, section, key, value, f"must lie in {closed[0]}{show(low)}, {show(high)}{closed[1]}{_note(note)}")


def one_of(obj: Any, section: str, key: str, choices: tuple[str, ...] | list[str]) -> None:
    value = getattr(obj, key)
    require(
        value in choices,
        section,
        key,
        value,
        f"use {' or '.join(choices)}" if len(choices) <= 2 else f"use one of {', '.join(choices)}",
    )
