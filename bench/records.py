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
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Iterable

COMPLETE = "COMPLETE"
PARTIAL = ".partial"
PACKAGES = ("alignment-bench", "torch", "transformers", "tokenizers", "accelerate", "numpy", "scipy",
            "scikit-learn", "pandas", "datasets", "trl", "peft", "gguf", "openai")


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def git_revision() -> str:
    """The revision of the source tree bench/ was loaded from, '+dirty' when it has changes."""
    src = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True, timeout=10)
        if rev.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=src,
                               capture_output=True, text=True, timeout=10).stdout.strip()
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
