"""The report of one task, a pure function of its complete run records.

    bench report --task sentiment [--results results] [--out reports/sentiment] [--kl-budget 2]

writes report.md, a self-contained index.html (figures embedded), the figures as PNG and each
table as CSV and LaTeX. What the numbers are:

- Summary: per algorithm and setting, gold reward, KL, length and judge win rate where present,
  each the mean ± 95% t-interval over seeds (n = seeds), or over evaluation prompts when the
  setting has one seed. ★ marks each algorithm's best setting: the highest gold reward among
  its settings whose (seed-mean, final) KL is within the KL budget; where none is, † marks its
  lowest-KL setting, which stands in for it.
- Frontier: every evaluated policy (each run's intermediate checkpoints and its final policy) is
  a faint (KL, reward) point. A setting's checkpoints are averaged over seeds; each algorithm's
  Pareto front over those averaged points is drawn bold. The area under a front up to the KL
  budget integrates the best reward reached at or below each KL (a step function; below an
  algorithm's first point it counts the lowest reward of the whole report), with a percentile
  bootstrap 95% CI over seeds. The budget is --kl-budget, else the smallest of the algorithms'
  largest KLs, so that every algorithm has reached it. An algorithm that leaves the starting
  policy unchanged (a reward model's run: KL 0) is shown as that point, with no area.
- Pairwise: for each pair of algorithms, their best settings (above) are compared on the same
  evaluation prompts and seeds: per-prompt mean gold reward of each run (samples.jsonl), paired
  by (seed, prompt), averaged over the shared seeds per prompt; the difference is the mean over
  prompts with a bootstrap CI, and the p-value is a paired sign-flip permutation test over
  prompts (Holm-adjusted over all pairs for the verdict). The same for judge win rate where both
  runs were judged.
- Cost (preference labels, tokens trained on and sampled, wall time, training FLOPs), training
  curves, a few sample completions per algorithm, and the list of runs.

The same records give byte-identical files: nothing depends on the time, on directory order, on
the environment or on unseeded randomness. A record that cannot be read (records.load_record) is
named in one warning line on stderr and left out.

This module computes what the report shows (build) and writes its files (write_report); the
cells come from bench/table.py, the text of tables and page from bench/render.py, the figures
from bench/plots.py.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench import io as bench_io
from bench import plots, render, stats, table
from bench.errors import UserError

REWARD = "gold_reward"
KL = "kl"
SUMMARY_METRICS = ("gold_reward", "kl", "length", "judge_win_rate")
CURVE_METRICS = ("loss", "rewards/margins", "objective/kl")
PER_SAMPLE = {"gold_reward": "gold_reward", "judge_win_rate": "judge_win"}
"""Which samples.jsonl value the paired tests use for a metric."""
N_BOOT = 2000
RNG_SEED = 0
ALPHA = 0.05
N_EXAMPLES = 3
MAX_CHARS = 300


@dataclass
class Table:
    """One table, shown with formatted cells and saved as CSV (raw numbers) and LaTeX."""

    name: str
    title: str
    header: list[str]
    rows: list[list[str]]
    csv_header: list[str]
    csv_rows: list[list]
    note: str = ""


@dataclass
class Report:
    """Everything the report shows; bench/render.py only formats it."""

    task: str
    intro: list[str]
    tables: dict[str, Table] = field(default_factory=dict)
    figures: dict[str, bytes] = field(default_factory=dict)
    """File name -> PNG bytes."""
    frontier: dict | None = None
    """Per algorithm its points, front and area; the KL budget and the floor (see _frontier)."""
    frontier_note: str = ""
    samples: list[dict] = field(default_factory=list)
    samples_note: str = ""
    """What the samples are, shown above them."""


# ---------------------------------------------------------------- reading run records


# Every file of a run is read once, and checked, by records.load_record (through table.load_runs):
# run["record"] holds them, and a run that cannot be read never gets here.


def _policies(run: dict) -> dict[float, dict]:
    """Metrics of every evaluated policy of a run, keyed by how far through training it was (final: 1.0).

    The key lines up the same checkpoint across the seeds of a setting even if some runs
    evaluated fewer checkpoints.
    """
    out = {}
    for row in run["record"].checkpoints:
        if not row.get("final") and row.get("total_steps"):
            out[round(row["step"] / row["total_steps"], 4)] = row["metrics"]
    out[1.0] = run["metrics"]  # metrics.json is the record of the final policy
    return out


def _mean(metrics: dict, key: str) -> float:
    agg = metrics.get(key)
    value = agg.get("mean") if isinstance(agg, dict) else None
    return float(value) if isinstance(value, (int, float)) else math.nan


def _per_prompt(run: dict, key: str) -> dict[int, tuple[str, float]]:
    """prompt index -> (prompt, mean of `key` over that prompt's samples), NaN values left out."""
    values: dict[int, list] = {}
    for row in run["record"].samples:
        v = row.get(key)
        if isinstance(v, (int, float)) and v == v:
            values.setdefault(row["prompt_index"], [row["prompt"], []])[1].append(float(v))
    return {i: (p, math.fsum(v) / len(v)) for i, (p, v) in values.items()}


# ---------------------------------------------------------------- the computations


def _summary(groups: list[dict], metrics: list[str], best: dict[str, int], over: set[str]) -> Table:
    shown = [m for m in SUMMARY_METRICS if m in metrics]
    header = ["", "algorithm", "setting", "seeds"] + [f"{m} (mean ± 95% CI)" for m in shown] + ["n"]
    csv_header = ["algorithm", "setting", "seeds", "best"]
    for m in metrics:
        csv_header += [f"{m}_mean", f"{m}_ci_low", f"{m}_ci_high", f"{m}_n", f"{m}_n_unit"]
    csv_header.append("runs")
    rows, csv_rows = [], []
    for i, g in enumerate(groups):
        marked = best.get(g["algo"]) == i
        mark = ("†" if g["algo"] in over else "★") if marked else ""
        ns = sorted({c["n"] for m, c in g["cells"].items() if m in shown})
        rows.append(
            [mark, g["algo"], g["setting"], str(len(g["runs"]))]
            + [render.cell(g["cells"].get(m)) for m in shown]
            + [", ".join(ns)]
        )
        line = [g["algo"], g["setting"], len(g["runs"]), mark and ("over_budget" if g["algo"] in over else "best")]
        for m in metrics:
            c = g["cells"].get(m)
            if c is None:
                line += ["", "", "", "", ""]
            else:
                line += [
                    render.raw(c["mean"]),
                    render.raw(c["mean"] - c["half"]),
                    render.raw(c["mean"] + c["half"]),
                    c["count"],
                    c["unit"],
                ]
        line.append(" ".join(r["dir"].name for r in g["runs"]))
        csv_rows.append(line)
    return Table(
        "summary",
        "Summary by algorithm and setting",
        header,
        rows,
        csv_header,
        csv_rows,
        "Each cell: mean ± 95% t-interval over seeds (n seeds); with one seed, over evaluation prompts "
        "(n prompts). ★: the algorithm's best setting (highest gold reward with KL within the budget); †: no "
        "setting of the algorithm is within the budget, this is its lowest-KL one.",
    )


def _frontier(groups: list[dict], reward: str, kl_budget: float | None) -> dict | None:
    """Per algorithm: every point, seed-averaged points, front, area with bootstrap CI; the budget and floor."""
    per_algo: dict[str, dict] = {}
    for g in groups:
        a = per_algo.setdefault(g["algo"], {"algo": g["algo"], "points": [], "rows": [], "seeds": set()})
        rows: dict[float, dict] = {}  # (this setting's) checkpoint -> seed -> (kl, reward)
        for run in g["runs"]:
            seed = run["config"]["seed"]
            a["seeds"].add(seed)
            for at, m in _policies(run).items():
                point = (_mean(m, KL), _mean(m, reward))
                a["points"].append(point)
                rows.setdefault(at, {})[seed] = point
        a["rows"] += [rows[at] for at in sorted(rows)]
    algos = []
    for name in sorted(per_algo):
        a = per_algo[name]
        seeds = sorted(a["seeds"])
        kl = np.array([[row.get(s, (math.nan,) * 2)[0] for s in seeds] for row in a["rows"]], dtype=float)
        rw = np.array([[row.get(s, (math.nan,) * 2)[1] for s in seeds] for row in a["rows"]], dtype=float)
        ok = np.isfinite(kl) & np.isfinite(rw)
        if not ok.any():
            continue
        with np.errstate(invalid="ignore"):  # 0/0 -> NaN: a point no seed reached
            mean_kl = np.where(ok, kl, 0).sum(1) / ok.sum(1)
            mean_rw = np.where(ok, rw, 0).sum(1) / ok.sum(1)
        a.update(kl=kl, rw=rw, mean_kl=mean_kl, mean_rw=mean_rw)
        front = stats.pareto_front(mean_kl.tolist(), mean_rw.tolist())
        a["front"] = [(float(mean_kl[i]), float(mean_rw[i])) for i in front]
        a["points"] = [p for p in a["points"] if math.isfinite(p[0]) and math.isfinite(p[1])]
        algos.append(a)
    if not algos:
        return None
    # An algorithm whose every policy is the starting one (a reward model's run: KL 0) is plotted as
    # that reference point; it reaches no KL, so it neither sets the budget nor has an area.
    unchanged = {a["algo"] for a in algos if not np.nanmax(a["mean_kl"]) > 0}
    if kl_budget is None:
        moved = [float(np.nanmax(a["mean_kl"])) for a in algos if a["algo"] not in unchanged]
        budget = min(moved) if moved else 0.0
    else:
        budget = float(kl_budget)
    floor = min(float(np.nanmin(a["mean_rw"])) for a in algos)
    for a in algos:
        a["area"] = stats.bootstrap_front_area(a["kl"], a["rw"], budget, floor, n_boot=N_BOOT, seed=RNG_SEED)
        # Without a policy within the budget the area would be floor x budget for any algorithm: a
        # number that compares nothing.
        no_area = (
            "the starting policy, KL 0"
            if a["algo"] in unchanged
            else "no policy within the KL budget"
            if not any(k <= budget for k, _ in a["front"])
            else None
        )
        if no_area:
            a["area"] = {**a["area"], "area": math.nan, "low": math.nan, "high": math.nan}
        a["label"] = f"{a['algo']} ({no_area or 'area ' + format(a['area']['area'], '.3g')})"
    return {"algos": algos, "budget": budget, "floor": floor}


def _frontier_table(front: dict, reward: str) -> Table:
    rows, csv_rows = [], []
    for a in front["algos"]:
        ar = a["area"]
        ci = "–" if not math.isfinite(ar["low"]) else f"[{render.num(ar['low'])}, {render.num(ar['high'])}]"
        within = [p for p in a["front"] if p[0] <= front["budget"]]
        rows.append(
            [
                a["algo"],
                str(len(a["points"])),
                str(len(a["front"])),
                str(ar["seeds"]),
                render.num(ar["area"]),
                ci,
                render.num(max((p[1] for p in within), default=math.nan)),
            ]
        )
        csv_rows.append(
            [
                a["algo"],
                len(a["points"]),
                len(a["front"]),
                ar["seeds"],
                render.raw(front["budget"]),
                render.raw(front["floor"]),
                render.raw(ar["area"]),
                render.raw(ar["low"]),
                render.raw(ar["high"]),
                render.raw(max((p[1] for p in within), default=math.nan)),
            ]
        )
    return Table(
        "frontier",
        f"Area under the {reward}-vs-KL front up to KL {front['budget']:.3g} nats",
        [
            "algorithm",
            "points",
            "front points",
            "seeds",
            f"area ({reward} × nats)",
            "95% CI (bootstrap over seeds)",
            f"best {reward} within budget",
        ],
        rows,
        [
            "algorithm",
            "points",
            "front_points",
            "seeds",
            "kl_budget",
            "floor",
            "area",
            "ci_low",
            "ci_high",
            "best_reward_within_budget",
        ],
        csv_rows,
        f"Area = ∫₀^B F(k) dk, F(k) = best seed-averaged {reward} reached at KL ≤ k, and {front['floor']:.3g} "
        f"(the lowest reward in this report) below an algorithm's first point; B = {front['budget']:.3g} nats; – where "
        f"no policy of the algorithm is within B (evaluate intermediate checkpoints, run.eval_checkpoints, or pass "
        f"--kl-budget) and for algorithms that leave the starting policy unchanged (KL 0). "
        f"CI: percentile bootstrap over seeds ({N_BOOT} replicates, seed {RNG_SEED}); none with one seed.",
    )


def _best(groups: list[dict], reward: str | None, budget: float | None) -> tuple[dict[str, int], set[str]]:
    """Per algorithm, the index of its best setting, and the algorithms none of whose settings is within budget.

    Best: the highest mean reward among the settings whose mean (final) KL is within the budget;
    when there is none, the setting with the smallest KL stands in, so every algorithm still
    takes part in the comparisons (the reports mark it †).
    """
    best: dict[str, tuple[float, int]] = {}
    nearest: dict[str, tuple[float, int]] = {}
    for i, g in enumerate(groups):
        r = g["cells"].get(reward, {}).get("mean", math.nan) if reward else math.nan
        k = g["cells"].get(KL, {}).get("mean", math.nan)
        if not math.isfinite(r):
            continue
        if budget is not None and not (math.isfinite(k) and k <= budget):
            if math.isfinite(k) and (g["algo"] not in nearest or k < nearest[g["algo"]][0]):
                nearest[g["algo"]] = (k, i)
            continue
        if g["algo"] not in best or r > best[g["algo"]][0]:
            best[g["algo"]] = (r, i)
    over = set(nearest) - set(best)
    return {a: i for a, (_, i) in {**nearest, **best}.items()}, over


def _compare(runs_a: list[dict], runs_b: list[dict], key: str) -> dict:
    """Paired comparison of two settings on shared seeds and prompts; {"note"} when impossible."""
    by_seed_a = {r["config"]["seed"]: r for r in reversed(runs_a)}
    by_seed_b = {r["config"]["seed"]: r for r in reversed(runs_b)}
    shared = sorted(set(by_seed_a) & set(by_seed_b))
    if not shared:
        return {"note": "no shared seeds"}
    pairs: dict[int, list[tuple[float, float]]] = {}
    for seed in shared:
        pa, pb = _per_prompt(by_seed_a[seed], key), _per_prompt(by_seed_b[seed], key)
        for i in sorted(set(pa) & set(pb)):
            if pa[i][0] != pb[i][0]:
                return {"note": f"different evaluation prompts (seed {seed}, prompt {i})"}
            pairs.setdefault(i, []).append((pa[i][1], pb[i][1]))
    if len(pairs) < 2:
        return {"note": f"fewer than 2 shared prompts with {key}"}
    a = [math.fsum(x for x, _ in v) / len(v) for _, v in sorted(pairs.items())]
    b = [math.fsum(y for _, y in v) / len(v) for _, v in sorted(pairs.items())]
    return {**stats.paired_difference(a, b, seed=RNG_SEED), "seeds": len(shared)}


def _pairwise(groups: list[dict], best: dict[str, int], over: set[str], metrics: list[str]) -> Table | None:
    algos = sorted(best)
    if len(algos) < 2:
        return None
    keys = [m for m in ("gold_reward", "judge_win_rate") if m in metrics]
    results = []
    for x in range(len(algos)):
        for y in range(x + 1, len(algos)):
            ga, gb = groups[best[algos[x]]], groups[best[algos[y]]]
            results.append((ga, gb, {m: _compare(ga["runs"], gb["runs"], PER_SAMPLE[m]) for m in keys}))
    adjusted = {m: stats.holm([r[2][m].get("p", math.nan) for r in results]) for m in keys}
    header = ["A", "B", "A setting (KL)", "B setting (KL)"]
    csv_header = ["a", "b", "a_setting", "b_setting", "a_kl", "b_kl"]
    for m in keys:
        header += [f"Δ {m} (A − B) [95% CI]", "p", "p (Holm)", "verdict", "prompts × seeds"]
        csv_header += [
            f"{m}_diff",
            f"{m}_ci_low",
            f"{m}_ci_high",
            f"{m}_p",
            f"{m}_p_holm",
            f"{m}_verdict",
            f"{m}_prompts",
            f"{m}_seeds",
            f"{m}_note",
        ]
    rows, csv_rows = [], []
    for j, (ga, gb, res) in enumerate(results):
        kl_a, kl_b = ga["cells"].get(KL, {}).get("mean", math.nan), gb["cells"].get(KL, {}).get("mean", math.nan)
        row = [
            ga["algo"],
            gb["algo"],
            f"{ga['setting']} ({render.num(kl_a, 2)}){' †' if ga['algo'] in over else ''}",
            f"{gb['setting']} ({render.num(kl_b, 2)}){' †' if gb['algo'] in over else ''}",
        ]
        line = [ga["algo"], gb["algo"], ga["setting"], gb["setting"], render.raw(kl_a), render.raw(kl_b)]
        for m in keys:
            r, p_adj = res[m], adjusted[m][j]
            if "note" in r:
                row += [r["note"], "–", "–", "–", "–"]
                line += ["", "", "", "", "", "", "", "", r["note"]]
                continue
            if p_adj < ALPHA:
                winner, kl_w, kl_l = (ga["algo"], kl_a, kl_b) if r["diff"] > 0 else (gb["algo"], kl_b, kl_a)
                # A higher reward bought with more KL is not a win at matched KL: say so.
                verdict = f"{winner} higher" + (" (at higher KL)" if kl_w > kl_l else "")
            else:
                verdict = "no significant difference"
            row += [
                f"{r['diff']:+.3f} [{render.num(r['low'])}, {render.num(r['high'])}]",
                render.p_value(r["p"]),
                render.p_value(p_adj),
                verdict,
                f"{r['n']} × {r['seeds']}",
            ]
            line += [
                render.raw(r["diff"]),
                render.raw(r["low"]),
                render.raw(r["high"]),
                render.raw(r["p"]),
                render.raw(p_adj),
                verdict,
                r["n"],
                r["seeds"],
                "",
            ]
        rows.append(row)
        csv_rows.append(line)
    return Table(
        "pairwise",
        "Pairwise comparisons of each algorithm's best setting",
        header,
        rows,
        csv_header,
        csv_rows,
        "Per prompt: mean over its samples, averaged over the seeds both settings have; Δ = mean over prompts. "
        "CI: percentile bootstrap over prompts. p: paired sign-flip permutation test over prompts (scipy); "
        f"Holm-adjusted over the {len(results)} pairs; verdict at α = {ALPHA}. Compare the KLs too: the two "
        "settings are each algorithm's best within the KL budget (or its lowest-KL one, †), not equal in KL.",
    )


def _cost(groups: list[dict]) -> Table:
    keys = [
        ("preference_labels", "preference labels"),
        ("train_tokens", "tokens trained on"),
        ("sampled_tokens", "tokens sampled in training"),
        ("wall_time_s", "wall time (s)"),
        ("train_flops", "training FLOPs (est.)"),
    ]
    rows, csv_rows = [], []
    for g in groups:
        values: dict[str, list[float]] = {k: [] for k, _ in keys}
        for r in g["runs"]:
            cost = r["record"].cost
            for k, _ in keys:
                v = cost.get(k)
                if k == "wall_time_s" and isinstance(v, dict):
                    v = math.fsum(x for x in v.values() if isinstance(x, (int, float)))
                if isinstance(v, (int, float)):
                    values[k].append(float(v))
        means = {k: (math.fsum(v) / len(v) if v else math.nan) for k, v in values.items()}
        rows.append(
            [g["algo"], g["setting"]]
            + [render.big(means[k]) if k != "wall_time_s" else render.num(means[k], 1) for k, _ in keys]
        )
        csv_rows.append([g["algo"], g["setting"], len(g["runs"])] + [render.raw(means[k]) for k, _ in keys])
    return Table(
        "cost",
        "Cost per run (mean over seeds)",
        ["algorithm", "setting"] + [t for _, t in keys],
        rows,
        ["algorithm", "setting", "seeds"] + [k for k, _ in keys],
        csv_rows,
        "Training FLOPs: 6 × parameters × tokens trained on (forward and backward); – where a run did not record it.",
    )


def _runs_table(groups: list[dict]) -> Table:
    rows = []
    for g in groups:
        for r in g["runs"]:
            record = r["record"].record
            rows.append(
                [r["dir"].name, g["algo"], g["setting"], str(r["config"]["seed"]), str(record.get("git_revision", "–"))]
            )
    return Table(
        "runs",
        "Runs in this report",
        ["run", "algorithm", "setting", "seed", "git revision"],
        rows,
        ["run", "algorithm", "setting", "seed", "git_revision"],
        [list(r) for r in rows],
    )


def _examples(groups: list[dict], best: dict[str, int]) -> list[dict]:
    out = []
    for algo in sorted({g["algo"] for g in groups}):
        index = best.get(algo, next(i for i, g in enumerate(groups) if g["algo"] == algo))
        g = groups[index]
        run = g["runs"][0]
        first: dict[int, dict] = {}
        for row in run["record"].samples:
            first.setdefault(row["prompt_index"], row)
        for i in sorted(first)[:N_EXAMPLES]:
            row = first[i]
            text = row["completion"] if len(row["completion"]) <= MAX_CHARS else row["completion"][:MAX_CHARS] + " …"
            out.append(
                {
                    "algo": algo,
                    "setting": g["setting"],
                    "seed": run["config"]["seed"],
                    "prompt": row["prompt"],
                    "completion": text,
                    "gold_reward": row.get("gold_reward"),
                }
            )
    return out


def build(results: Path, task: str, kl_budget: float | None = None) -> Report:
    """Everything the report shows, computed from the complete runs of `task` under `results`."""
    if kl_budget is not None and not (math.isfinite(kl_budget) and kl_budget > 0):
        raise UserError(f"--kl-budget {kl_budget}: must be a positive number of nats")
    runs = table.load_runs(results, task)
    if not runs:
        raise UserError(f"no complete runs of task {task!r} under {results}; run `bench run` or `bench sweep` first")
    metrics = table.metric_names(runs)
    groups = table.groups(runs, metrics)
    reward = REWARD if REWARD in metrics else ("judge_win_rate" if "judge_win_rate" in metrics else None)
    algos = sorted({g["algo"] for g in groups})
    report = Report(
        task,
        [
            f"Task {task}: {len(runs)} complete runs, {len(groups)} settings of {len(algos)} "
            f"algorithms ({', '.join(algos)})."
        ],
    )
    front = report.frontier = _frontier(groups, reward, kl_budget) if reward and KL in metrics else None
    budget = front["budget"] if front else None
    best, over = _best(groups, reward, budget)
    report.tables["summary"] = _summary(groups, metrics, best, over)
    if front:
        report.tables["frontier"] = _frontier_table(front, reward)
        label = "gold reward (mean over prompts)" if reward == REWARD else f"{reward} (mean over prompts)"
        report.figures["frontier.png"] = plots.frontier_png(task, label, front["algos"], front["budget"])
        missing = sorted(set(algos) - {a["algo"] for a in front["algos"]})
        if missing:
            report.frontier_note = f"Not on the frontier (no KL or reward recorded): {', '.join(missing)}."
    else:
        report.frontier_note = f"No frontier: the runs record no {KL} and {reward or 'reward'} together."
    pairwise = _pairwise(groups, best, over, metrics)
    if pairwise is not None:
        report.tables["pairwise"] = pairwise
    report.tables["cost"] = _cost(groups)
    for algo in algos:
        # A row without a step (a plugin's own log row) has no place on the x axis.
        algo_runs = [
            {
                "setting": g["setting"],
                "seed": r["config"]["seed"],
                "log": [row for row in r["record"].train_log if isinstance(row.get("step"), (int, float))],
            }
            for g in groups
            if g["algo"] == algo
            for r in g["runs"]
        ]
        present = [m for m in CURVE_METRICS if any(m in row for r in algo_runs for row in r["log"])]
        if present:
            report.figures[f"curves-{_safe(algo)}.png"] = plots.curves_png(algo, present, algo_runs)
    report.samples = _examples(groups, best)
    report.samples_note = (
        f"The first {N_EXAMPLES} evaluation prompts, first sample, of each algorithm's best setting (lowest seed)."
    )
    report.tables["runs"] = _runs_table(groups)
    return report


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


# ---------------------------------------------------------------- writing


def write_report(results: Path, task: str, out: Path, kl_budget: float | None = None) -> list[Path]:
    """Build the report and write its files into `out`; files of an earlier report that no longer apply go."""
    report = build(Path(results), task, kl_budget)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = render.files(report)
    stale = [
        p
        for p in out.iterdir()
        if p.name not in files
        and (
            p.name.startswith("curves-")
            and p.suffix == ".png"
            or p.name in {"frontier.png"} | {f"{n}.{ext}" for n, _ in render.SECTIONS for ext in ("csv", "tex")}
        )
    ]
    for p in stale:
        p.unlink()
    for name in sorted(files):
        data = files[name]
        bench_io.atomic_write_bytes(out / name, data if isinstance(data, bytes) else data.encode("utf-8"))
    return [out / name for name in sorted(files)]
