"""Resolving a run's configuration: plugin defaults, then `--set section.key=value` overrides.

Sections: `task`, `algo` (or the algorithm's own name, e.g. `dpo`), `train`, `eval`, `data`,
`run`, `eval_task` (with --eval-task), and one per evaluator that has options. A task may add
its own defaults for runs on it (`run_defaults`, e.g. tldr's dpo.beta=0.5); `--set` overrides
them. Unknown sections or keys and values of the wrong type are errors. The resolved
configuration is plain JSON; its hash is the run id.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from bench.checks import require
from bench.contracts import Generation, optional
from bench.errors import UserError
from bench.train import TrainConfig

MAX_INT = 2**53
"""Largest integer setting in absolute value: far above any count, length or seed, and still exact as a float."""


@dataclass
class DataConfig:
    """Replace a task's data with your own JSON Lines files (`--set data.preferences=pairs.jsonl`)."""

    preferences: str = ""
    """Training pairs, one {"prompt", "chosen", "rejected"} object per line."""
    test_preferences: str = ""
    """Held-out pairs in the same format (implicit-reward accuracy)."""
    sft: str = ""
    """Demonstrations, one {"prompt", "completion"} object per line."""
    eval_prompts: str = ""
    """Evaluation prompts, one {"prompt"} object (optionally "reference") per line."""

    def check(self, section: str = "data") -> None:
        """Each file given must exist and be a file (what is in it is checked by bench.data.read_rows)."""
        for f in fields(self):
            path = getattr(self, f.name)
            if path:
                p = Path(path).expanduser()
                require(not p.is_dir(), section, f.name, path, "a directory, not a file; pass a JSON Lines file")
                require(p.is_file(), section, f.name, path, "no such file; pass an existing JSON Lines file")


@dataclass
class RunOptions:
    """What a run keeps and measures (`--set run.KEY=VALUE`)."""

    save_model: bool = True
    """Save the trained policy in Hugging Face format under the run directory (model/)."""
    evaluators: str = ""
    """Comma-separated evaluator names; empty runs every installed evaluator that applies."""
    eval_checkpoints: int = 0
    """Intermediate policies to evaluate during training (evenly spaced); each adds a point to checkpoints.jsonl."""
    profile: bool = False
    """Profile the run (torch.profiler): a trace of a few training steps and per-operator tables of the fit,
    sampling and evaluation under profile/ in the run directory (bench.profiling)."""
    eval_task: str = ""
    """Evaluate on another task's prompts (e.g. cnn-dm for a policy trained on tldr); `--eval-task NAME` sets it,
    `--set eval_task.KEY=VALUE` its options."""

    def check(self, section: str = "run") -> None:
        """One line naming the first setting out of range."""
        # Each checkpoint samples and evaluates the policy: a cap keeps a slip of the keyboard from
        # planning millions of evaluations.
        require(
            0 <= self.eval_checkpoints <= MAX_EVAL_CHECKPOINTS,
            section,
            "eval_checkpoints",
            self.eval_checkpoints,
            f"must lie in [0, {MAX_EVAL_CHECKPOINTS}] (0 evaluates the final policy only)",
        )


MAX_EVAL_CHECKPOINTS = 10_000
"""Most intermediate policies a run evaluates (run.eval_checkpoints)."""

MOVED = {
    ("task", "max_prompts"): "eval.max_prompts",
    ("eval_task", "max_prompts"): "eval.max_prompts",
}
"""Settings that live in another section now, (section, key) -> where: the error names the new place."""

HARNESS_SECTIONS = {"train": TrainConfig, "eval": Generation, "data": DataConfig, "run": RunOptions}
"""The harness's own option sections (beside task, algo and one per evaluator), as `bench list -v` shows them."""


def parse_value(text: str, annotation: Any, where: str) -> Any:
    """Convert a command-line string to a dataclass field's type."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if text.lower() in ("none", "null") and len(args) < len(typing.get_args(annotation)):
            return None
        annotation = args[0]
    try:
        if annotation is bool:
            low = text.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if annotation is int:
            digits = text.strip().lstrip("+-")
            # More digits than 2**53 has: out of range without parsing (int() refuses thousands of digits).
            value = MAX_INT + 1 if digits.isdigit() and len(digits) > len(str(MAX_INT)) else int(text)
            if abs(value) > MAX_INT:
                raise UserError(f"--set {where}={text}: out of range; expected an integer between -2**53 and 2**53")
            return value
        if annotation is float:
            value = float(text)
            if not math.isfinite(value):  # inf and nan never make sense as a setting (1e999 reads as inf)
                raise UserError(f"--set {where}={text}: expected a finite number")
            return value
        if annotation is str:
            return text
    except ValueError:
        wanted = {bool: "true or false", int: "an integer", float: "a float"}.get(annotation)
        wanted = wanted or "a " + getattr(annotation, "__name__", str(annotation))
        raise UserError(f"--set {where}={text}: expected {wanted}") from None
    raise UserError(f"--set {where}: this option cannot be set from the command line")


def apply_overrides(obj: Any, overrides: dict[str, str], section: str) -> Any:
    """A copy of dataclass `obj` with string overrides applied, checked against the field types."""
    hints = typing.get_type_hints(type(obj))
    known = {f.name for f in fields(obj)}
    changes = {}
    for key, text in overrides.items():
        if key not in known:
            if (section, key) in MOVED:
                raise UserError(
                    f"--set {section}.{key}={text}: {section}.{key} is now {MOVED[section, key]}; "
                    f"use --set {MOVED[section, key]}={text}"
                )
            raise UserError(f"--set {section}.{key}: unknown key; known keys: {', '.join(sorted(known))}")
        changes[key] = parse_value(text, hints[key], f"{section}.{key}")
    out = dataclasses.replace(obj, **changes)
    # Every section's ranges in one place, its Config's check(), also when nothing was overridden.
    check = getattr(out, "check", None)
    if callable(check):
        check(section)
    return out


def split_sets(items: list[str]) -> dict[str, dict[str, str]]:
    """`["dpo.beta=0.5", "train.lr=1e-5"]` -> {"dpo": {"beta": "0.5"}, "train": {"lr": "1e-5"}}."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        key, eq, value = item.partition("=")
        section, dot, field = key.strip().partition(".")
        if not eq or not dot or not section or not field:
            raise UserError(f"--set {item}: expected SECTION.KEY=VALUE, e.g. --set dpo.beta=0.5")
        out.setdefault(section, {})[field] = value.strip()
    return out


def to_jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run_id(resolved: dict) -> str:
    """Content address of a run: the same resolved configuration always gets the same id."""
    canonical = json.dumps(resolved, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each dataclass field (read from the source), for `bench list --verbose`."""
    import ast
    import inspect
    import textwrap

    docs: dict[str, str] = {}
    # Base classes first, so a field a subclass redefines gets the subclass's text (e.g. an OnlineConfig's).
    for base in reversed([c for c in cls.__mro__ if dataclasses.is_dataclass(c)]):
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(base)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body
        for node, nxt in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(nxt, ast.Expr)
                and isinstance(getattr(nxt, "value", None), ast.Constant)
            ):
                docs[node.target.id] = str(nxt.value.value).strip()
    return docs


def train_config_for(algo_cls: type) -> TrainConfig:
    """TrainConfig with the algorithm's `train_defaults` applied (before any --set train.*)."""
    return dataclasses.replace(TrainConfig(), **optional(algo_cls, "algorithm", "train_defaults"))


def generation_for(task_cls: type) -> Generation:
    """A copy of the task's `generation` defaults (before any --set eval.*)."""
    return dataclasses.replace(optional(task_cls, "task", "generation"))
