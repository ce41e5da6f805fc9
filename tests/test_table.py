"""The comparison table as a pure function of run records (synthetic records with known answers)."""

from __future__ import annotations

import json

import pytest

from bench import records
from bench.stats import ci95_halfwidth
from bench.table import load_runs, markdown, rows


def _record(results, name, algo, seed, metrics, beta=0.1, complete=True):
    d = results / name
    config = {
        "task": {"name": "sentiment", "scale": "tiny"},
        "algo": {"name": algo, "beta": beta},
        "train": {"lr": 1e-4},
        "eval": {"temperature": 1.0},
        "data": {},
        "seed": seed,
    }
    records.atomic_write_json(d / "config.json", {"config": config})
    records.atomic_write_json(d / "metrics.json", metrics)
    if complete:
        (d / "COMPLETE").write_text("")


def _m(mean, se=0.1, n=10):
    return {"gold_reward": {"mean": mean, "se": se, "n": n}}


def test_seeds_aggregate_and_settings_split(tmp_path):
    _record(tmp_path, "a0", "dpo", 0, _m(0.6), beta=0.1)
    _record(tmp_path, "a1", "dpo", 1, _m(0.8), beta=0.1)
    _record(tmp_path, "b0", "dpo", 0, _m(0.9), beta=1.0)
    _record(tmp_path, "c0", "sft", 0, _m(0.5, se=0.05, n=20))
    _record(tmp_path, "d0", "sft", 1, _m(0.0), complete=False)  # ignored: no COMPLETE marker
    _record(tmp_path, "e0", "sft", 2, {"gold_reward": {"mean": 9.0, "se": 0, "n": 1}})
    (tmp_path / "e0" / "config.json").write_text(
        json.dumps({"config": {"task": {"name": "other"}, "algo": {"name": "sft"}}})
    )
    names, table = rows(load_runs(tmp_path, "sentiment"))
    assert names == ["gold_reward"]
    by = {(r["algo"], r["setting"]): r for r in table}
    assert set(by) == {("dpo", "beta=0.1"), ("dpo", "beta=1.0"), ("sft", "default")}
    two = by[("dpo", "beta=0.1")]["cells"]["gold_reward"]
    assert two["mean"] == pytest.approx(0.7) and two["n"] == "2 seeds"
    # SE over seeds of [0.6, 0.8] is 0.1; t(0.975, 1) = 12.706
    assert two["half"] == pytest.approx(ci95_halfwidth(0.1, 2))
    one = by[("sft", "default")]["cells"]["gold_reward"]
    assert one["n"] == "20 prompts" and one["half"] == pytest.approx(ci95_halfwidth(0.05, 20))
    text = markdown(tmp_path, "sentiment")
    assert "| sft | default | 1 | 0.500 ± 0.105 |" in text and "4 complete runs" in text


def test_no_runs_says_so(tmp_path):
    assert "No complete runs" in markdown(tmp_path, "sentiment")
