"""Pieces the hub-backed tasks share (tldr, cnn-dm, hh, truthy, imdb): row checks, limits, the data methods.

A task reads the first rows of a split it needs, checks each with `text_field`, skips what it
cannot use and reads on past the first `limit` rows when it skipped some (`load_usable`); prompts
longer than the task allows are dropped (`keep_fitting`). Tasks whose build() fills
`self._data` with "sft", "train", "test" and "eval" rows get the contract's data methods from
`PreferenceRows`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

from bench import hub
from bench.checks import at_least, non_negative
from bench.errors import UserError

CHUNK = 256
"""Prompts tokenized at a time when checking their length."""


def load_usable(
    name: str,
    split: str,
    limit: int,
    normalise: Callable[[list[dict]], tuple[list[dict], dict]],
    *,
    task: str,
    key: str,
) -> tuple[list[dict], dict]:
    """normalise(rows) -> (usable rows, counts) of the first `limit` rows of a split (0: all), reading the
    whole split when rows were skipped so that `limit` usable ones are kept where the split has them."""
    rows = hub.load_rows(name, split, task=task, key=key, max_rows=limit)
    kept, counts = normalise(rows)
    if limit and len(kept) < limit and len(rows) == limit:
        kept, counts = normalise(hub.load_rows(name, split, task=task, key=key))
    return kept, counts


def model_key(task: str, model: str) -> str:
    """`task/model`, plus for a local directory a fingerprint of its files, so replacing the weights changes the key."""
    if not hub.is_local(model):
        return f"{task}/{model}"
    path = Path(model).expanduser()
    digest = hashlib.sha256()
    files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
    for f in files:
        stat = f.stat()
        digest.update(
            f"{f.relative_to(path) if path.is_dir() else f.name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode()
        )
    if (path / "config.json").is_file():
        digest.update((path / "config.json").read_bytes())
    return f"{task}/{model}@{digest.hexdigest()[:12]}"


def text_field(row: dict, column: str, where: str, columns: tuple[str, ...]) -> str:
    """row[column] as a non-empty string, or a UserError naming the dataset, split and row."""
    if column not in row:
        raise UserError(
            f"{where}: column '{column}' is missing (the row has {', '.join(sorted(row)) or 'no columns'}); "
            f"this dataset needs columns {', '.join(columns)}"
        )
    value = row[column]
    if value is None:  # a table stores a value absent from some rows as null
        raise UserError(f"{where}: '{column}' is missing (null); fix the row or drop it from the dataset")
    if not isinstance(value, str):
        raise UserError(
            f"{where}: '{column}' is not text ({type(value).__name__}); fix the row or drop it from the dataset"
        )
    if not value.strip():
        raise UserError(f"{where}: '{column}' is empty; fix the row or drop it from the dataset")
    return value


class PreferenceRows:
    """The contract's data methods for a task whose build() fills self._data with "sft", "train", "test" and "eval" rows."""

    _data: dict[str, list[dict]] | None

    def build(self) -> None:
        raise NotImplementedError

    def sft_data(self) -> list[dict]:
        """Demonstrations: prompts with human-written (TL;DR) or chosen (preference tasks) completions."""
        self.build()
        return list(self._data["sft"])

    def preference_data(self, split: str = "train") -> list[dict]:
        """Preference pairs: "train", or "test" (held out, for implicit-reward accuracy)."""
        if split not in ("train", "test"):
            raise ValueError(f"preference_data: split must be 'train' or 'test', got {split!r}")
        self.build()
        return list(self._data[split])

    def eval_prompts(self) -> list[dict]:
        """Held-out prompts, each with its reference completion (the judge's baseline) and what the judge reads as the prompt."""
        self.build()
        return list(self._data["eval"])


def keep_fitting(rows: list[dict], tokenizer, max_tokens: int, limit: int = 0) -> tuple[list[dict], int]:
    """The first `limit` rows (0: all) whose "prompt" is at most `max_tokens` tokens, and how many longer ones were passed.

    Rows are tokenized a chunk at a time and never further than needed to keep `limit`.
    """
    kept, dropped, position = [], 0, 0
    while position < len(rows) and not (limit and len(kept) == limit):
        size = min(CHUNK, limit - len(kept)) if limit else CHUNK
        chunk = rows[position : position + size]
        position += size
        ids = tokenizer([r["prompt"] for r in chunk], add_special_tokens=False)["input_ids"]
        for row, row_ids in zip(chunk, ids):
            if len(row_ids) > max_tokens:
                dropped += 1
            else:
                kept.append(row)
    return kept, dropped


def check_settings(config, counts: tuple[str, ...], section: str = "task", min_prompt_tokens: int = 8) -> None:
    """UserError for a negative row limit or a max_prompt_tokens too small to hold a prompt."""
    for key in counts:
        non_negative(config, section, key, "0 keeps all")
    at_least(config, section, "max_prompt_tokens", min_prompt_tokens, "shorter is too short for a prompt")


def check_context(tokenizer, max_prompt_tokens: int) -> None:
    """UserError if max_prompt_tokens leaves the model's context no room for a response."""
    context = getattr(tokenizer, "model_max_length", 0) or 0
    if context < 1e9 and max_prompt_tokens >= context:
        raise UserError(
            f"--set task.max_prompt_tokens={max_prompt_tokens}: the model's context is {context} tokens; "
            "leave room for the response"
        )
