"""Run records on disk: atomic writes, the run directory layout, provenance.

results/<task>-<algo>-<run id>/
    config.json      resolved config, package versions, git revision, device
    train_log.jsonl  one row of training metrics per logging window
    samples.jsonl    prompt, completion and per-sample evaluator values
    metrics.json     aggregates, each {"mean", "se", "n", ...}
    cost.json        what the run spent: wall time per phase, preference labels, tokens, FLOPs
    checkpoints.jsonl  metrics of intermediate policies (run.eval_checkpoints) and of the final one
    model/           the trained policy in Hugging Face format (unless run.save_model=false)
    COMPLETE         written last

A run is built under results/.partial/<name>/ and renamed into place once COMPLETE is written,
so results/ never shows a half-written run.

Readers go through `load_record` (or `readable_runs`), which checks every file of a complete run
against the schema below and names the file and what is wrong in one RecordError; a bad record
is skipped with a one-line warning, so it cannot hide the others.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable

from bench.errors import UserError
from bench.io import atomic_write_text

COMPLETE = "COMPLETE"
PARTIAL = ".partial"
PACKAGES = (
    "alignment-bench",
    "torch",
    "transformers",
    "tokenizers",
    "accelerate",
    "numpy",
    "scipy",
    "scikit-learn",
    "pandas",
    "datasets",
    "trl",
    "peft",
    "gguf",
    "openai",
)


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def processor() -> str:
    """The CPU model (as /proc/cpuinfo names it on Linux): results are bitwise reproducible on the same one."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_revision() -> str:
    """The revision of the source tree bench/ was loaded from, '+dirty' when it has changes."""
    src = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True, timeout=10)
        if rev.returncode != 0:
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=src,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return rev.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_name(task: str, algo: str, rid: str) -> str:
    return f"{task}-{algo}-{rid}"


def is_complete(run_dir: Path) -> bool:
    return (Path(run_dir) / COMPLETE).exists()


def complete_runs(results: Path) -> list[Path]:
    """Complete run directories under `results`, sorted by name; anything else is ignored."""
    results = Path(results)
    if not results.is_dir():
        return []
    return sorted(p for p in results.iterdir() if p.is_dir() and not p.name.startswith(".") and is_complete(p))


def publish(partial: Path, final: Path) -> None:
    """Write COMPLETE last, then move the finished run into results/ in one rename."""
    atomic_write_text(Path(partial) / COMPLETE, "")
    if final.exists():  # an incomplete leftover under the final name (older layout, manual copy)
        shutil.rmtree(final)
    os.replace(partial, final)


def discard(partial: Path) -> None:
    shutil.rmtree(partial, ignore_errors=True)
    parent = Path(partial).parent
    if parent.name == PARTIAL and parent.exists() and not any(parent.iterdir()):
        parent.rmdir()


# ---------------------------------------------------------------- reading complete records


class RecordError(UserError):
    """A file of a run record that cannot be read or does not match the schema: `path: problem`, one line."""

    def __init__(self, path: Path, problem: str):
        self.path = Path(path)
        self.problem = " ".join(str(problem).splitlines())  # a warning line stays one line
        super().__init__(f"{self.path}: {self.problem}")


NUMBER = (int, float)
"""A JSON number; NaN and infinities included (json writes them), true/false not."""


class Null:
    """A key that must be present and may be null."""

    def __init__(self, spec):
        self.spec = spec


class Opt(Null):
    """A key that may be absent or null."""


def is_aggregate(value) -> bool:
    """An aggregate of metrics.json ({"mean", "se", "n", ...}), as opposed to a count such as n_prompts."""
    return isinstance(value, dict) and "mean" in value


def _metrics_spec(value, where: str) -> None:
    """metrics.json and a checkpoint's metrics: an object whose aggregates match AGGREGATE."""
    _check(value, dict, where)
    for key, agg in value.items():
        if is_aggregate(agg):
            _check(agg, AGGREGATE, _join(where, key))


# The schema, written once: what the readers (table, report) rely on; other keys are free.
# A dict is an object with those keys, a type its JSON type, a function a check of its own.
RUN_CONFIG = {
    "task": {"name": str},
    "algo": {"name": str},
    "seed": int,
    "train": dict,
    "eval": dict,
    "data": dict,
    "run": Opt({"eval_task": Opt(str)}),
}
CONFIG_FILE = {"config": RUN_CONFIG}
AGGREGATE = {"mean": Null(NUMBER), "se": Null(NUMBER), "n": int, "unit": Opt(str), "estimator": Opt(str)}
METRICS = _metrics_spec
SAMPLE_ROW = {"prompt_index": int, "prompt": str, "completion": str}
CHECKPOINT_ROW = {"step": int, "total_steps": Opt(int), "final": Opt(bool), "metrics": METRICS}
TRAIN_LOG_ROW = {"step": Opt(NUMBER)}
COST = dict
JSONL_FILES = {"samples.jsonl": SAMPLE_ROW, "checkpoints.jsonl": CHECKPOINT_ROW, "train_log.jsonl": TRAIN_LOG_ROW}
"""Row schemas; each file may be absent (a run that wrote no such rows)."""

_WANTED = {str: "a string", int: "an integer", bool: "true or false", dict: "an object", NUMBER: "a number"}


class _Mismatch(Exception):
    """Where in a file's JSON the schema fails, and how (joined to the path by the caller)."""


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else str(key)


def _got(value) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is(value, kind) -> bool:
    if kind is bool or kind is dict:
        return isinstance(value, kind)
    return isinstance(value, kind) and not isinstance(value, bool)  # True is an int to Python, not to the schema


def _check(value, spec, where: str = "") -> None:
    if isinstance(spec, Null):
        if value is None:
            return
        spec = spec.spec
    if isinstance(spec, dict):
        _check(value, dict, where)
        for key, sub in spec.items():
            if key in value:
                _check(value[key], sub, _join(where, key))
            elif not isinstance(sub, Opt):
                raise _Mismatch(f"missing {_join(where, key)!r}")
    elif callable(spec) and not isinstance(spec, type):
        spec(value, where)
    elif not _is(value, spec):
        wanted = _WANTED[spec]
        raise _Mismatch(
            f"{where!r} should be {wanted}, got {_got(value)}" if where else f"should be {wanted}, got {_got(value)}"
        )


def _read_text(path: Path, rows: bool = False) -> str | None:
    """The file as text; None when it does not exist. `rows`: name a bad byte's line rather than its offset."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RecordError(path, f"cannot be read ({exc.strerror or exc})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        byte = f"byte 0x{data[exc.start]:02x}"
        if rows:
            line = data.count(b"\n", 0, exc.start) + 1
            raise RecordError(path, f"line {line}: not UTF-8 text ({byte})") from None
        raise RecordError(path, f"not UTF-8 text ({byte} at offset {exc.start})") from None


def _parse(text: str, row: bool = False) -> Any:
    """JSON, or _Mismatch saying why not; where in a file (line) or in a row (column)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"column {exc.colno}" if row else f"line {exc.lineno}"
        end = ""
        # Stopping at the very end is what a write cut short looks like; so is a string still open there.
        if exc.pos >= len(text.rstrip()) or exc.msg.startswith("Unterminated string"):
            end = f", at the end of the {'line' if row else 'file'}: cut short?"
        raise _Mismatch(f"not valid JSON ({where}: {exc.msg}{end})") from None
    except RecursionError:
        raise _Mismatch("not valid JSON (nested too deeply to read)") from None
    except ValueError as exc:  # e.g. an integer too long to convert
        raise _Mismatch(f"not valid JSON ({str(exc).split(';')[0]})") from None


def _read_json(path: Path, spec, required: bool = True) -> Any:
    text = _read_text(path)
    if text is None:
        if required:
            raise RecordError(path, "missing")
        return None
    if not text.strip():
        raise RecordError(path, "empty file")
    try:
        value = _parse(text)
        _check(value, spec)
    except _Mismatch as exc:
        raise RecordError(path, str(exc)) from None
    return value


def _read_rows(path: Path, spec, keep: bool = True) -> list[dict] | None:
    """Rows of a JSON-lines file (blank lines skipped), each checked; [] when there is no file."""
    text = _read_text(path, rows=True)
    rows: list[dict] = []
    for number, line in enumerate((text or "").split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = _parse(line, row=True)
            _check(row, spec)
        except _Mismatch as exc:
            raise RecordError(path, f"line {number}: {exc}") from None
        if keep:
            rows.append(row)
    return rows if keep else None


def _nan_for_null(metrics: dict) -> dict:
    """Aggregates with a null mean or se read as NaN, which every reader already treats as 'no value'."""
    return {
        k: {**v, **{f: math.nan for f in ("mean", "se") if v.get(f) is None}} if is_aggregate(v) else v
        for k, v in metrics.items()
    }


@dataclass
class Record:
    """One complete run, every file read and checked against the schema (see load_record)."""

    dir: Path
    config: dict
    """The resolved config (record["config"])."""
    record: dict
    """config.json as written: the resolved config, package versions, git revision, device, command."""
    metrics: dict
    samples: list[dict] | None
    """samples.jsonl rows; None when loaded with keep_samples=False (then checked, not kept)."""
    checkpoints: list[dict]
    train_log: list[dict]
    cost: dict
    """cost.json; {} for a run that wrote none."""


def read_config(run_dir: Path) -> dict:
    """config.json of a run, checked; RecordError when it does not match CONFIG_FILE."""
    return _read_json(Path(run_dir) / "config.json", CONFIG_FILE)


def read_samples(run_dir: Path) -> list[dict]:
    """samples.jsonl of a run, every row checked; RecordError naming the line that does not match SAMPLE_ROW."""
    return _read_rows(Path(run_dir) / "samples.jsonl", SAMPLE_ROW)


def load_record(run_dir: Path, keep_samples: bool = True) -> Record:
    """Read and check every file of a complete run; the first problem found raises RecordError.

    config.json and metrics.json must be there; the other files may be absent. keep_samples=False
    still checks samples.jsonl but does not keep its rows, for readers that only need aggregates.
    """
    run_dir = Path(run_dir)
    record = read_config(run_dir)
    metrics = _nan_for_null(_read_json(run_dir / "metrics.json", METRICS))
    rows = {
        name: _read_rows(run_dir / name, spec, keep=keep_samples or name != "samples.jsonl")
        for name, spec in JSONL_FILES.items()
    }
    cost = _read_json(run_dir / "cost.json", COST, required=False) or {}
    checkpoints = [{**row, "metrics": _nan_for_null(row["metrics"])} for row in rows["checkpoints.jsonl"]]
    return Record(
        dir=run_dir,
        config=record["config"],
        record=record,
        metrics=metrics,
        samples=rows["samples.jsonl"],
        checkpoints=checkpoints,
        train_log=rows["train_log.jsonl"],
        cost=cost,
    )


def evaluated_task(config: dict) -> str:
    """The task a run is evaluated on, under which tables and reports list it: --eval-task, else its own."""
    return (config.get("run") or {}).get("eval_task") or config["task"]["name"]


def skip_warning(run_dir: Path, exc: RecordError) -> str:
    """The one line that says a record is left out, which file is wrong, and what to do."""
    try:
        where = f"{run_dir}: {exc.path.relative_to(run_dir)}: {exc.problem}"
    except ValueError:
        where = f"{run_dir}: {exc}"
    return f"warning: skipping {where}; delete it or rerun its command"


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr)  # looked up per call: the CLI's stderr may be redirected


def readable_runs(
    results: Path, task: str | None = None, warn: Callable[[str], None] | None = None, keep_samples: bool = True
) -> list[Record]:
    """The complete runs under `results` (evaluated on `task`, when given) that pass the schema, sorted by name.

    A complete run that cannot be read costs one line through `warn` (default: stderr) and is left
    out, so one bad record does not hide the others. Runs of another task are passed over after
    reading their config.json alone.
    """
    warn = warn or _to_stderr
    out = []
    for run_dir in complete_runs(results):
        try:
            if task is not None and evaluated_task(read_config(run_dir)["config"]) != task:
                continue
            out.append(load_record(run_dir, keep_samples=keep_samples))
        except RecordError as exc:
            warn(skip_warning(run_dir, exc))
    return out
