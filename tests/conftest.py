"""Shared fixtures: one tiny build of the embedded task per test session, local fixtures of the hub
tasks, and a CLI runner."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
TINY = ["--set", "task.scale=tiny"]
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """Task artifacts for the whole session; the tiny task is built here once."""
    path = tmp_path_factory.mktemp("cache")
    from bench import registry

    task_cls = registry.load("task", "sentiment")
    task = task_cls(task_cls.Config(scale="tiny"), path)
    task.build()
    return path


def run_cli(
    args: list[str], cache: Path, env_extra: dict | None = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    """`bench ARGS` in a subprocess, as a user runs it."""
    env = {**os.environ, "BENCH_CACHE_DIR": str(cache), "OMP_WAIT_POLICY": "PASSIVE", **(env_extra or {})}
    script = Path(sys.executable).parent / "bench"  # the installed console script, as a user runs it
    return subprocess.run(
        [str(script), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        cwd=REPO,
    )


@pytest.fixture(scope="session")
def task_settings(tmp_path_factory, cache_dir) -> dict[str, dict]:
    """`--set task.KEY=VALUE` settings that run each registered task small and offline.

    The embedded task runs at its tiny scale; every other task must ship `tests/fixtures_<task>.py`
    whose `make(root)` writes local copies of its data and models (hub formats) and returns the
    settings pointing at them. A task without one fails the contract tests.
    """
    from bench import registry

    root = tmp_path_factory.mktemp("hub-fixtures")
    settings = {}
    for name in registry.names("task"):
        if name == "sentiment":
            settings[name] = {"scale": "tiny"}
            continue
        module = importlib.import_module("fixtures_" + name.replace("-", "_"))
        settings[name] = {k: str(v) for k, v in module.make(root / name).items()}
    return settings


@pytest.fixture(scope="session")
def good_record(cache_dir, tmp_path_factory) -> Path:
    """One complete record (tiny sft run, no saved model), which fault tests copy beside their bad input."""
    results = tmp_path_factory.mktemp("good-record")
    proc = run_cli(
        [
            "run",
            "--algo",
            "sft",
            "--task",
            "sentiment",
            *TINY,
            "--set",
            "run.save_model=false",
            "--results",
            str(results),
        ],
        cache_dir,
    )
    assert proc.returncode == 0, proc.stderr
    (record,) = [p for p in results.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return record
