"""The comparison table as a pure function of run records (synthetic records with known answers)."""

from __future__ import annotations

import json

import pytest

from bench import io as bench_io
from bench.stats import ci95_halfwidth
from bench.table import groups, load_runs, markdown, metric_names


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
    bench_io.atomic_write_json(d / "config.json", {"config": config})
    bench_io.atomic_write_json(d / "metrics.json", metrics)
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
    runs = load_runs(tmp_path, "sentiment")
    names = metric_names(runs)
    table = groups(runs, names)
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


def test_a_cell_covers_the_runs_that_hold_the_metric_as_an_aggregate(tmp_path):
    _record(tmp_path, "a0", "dpo", 0, {**_m(0.6), "kl": {"mean": 1.0, "se": 0.2, "n": 8}, "pairs": 5})
    _record(tmp_path, "a1", "dpo", 1, {**_m(0.8), "kl": 3.0, "pairs": {"mean": 0.5, "se": 0.1, "n": 4}})
    runs = load_runs(tmp_path, "sentiment")
    assert metric_names(runs) == ["gold_reward", "kl", "pairs"]
    (row,) = groups(runs, metric_names(runs))
    assert [r["dir"].name for r in row["runs"]] == ["a0", "a1"]
    # Seed 1's kl is a plain number and seed 0's pairs a count: each cell is the other seed's aggregate alone.
    kl = row["cells"]["kl"]
    assert kl["n"] == "8 prompts" and kl["half"] == pytest.approx(ci95_halfwidth(0.2, 8))
    assert row["cells"]["pairs"]["n"] == "4 prompts" and row["cells"]["gold_reward"]["n"] == "2 seeds"
    # Cells only for the metrics asked for.
    assert set(groups(runs, ["kl"])[0]["cells"]) == {"kl"}
    cells = f"0.700 ± 1.271 | 1.000 ± {kl['half']:.3f} | 0.500 ± 0.318"
    line = f"| dpo | default | 2 | {cells} | 2 seeds, 4 prompts, 8 prompts |"
    assert line in markdown(tmp_path, "sentiment")


def test_no_runs_says_so(tmp_path):
    assert "No complete runs" in markdown(tmp_path, "sentiment")
