"""Task artifacts built once and cached: built in a temporary directory, renamed into place at the end.

An interrupted build therefore never looks complete, two processes building the same artifacts
do not corrupt each other (the second rename loses and is discarded), and temporary directories
left by killed processes are removed on the next build.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable


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


def build_once(artifact_dir: Path, build: Callable[[Path], dict]) -> Path:
    """Run `build(tmp_dir) -> build_log` unless `artifact_dir` exists; the log lands in build_log.json."""
    artifact_dir = Path(artifact_dir)
    if artifact_dir.is_dir():
        return artifact_dir
    root, key = artifact_dir.parent, artifact_dir.name
    root.mkdir(parents=True, exist_ok=True)
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
            shutil.rmtree(tmp, ignore_errors=True)  # another process finished the same build first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return artifact_dir
