"""The comparison table: a pure function of the complete run records of one task.

Runs that differ only in their seed form one row. With several seeds a cell is the mean over
seeds ± the 95% t-interval over seeds (n = seeds); with one seed it is that run's mean ± the
95% t-interval over evaluation prompts (n = prompts).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from bench import records
from bench.stats import ci95_halfwidth, mean_se

PREFERRED_ORDER = ("gold_reward", "kl", "kl_mc", "length", "pair_accuracy")


def load_runs(results: Path, task: str | None = None) -> list[dict]:
    runs = []
    for run_dir in records.complete_runs(results):
        config = json.loads((run_dir / "config.json").read_text())
        if task is not None and config["config"]["task"]["name"] != task:
            continue
        metrics = json.loads((run_dir / "metrics.json").read_text())
        runs.append({"dir": run_dir, "config": config["config"], "metrics": metrics})
    return runs


def _setting(run: dict, varying: dict[str, set]) -> str:
    """The settings that distinguish this run from the other runs of its algorithm (seed aside)."""
    cfg = run["config"]
    parts = []
    for section in ("algo", "train", "task", "eval", "data"):
        for key in sorted(varying.get(section, ())):
            parts.append(f"{key}={cfg[section].get(key)}")
    return ", ".join(parts) or "default"


def rows(runs: list[dict]) -> tuple[list[str], list[dict]]:
    """(metric names, one row per (algorithm, setting)) with mean, half-width and n per metric."""
    by_algo: dict[str, list[dict]] = {}
    for run in runs:
        by_algo.setdefault(run["config"]["algo"]["name"], []).append(run)
    metric_names = sorted({k for r in runs for k, v in r["metrics"].items() if isinstance(v, dict) and "mean" in v},
                          key=lambda k: (PREFERRED_ORDER.index(k) if k in PREFERRED_ORDER else len(PREFERRED_ORDER), k))
    out = []
    for algo in sorted(by_algo):
        algo_runs = by_algo[algo]
        varying: dict[str, set] = {}
        for section in ("algo", "train", "task", "eval", "data"):
            keys = set().union(*(r["config"][section].keys() for r in algo_runs))
            varying[section] = {k for k in keys if k != "name"
                                and len({json.dumps(r["config"][section].get(k)) for r in algo_runs}) > 1}
        groups: dict[str, list[dict]] = {}
        for run in algo_runs:
            groups.setdefault(_setting(run, varying), []).append(run)
        for setting in sorted(groups):
            group = sorted(groups[setting], key=lambda r: r["config"]["seed"])
            cells = {}
            for m in metric_names:
                present = [r["metrics"][m] for r in group if m in r["metrics"]]
                if not present:
                    continue
                if len(present) == 1:
                    agg = present[0]
                    cells[m] = {"mean": agg["mean"], "half": ci95_halfwidth(agg["se"], agg["n"]),
                                "n": f"{agg['n']} prompts", "estimator": agg.get("estimator")}
                else:
                    s = mean_se([a["mean"] for a in present])
                    cells[m] = {"mean": s["mean"], "half": ci95_halfwidth(s["se"], s["n"]),
                                "n": f"{s['n']} seeds", "estimator": present[0].get("estimator")}
            out.append({"algo": algo, "setting": setting, "seeds": len(group), "cells": cells})
    return metric_names, out


def _fmt(cell: dict | None) -> str:
    if cell is None:
        return "–"
    mean, half = cell["mean"], cell["half"]
    text = f"{mean:.3f}" if math.isnan(half) else f"{mean:.3f} ± {half:.3f}"
    if cell.get("estimator"):
        text += f" ({cell['estimator']})"
    return text


def markdown(results: Path, task: str) -> str:
    runs = load_runs(results, task)
    if not runs:
        return f"No complete runs for task {task!r} under {results}."
    metric_names, table = rows(runs)
    header = ["algorithm", "setting", "seeds"] + [f"{m} (mean ± 95% CI)" for m in metric_names] + ["n"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table:
        ns = sorted({c["n"] for c in row["cells"].values()})
        lines.append("| " + " | ".join([row["algo"], row["setting"], str(row["seeds"])]
                                       + [_fmt(row["cells"].get(m)) for m in metric_names] + [", ".join(ns)]) + " |")
    return f"Task {task}: {len(runs)} complete runs in {results}\n\n" + "\n".join(lines)
