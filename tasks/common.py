"""Pieces the hub-backed tasks share (tldr, cnn-dm, hh, truthy, imdb): row checks, limits, the data methods.

A task reads the first rows of a split it needs, checks each (`checked_rows`, `text_field`),
skips what it cannot use and reads on past the first `limit` rows when it skipped some
(`load_usable`); prompts longer than the task allows are dropped (`keep_fitting`). Tasks whose
build() fills `self._data` with "sft", "train", "test" and "eval" rows (`pair_splits` makes them
from preference pairs) get the contract's data methods, the reference key and the starting
policy from `PreferenceRows`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Iterator

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
    stats: dict,
) -> list[dict]:
    """The usable rows normalise(rows) -> (usable rows, counts) keeps of the first `limit` rows of a split (0: all),
    reading the whole split when rows were skipped so that `limit` usable ones are kept where the split has them.

    The counts of the rows kept are added into `stats` (the task's record of what loading did).
    """
    rows = hub.load_rows(name, split, task=task, key=key, max_rows=limit)
    kept, counts = normalise(rows)
    if limit and len(kept) < limit and len(rows) == limit:
        kept, counts = normalise(hub.load_rows(name, split, task=task, key=key))
    for what, n in counts.items():
        stats[what] = stats.get(what, 0) + n
    return kept


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


# ---------------------------------------------------------------- row checks


def checked_rows(
    rows: list, columns: tuple[str, ...], *, task: str, name: str, key: str, split: str, start: int = 0
) -> Iterator[tuple[str, dict]]:
    """(where, row) for each row of a split, `where` naming the dataset, split and row for error messages.

    `start`: the position of rows[0] in the split. A row that is not a mapping of columns is a UserError.
    """
    for i, row in enumerate(rows, start):
        where = f"task {task}: {name} ({key}) split {split!r} row {i} (0-based)"
        if not isinstance(row, dict):
            raise UserError(f"{where}: not a row of columns {', '.join(columns)}")
        yield where, row


def require_column(row: dict, column: str, where: str, columns: tuple[str, ...]) -> None:
    """A UserError naming the dataset, split and row if `column` is not one of the row's columns."""
    if column not in row:
        raise UserError(
            f"{where}: column '{column}' is missing (the row has {', '.join(sorted(row)) or 'no columns'}); "
            f"this dataset needs columns {', '.join(columns)}"
        )


def text_field(row: dict, column: str, where: str, columns: tuple[str, ...]) -> str:
    """row[column] as a non-empty string, or a UserError naming the dataset, split and row."""
    require_column(row, column, where, columns)
    if row[column] is None:  # a table stores a value absent from some rows as null
        raise UserError(f"{where}: '{column}' is missing (null); fix the row or drop it from the dataset")
    value = optional_text_field(row, column, where)
    if not value.strip():
        raise UserError(f"{where}: '{column}' is empty; fix the row or drop it from the dataset")
    return value


def optional_text_field(row: dict, column: str, where: str) -> str:
    """row[column] as a string, "" when the column is absent, null or empty; a UserError when it holds anything else."""
    value = row.get(column)
    if value is not None and not isinstance(value, str):
        raise UserError(
            f"{where}: '{column}' is not text ({type(value).__name__}); fix the row or drop it from the dataset"
        )
    return value or ""


# ---------------------------------------------------------------- limits


def chunks_until(rows: list, kept: list, limit: int) -> Iterator[tuple[int, list]]:
    """(start, rows[start : start + size]) in order, CHUNK rows at a time, until the rows end or `kept` holds
    `limit` (0: no limit); a chunk is never larger than what `kept` still lacks, so no row is read past the limit."""
    position = 0
    while position < len(rows) and not (limit and len(kept) == limit):
        size = min(CHUNK, limit - len(kept)) if limit else CHUNK
        yield position, rows[position : position + size]
        position += size


def keep_fitting(rows: list[dict], tokenizer, max_tokens: int, limit: int = 0) -> tuple[list[dict], int]:
    """The first `limit` rows (0: all) whose "prompt" is at most `max_tokens` tokens, and how many longer were passed.

    Rows are tokenized a chunk at a time and never further than needed to keep `limit`.
    """
    kept, dropped = [], 0
    for _, chunk in chunks_until(rows, kept, limit):
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


# ---------------------------------------------------------------- the task


def pair_splits(
    train: list[dict], test: list[dict], max_test_pairs: int, query: Callable[[dict], str]
) -> dict[str, list[dict]]:
    """The task's rows from preference pairs: SFT demonstrations are the train pairs' chosen completions; every test
    pair gives an evaluation prompt, its chosen completion the reference and `query(pair)` what the judge reads; the
    first `max_test_pairs` test pairs (0: all) are the held-out pairs."""
    return {
        "sft": [{"prompt": p["prompt"], "completion": p["chosen"]} for p in train],
        "train": train,
        "test": test[: max_test_pairs or None],
        "eval": [{"prompt": p["prompt"], "reference": p["chosen"].strip(), "query": query(p)} for p in test],
    }


class PreferenceRows:
    """The contract's methods for a hub task whose build() fills self._data with "sft", "train", "test" and "eval"
    rows, and whose config names its starting policy in `model` (task.model).

    Subclasses set `name` and write build().
    """

    name: str
    _data: dict[str, list[dict]] | None

    def __init__(self, config, cache_dir: Path):
        config.check()
        self.config = config
        """The task's settings, checked."""
        self.cache_dir = Path(cache_dir)
        self._data = None

    def build(self) -> None:
        raise NotImplementedError

    def _tokenizer_for_prompts(self):
        """The model's tokenizer, checked to leave room for a response after task.max_prompt_tokens."""
        tokenizer = hub.load_tokenizer(self.config.model, task=self.name, key="task.model", cache_dir=self.cache_dir)
        check_context(tokenizer, self.config.max_prompt_tokens)
        return tokenizer

    @property
    def reference_key(self) -> str:
        return model_key(self.name, self.config.model)

    def load_policy(self):
        """A fresh copy of the starting policy (task.model), in eval mode, and its tokenizer."""
        return hub.load_causal_lm(self.config.model, task=self.name, key="task.model", cache_dir=self.cache_dir)

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
        """Held-out prompts, each with its reference completion (the judge's baseline) and what the judge reads."""
        self.build()
        return list(self._data["eval"])
