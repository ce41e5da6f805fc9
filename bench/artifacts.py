"""Task artifacts built once and cached: built in a temporary directory, renamed into place at the end.

An interrupted build therefore never looks complete, and temporary directories left by killed
processes are removed on the next build. One process builds an artifact at a time: the builder
holds a lock beside it (bench.lock), and a second process that needs the same artifact, say the
other runs of a `bench sweep --jobs N` starting together, waits for it and then uses it. In a run
of several processes (accelerate launch) the main one builds and the others wait for it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Callable

from bench import distributed
from bench.errors import UserError
from bench.lock import file_lock


def content_key(identity: dict) -> str:
    """The 12-hex-digit hash of a build's identity (its JSON) that names its artifact directory."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


def _remove_abandoned(root: Path, key: str) -> None:
    """Delete temporary build directories of this key left by processes that no longer run."""
    for tmp in root.glob(f".tmp-{key}-*"):
        try:
            os.kill(int(tmp.name.rsplit("-", 1)[1]), 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (ValueError, PermissionError):
            pass


def _note(line: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(line, file=sys.stderr)  # beside a progress bar without breaking it


def build_once(artifact_dir: Path, build: Callable[[Path], dict], echo: Callable[[str], None] = _note) -> Path:
    """Run `build(tmp_dir) -> build_log` unless `artifact_dir` exists; the log lands in build_log.json.

    Another process building the same artifact is waited for (echo says so once), and its artifact used.
    In a run of several processes (accelerate launch) the main one builds, by itself, exactly as a
    one-process run would, while the others wait for it; then all of them use the artifact.
    """
    artifact_dir = Path(artifact_dir)
    if distributed.world_size() > 1:
        distributed.run_on_main(lambda: build_once(artifact_dir, build, echo))
        if not artifact_dir.is_dir():
            raise UserError(
                f"{artifact_dir}: built by the main process but not visible here; put the cache "
                "(--cache or BENCH_CACHE_DIR) on a filesystem that every process shares"
            )
        return artifact_dir
    if artifact_dir.is_dir():
        return artifact_dir
    root, key = artifact_dir.parent, artifact_dir.name
    root.mkdir(parents=True, exist_ok=True)

    def waiting(pid: str) -> None:
        echo(f"{artifact_dir}: being built by another process (pid {pid}); waiting for it")

    with file_lock(root / f".{key}.lock", on_wait=waiting):
        if artifact_dir.is_dir():  # built while we waited
            return artifact_dir
        _remove_abandoned(root, key)
        tmp = root / f".tmp-{key}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            log = build(tmp)
            (tmp / "build_log.json").write_text(json.dumps(log, indent=1, ensure_ascii=False))
            try:
                os.rename(tmp, artifact_dir)
            except OSError:
                if not artifact_dir.is_dir():
                    raise
                # Built meanwhile by a process that took no lock (an older version of the suite): theirs is the same.
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return artifact_dir
