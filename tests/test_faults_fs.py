"""Fault injection on the filesystem and on what a run loads from disk: unusable paths, a full disk,
corrupted or crafted checkpoints, a tampered gold classifier. Each ends in one line and exit 2 with
nothing half-written, and the records already there are still listed.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from conftest import TINY
from faults import assert_still_listed, assert_user_error, bench_main, entries, seed_results

DPO = [
    "run",
    "--algo",
    "dpo",
    "--task",
    "sentiment",
    *TINY,
    "--set",
    "train.max_steps=4",
    "--set",
    "train.checkpoint_every=2",
    "--set",
    "run.save_model=false",
]


def _name(args: list[str], cache: Path) -> str:
    from bench.runner import RunSpec, resolve

    sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    return resolve(RunSpec(algo=args[2], task=args[4], sets=sets), cache).name


class Crafted:
    """Unpickling this runs code: it creates `marker`."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def _partial_with_checkpoint(results: Path, name: str, payload) -> Path:
    checkpoints = results / ".partial" / name / "checkpoints"
    checkpoints.mkdir(parents=True)
    if isinstance(payload, bytes):
        (checkpoints / "train_state.pt").write_bytes(payload)
    else:
        torch.save(payload, checkpoints / "train_state.pt")
    (checkpoints / "train_state.json").write_text(json.dumps({"step": 2}))
    return checkpoints


def test_results_is_a_file(cache_dir, tmp_path):
    path = tmp_path / "results"
    path.write_text("not a directory")
    code, _, err = bench_main([*DPO, "--results", path], cache_dir)
    assert_user_error(code, err, "--results")
    assert "is a file" in err and path.read_text() == "not a directory"


def test_results_below_a_file(cache_dir, tmp_path):
    (tmp_path / "file").write_text("x")
    code, _, err = bench_main([*DPO, "--results", tmp_path / "file" / "results"], cache_dir)
    assert_user_error(code, err, "lies below the file")


def test_results_not_writable(cache_dir, tmp_path, good_record, monkeypatch):
    results = tmp_path / "results"
    before = seed_results(results, [good_record])
    monkeypatch.setattr("bench.runner.os.access", lambda path, mode: False)  # root ignores chmod: simulate it
    code, _, err = bench_main([*DPO, "--results", results], cache_dir)
    assert_user_error(code, err, "not writable", results, before)


@pytest.mark.parametrize("victim", ["config.json", "samples.jsonl", "metrics.json", "cost.json"])
def test_disk_full_while_writing_the_record(victim, cache_dir, tmp_path, good_record, monkeypatch):
    from bench import io

    results = tmp_path / "results"
    before = seed_results(results, [good_record])
    write = io.atomic_write_bytes

    def full(path, data):
        if Path(path).name == victim:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return write(path, data)

    monkeypatch.setattr(io, "atomic_write_bytes", full)
    code, _, err = bench_main([*DPO, "--results", results], cache_dir)
    assert_user_error(code, err, ("No space left on device",), results, before)
    assert victim in err
    monkeypatch.undo()
    assert_still_listed(results, cache_dir, [good_record])


def test_cache_below_a_file(tmp_path, good_record):
    (tmp_path / "file").write_text("x")
    results = tmp_path / "results"
    before = seed_results(results, [good_record])
    code, _, err = bench_main([*DPO, "--results", results, "--cache", tmp_path / "file" / "cache"], tmp_path / "unused")
    assert_user_error(code, err, "Not a directory", results, before)


def test_report_out_is_a_file(cache_dir, tmp_path, good_record):
    results = tmp_path / "results"
    seed_results(results, [good_record])
    out = tmp_path / "report"
    out.write_text("keep me")
    code, _, err = bench_main(["report", "--task", "sentiment", "--results", results, "--out", out], cache_dir)
    assert_user_error(code, err, "--out")
    assert out.read_text() == "keep me"


def test_report_out_below_a_file(cache_dir, tmp_path, good_record):
    results = tmp_path / "results"
    seed_results(results, [good_record])
    (tmp_path / "file").write_text("x")
    code, _, err = bench_main(
        ["report", "--task", "sentiment", "--results", results, "--out", tmp_path / "file" / "report"], cache_dir
    )
    assert_user_error(code, err, "Not a directory")


def test_report_out_not_writable(cache_dir, tmp_path, good_record, monkeypatch):
    from bench import io

    results = tmp_path / "results"
    seed_results(results, [good_record])
    out = tmp_path / "report"

    def denied(path, data):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr(io, "atomic_write_bytes", denied)
    code, _, err = bench_main(["report", "--task", "sentiment", "--results", results, "--out", out], cache_dir)
    assert_user_error(code, err, "Permission denied")
    assert not [p for p in out.rglob("*") if p.suffix in (".md", ".html", ".csv", ".tex")]


def test_a_crafted_checkpoint_is_refused_not_executed(cache_dir, tmp_path, good_record):
    results = tmp_path / "results"
    before = seed_results(results, [good_record])
    marker = tmp_path / "code-ran"
    _partial_with_checkpoint(results, _name(DPO, cache_dir), {"model": Crafted(marker), "step": 2})
    code, _, err = bench_main([*DPO, "--results", results], cache_dir)
    assert_user_error(code, err, "refused to load", results, before)
    assert "train_state.pt" in err
    assert not marker.exists()
    assert_still_listed(results, cache_dir, [good_record])


def test_a_corrupted_checkpoint_is_one_line(cache_dir, tmp_path, good_record):
    results = tmp_path / "results"
    before = seed_results(results, [good_record])
    _partial_with_checkpoint(results, _name(DPO, cache_dir), b"\x00garbage, not a torch file")
    code, _, err = bench_main([*DPO, "--results", results], cache_dir)
    assert_user_error(code, err, "unreadable checkpoint", results, before)


def test_an_unreadable_checkpoint_state_starts_the_run_again(cache_dir, tmp_path):
    checkpoints = _partial_with_checkpoint(tmp_path, _name(DPO, cache_dir), {"step": 2})
    (checkpoints / "train_state.json").write_text("{garbage")
    code, out, err = bench_main([*DPO, "--results", tmp_path], cache_dir)
    assert code == 0, err
    assert "unreadable checkpoint state; starting the run again" in out
    assert len([p for p in entries(tmp_path) if "/" not in p and not p.startswith(".")]) == 1


def test_a_tampered_gold_classifier_is_refused(cache_dir, tmp_path, good_record):
    cache = tmp_path / "cache"
    shutil.copytree(cache_dir, cache)
    (classifier,) = cache.glob("sentiment/*/gold_reward.joblib")
    classifier.write_bytes(classifier.read_bytes() + b"tampered")
    results = tmp_path / "results"
    before = seed_results(results, [good_record])
    code, _, err = bench_main([*DPO, "--results", results], cache)
    assert_user_error(code, err, "is not the file the task build wrote", results, before)


def test_a_checkpoint_state_without_its_checkpoint_starts_the_run_again(cache_dir, tmp_path):
    checkpoints = _partial_with_checkpoint(tmp_path, _name(DPO, cache_dir), {"step": 2})
    (checkpoints / "train_state.pt").unlink()  # e.g. an older layout's checkpoint under another name
    code, out, err = bench_main([*DPO, "--results", tmp_path], cache_dir)
    assert code == 0, err
    assert "is missing; starting the run again" in out
    (record,) = [tmp_path / p for p in entries(tmp_path) if "/" not in p and not p.startswith(".")]
    steps = [json.loads(line)["step"] for line in (record / "train_log.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # no step logged twice
