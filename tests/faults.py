"""Helpers of the fault-injection suite (tests/test_faults_*.py): run `bench` on a bad input and check
that it failed the way the README promises.

Every case of the catalogue asserts the same things: exit status 2, at most three lines on stderr,
the first one `error: ...` naming the problem, no traceback, nothing new under results/ (no run
directory, no `.partial/` entry), and the records that were there before still listed by
`bench table`. Most cases call the CLI in this process (`bench_main`, fast); `run_cli` in conftest
runs the installed console script in a subprocess where the process boundary matters.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
from pathlib import Path

MAX_ERROR_LINES = 3


def bench_main(args: list[str], cache: Path) -> tuple[int, str, str]:
    """`bench ARGS` in this process: (exit status, stdout, stderr)."""
    from bench.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved = os.environ.get("BENCH_CACHE_DIR")
    os.environ["BENCH_CACHE_DIR"] = str(cache)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([str(a) for a in args])
    finally:
        if saved is None:
            os.environ.pop("BENCH_CACHE_DIR", None)
        else:
            os.environ["BENCH_CACHE_DIR"] = saved
    return code, out.getvalue(), err.getvalue()


def entries(results: Path) -> set[str]:
    """Everything under a results directory, as relative paths (hidden entries included)."""
    results = Path(results)
    if not results.is_dir():
        return set()
    return {str(p.relative_to(results)) for p in results.rglob("*")}


def seed_results(results: Path, records: list[Path]) -> set[str]:
    """Copy complete run records into `results`; returns what it then holds (to compare after a failure)."""
    results = Path(results)
    results.mkdir(parents=True, exist_ok=True)
    for record in records:
        shutil.copytree(record, results / Path(record).name)
    return entries(results)


PROGRESS = re.compile(r"\d+%\||\d+/\d+ \[|it/s\]|s/it\]")


def visible_lines(err: str) -> list[str]:
    """The lines a terminal shows at the end, progress bars left out: what a carriage return overwrote is gone."""
    shown = (line.rsplit("\r", 1)[-1].strip() for line in err.split("\n"))
    return [line for line in shown if line and not PROGRESS.search(line)]


def assert_user_error(
    code: int, err: str, fragment: str | tuple[str, ...], results: Path | None = None, before: set[str] | None = None
) -> str:
    """The failure the README promises; returns the error line. `fragment`: text it must contain (any of a tuple)."""
    lines = visible_lines(err)
    assert code == 2, f"exit {code}; stderr:\n{err}"
    assert "Traceback" not in err, err
    assert 1 <= len(lines) <= MAX_ERROR_LINES, err
    error = next((line for line in lines if line.startswith("error: ")), None)
    assert error is not None, err
    wanted = (fragment,) if isinstance(fragment, str) else fragment
    assert any(f in error for f in wanted), f"none of {wanted} in {error!r}"
    if results is not None:
        assert entries(results) == (before or set()), sorted(entries(results) ^ (before or set()))
    return error


def assert_still_listed(results: Path, cache: Path, records: list[Path], task: str = "sentiment") -> None:
    """`bench table` still shows every record that was there before the failed command."""
    code, out, err = bench_main(["table", "--task", task, "--results", results], cache)
    assert code == 0, err
    assert f"{len(records)} complete runs" in out, out
    for record in records:
        assert Path(record).name.split("-")[1] in out, out
