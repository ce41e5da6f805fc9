"""The comparison table: a pure function of the complete run records of one task.

Runs that differ only in their seed form one row. With several seeds a cell is the mean over
seeds ± the 95% t-interval over seeds (n = seeds); with one seed it is that run's mean ± the
95% t-interval over evaluation prompts (n = prompts). A record that cannot be read is named on
stderr in one line and left out. groups() builds those rows with their cells, once, for this table
and for the report (bench/report.py).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from bench import records
from bench.stats import ci95_halfwidth, mean_se

PREFERRED_ORDER = ("gold_reward", "kl", "kl_mc", "length", "pair_accuracy")
SECTIONS = ("algo", "train", "task", "eval", "data")
"""Config sections whose differences make two runs of one algorithm different settings."""


evaluated_task = records.evaluated_task  # defined beside the schema, which readable_runs filters with


def load_runs(results: Path, task: str | None = None, keep_samples: bool = True) -> list[dict]:
    """{"dir", "config", "metrics", "record"} of each readable complete run (of `task`, when given).

    "record" is the checked records.Record. A complete run that cannot be read is named on
    stderr, one line, and left out (records.readable_runs).
    """
    return [
        {"dir": r.dir, "config": r.config, "metrics": r.metrics, "record": r}
        for r in records.readable_runs(results, task, keep_samples=keep_samples)
    ]


def _setting(run: dict, varying: dict[str, set]) -> str:
    """The settings that distinguish this run from the other runs of its algorithm (seed aside)."""
    cfg = run["config"]
    parts = []
    for section in SECTIONS:
        for key in sorted(varying.get(section, ())):
            parts.append(f"{key}={cfg[section].get(key)}")
    return ", ".join(parts) or "default"


def metric_names(runs: list[dict]) -> list[str]:
    """Every aggregate metric found in the runs, the usual ones first."""
    return sorted(
        {k for r in runs for k, v in r["metrics"].items() if records.is_aggregate(v)},
        key=lambda k: (PREFERRED_ORDER.index(k) if k in PREFERRED_ORDER else len(PREFERRED_ORDER), k),
    )


def groups(runs: list[dict], metrics: list[str]) -> list[dict]:
    """One {"algo", "setting", "runs", "cells"} per (algorithm, setting), runs sorted by seed; sorted by algo, setting.

    "cells": metric -> cell() over the setting's runs that hold it as an aggregate (see _cells).
    """
    by_algo: dict[str, list[dict]] = {}
    for run in runs:
        by_algo.setdefault(run["config"]["algo"]["name"], []).append(run)
    out = []
    for algo in sorted(by_algo):
        algo_runs = by_algo[algo]
        varying: dict[str, set] = {}
        for section in SECTIONS:
            keys = set().union(*(r["config"][section].keys() for r in algo_runs))
            varying[section] = {
                k for k in keys if k != "name" and len({json.dumps(r["config"][section].get(k)) for r in algo_runs}) > 1
            }
        by_setting: dict[str, list[dict]] = {}
        for run in algo_runs:
            by_setting.setdefault(_setting(run, varying), []).append(run)
        for setting in sorted(by_setting):
            setting_runs = sorted(by_setting[setting], key=lambda r: r["config"]["seed"])
            out.append({"algo": algo, "setting": setting, "runs": setting_runs, "cells": _cells(setting_runs, metrics)})
    return out


def _cells(runs: list[dict], metrics: list[str]) -> dict[str, dict]:
    """metric -> cell() of one setting's runs, for the metrics any of them holds as an aggregate."""
    cells = {}
    for m in metrics:
        # A run may hold the same key as a plain value (not an aggregate): that is no cell.
        present = [r["metrics"][m] for r in runs if records.is_aggregate(r["metrics"].get(m))]
        if present:
            cells[m] = cell(present)
    return cells


def cell(present: list[dict]) -> dict:
    """Summary of one metric over the runs of a setting (`present`: their aggregates, seed order).

    {"mean", "half" (95% half-width), "n" (text), "count", "unit" ("seeds" or "prompts"), "estimator"}.
    """
    if len(present) == 1:
        agg = present[0]
        unit = agg.get("unit", "prompts")  # what n counts; e.g. held-out pairs for pair accuracy
        return {
            "mean": agg["mean"],
            "half": ci95_halfwidth(agg["se"], agg["n"]),
            "n": f"{agg['n']} {unit}",
            "count": agg["n"],
            "unit": unit,
            "estimator": agg.get("estimator"),
        }
    s = mean_se([a["mean"] for a in present])
    return {
        "mean": s["mean"],
        "half": ci95_halfwidth(s["se"], s["n"]),
        "n": f"{s['n']} seeds",
        "count": s["n"],
        "unit": "seeds",
        "estimator": present[0].get("estimator"),
    }


def _fmt(cell: dict | None) -> str:
    if cell is None:
        return "–"
    mean, half = cell["mean"], cell["half"]
    text = f"{mean:.3f}" if math.isnan(half) else f"{mean:.3f} ± {half:.3f}"
    if cell.get("estimator"):
        text += f" ({cell['estimator']})"
    return text


def markdown(results: Path, task: str) -> str:
    runs = load_runs(results, task, keep_samples=False)  # the table needs aggregates only
    if not runs:
        return f"No complete runs for task {task!r} under {results}."
    names = metric_names(runs)
    table = groups(runs, names)
    header = ["algorithm", "setting", "seeds"] + [f"{m} (mean ± 95% CI)" for m in names] + ["n"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table:
        ns = sorted({c["n"] for c in row["cells"].values()})
        lines.append(
            "| "
            + " | ".join(
                [row["algo"], row["setting"], str(len(row["runs"]))]
                + [_fmt(row["cells"].get(m)) for m in names]
                + [", ".join(ns)]
            )
            + " |"
        )
    return f"Task {task}: {len(runs)} complete runs in {results}\n\n" + "\n".join(lines)
