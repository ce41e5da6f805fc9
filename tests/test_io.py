"""Atomic writes: a reader sees the old file or the new one, never half of one, and a failure leaves nothing."""

from __future__ import annotations

import errno
import os

import pytest

from bench import io


def test_atomic_write_replaces_the_whole_file(tmp_path):
    path = tmp_path / "sub" / "f.json"
    io.atomic_write_json(path, {"b": 1, "a": [1, 2]})
    assert path.read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'
    io.write_jsonl(path, [{"x": 1}, {"y": "é"}])
    assert io.read_jsonl(path) == [{"x": 1}, {"y": "é"}]
    io.append_jsonl(path, {"z": 2})
    assert io.read_jsonl(path)[-1] == {"z": 2}
    assert sorted(p.name for p in path.parent.iterdir()) == ["f.json"]


@pytest.mark.parametrize("stage", ["write", "replace"])
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(stage, tmp_path, monkeypatch):
    path = tmp_path / "f.txt"
    path.write_text("old")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(io.os, "fsync" if stage == "write" else "replace", full)
    with pytest.raises(OSError, match="No space left"):
        io.atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]
