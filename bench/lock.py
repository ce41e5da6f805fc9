"""One writer per run, one builder per artifact: OS locks on files, held while the work is done.

A run's lock is results/.partial/<run>.lock, held while the run is built (`run_lock`); a cached
artifact's is a hidden file beside it, held while it is built (`file_lock`, see bench.artifacts).
The lock is `flock` on an open file, so it dies with its process: a process killed with -9 leaves
at most an unlocked file behind, and the next command takes it. The holder deletes the file when
it is done; a process that was waiting on the deleted file notices (its inode is no longer the one
at the path) and locks the new file instead, so two processes never both think they hold it.
Linux emulates flock over NFS with POSIX record locks, so sweeps on a shared filesystem
and Slurm jobs with the same config serialise the same way.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from bench.errors import UserError
from bench.records import PARTIAL


class RunInProgress(Exception):
    """Raised by a lock taken with wait=False (`run_lock(wait=False)`) when another process holds it."""


def lock_path(results: Path, name: str) -> Path:
    return Path(results) / PARTIAL / f"{name}.lock"


def _holder(fd: int) -> str:
    """The pid the holder wrote into the lock file, for the waiting message."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return "unknown"
    return text or "unknown"


def _acquire(path: Path, wait: bool, on_wait: Callable[[str], None]) -> int:
    """Lock `path` (created, with its directory, if missing) and write our pid into it; returns its descriptor.

    Held by another process: wait=False raises RunInProgress at once; wait=True calls on_wait(holder's pid)
    once and blocks until it is free. Directories that cannot be created or written raise OSError.
    """
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:
            continue  # another process removed an empty directory between our mkdir and open
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                os.close(fd)
                raise RunInProgress(path.stem) from None
            on_wait(_holder(fd))
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            except BaseException:
                _release(path, fd)
                raise
            return fd
        os.close(fd)  # we locked a file its last holder had already deleted: lock the one at the path now


def _release(path: Path, fd: int) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    os.close(fd)


@contextmanager
def file_lock(path: Path, wait: bool = True, on_wait: Callable[[str], None] = lambda pid: None) -> Iterator[None]:
    """Hold the lock file `path` for the duration of the block (see `_acquire` for wait and on_wait)."""
    path = Path(path)
    fd = _acquire(path, wait, on_wait)
    try:
        yield
    finally:
        _release(path, fd)


@contextmanager
def run_lock(results: Path, name: str, wait: bool = True, echo: Callable[[str], None] = print) -> Iterator[None]:
    """Hold the lock of run `name` under `results` for the duration of the block.

    wait=True blocks (saying so once) until the other writer is done; wait=False raises
    RunInProgress at once instead.
    """
    path = lock_path(results, name)

    def waiting(pid: str) -> None:
        echo(f"{name}: in progress in another process (pid {pid}); waiting for it to finish")

    try:
        fd = _acquire(path, wait, waiting)
    except OSError as exc:
        raise UserError(
            f"--results {results}: cannot write {path} ({exc.strerror}); choose a directory you can write to"
        ) from None
    try:
        yield
    finally:
        _release(path, fd)
        try:
            path.parent.rmdir()  # only when empty: no other run is in progress or resumable
        except OSError:
            pass
