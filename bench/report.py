"""The report of one task, a pure function of its complete run records.

    bench report --task sentiment [--results results] [--out reports/sentiment] [--kl-budget 2]

writes report.md, a self-contained index.html (figures embedded), the figures as PNG and each
table as CSV and LaTeX. What the numbers are:

- Summary: per algorithm and setting, gold reward, KL, the held-out scorer (heldout_sentiment),
  fluency (fluency_ppl), length and judge win rate where present, each the mean ± 95% t-interval
  over seeds (n = seeds), or over evaluation prompts when the setting has one seed. ★ marks each
  algorithm's best setting: the highest gold reward among its settings whose (seed-mean, final)
  KL is within the KL budget; where none is, † marks its lowest-KL setting, which stands in for
  it. The over-optimisation columns: each setting's gain over SFT (or the starting policy) on the
  gold reward and on the held-out scorer, and a flag where the first is significant and the second
  is not or lags far behind (_overoptimisation).
- Claims: the DPO paper's sentiment findings (CLAIMS), each holds / fails / undecided on these
  runs, with the reason and the interval of the deciding difference (_claims, _competitive), or is not
  tested where the runs leave out an algorithm it names.
- Frontier: every evaluated policy (each run's intermediate checkpoints and its final policy) is
  a faint (KL, reward) point. A setting's checkpoints are averaged over seeds; each algorithm's
  frontier over all its settings' averaged points, F(k) = the best reward among its points with
  KL <= k, is drawn bold as a step function. The starting policy (KL 0) is the common origin,
  drawn once: the runs of an algorithm that leaves it unchanged (a reward model's run, _starting)
  are that point and not an algorithm of the frontier, matched-KL or pairwise tables. Best-of-N
  points sit at their analytic KL bound, marked as such. The area under a front up to the KL
  budget integrates F from the origin's reward (without an origin: the lowest reward of the whole
  report, and no area for an algorithm with no policy within the budget), with a percentile
  bootstrap 95% CI over seeds. The budget is --kl-budget, else the
  smallest of the algorithms' largest KLs, so that every algorithm has reached it.
- Matched KL: for each pair of algorithms, their frontiers compared on their common KL support,
  with a bootstrap over seeds and prompts, a simultaneous band and a verdict (_matched).
- Pairwise (unmatched KL): for each pair of algorithms, their best settings (above) are compared
  on the same evaluation prompts and seeds: per-prompt mean gold reward (and held-out score) of each run
  (samples.jsonl), paired by (seed, prompt), averaged over the shared seeds per prompt; the
  difference is the mean over prompts with a bootstrap CI, and the p-value is a paired sign-flip
  permutation test over prompts (Holm-adjusted over all pairs for the verdict). The same for
  judge win rate where both runs were judged.
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
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench import io as bench_io
from bench import plots, records, render, stats, table
from bench.errors import UserError

REWARD = "gold_reward"
KL = "kl"
HELDOUT = "heldout_sentiment"
"""The scorer that shares nothing with the gold reward, beside which every gold gain is checked."""
FLUENCY = "fluency_ppl"
SUMMARY_METRICS = ("gold_reward", "kl", HELDOUT, FLUENCY, "length", "judge_win_rate")
STARTING = ("reward-model",)
"""Algorithms whose run leaves the policy as it started: their points are the frontiers' origin (see _starting)."""
SFT = "sft"
BEST_OF_N = "best-of-n"
BOUND = "analytic bound"
"""The kl aggregate's estimator where the KL is best-of-N's analytic bound (evaluators/kl.py)."""
COMPETITIVE_MARGIN = 0.1
"""Claim (c): best-of-N is competitive when at most this share of the best gain over the starting policy below."""
CURVE_METRICS = ("loss", "rewards/margins", "objective/kl")
PER_SAMPLE = {"gold_reward": "gold_reward", HELDOUT: HELDOUT, "judge_win_rate": "judge_win"}
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
    for row in run["record"].samples or []:
        v = row.get(key)
        if isinstance(v, (int, float)) and v == v:
            values.setdefault(row["prompt_index"], [row["prompt"], []])[1].append(float(v))
    return {i: (p, math.fsum(v) / len(v)) for i, (p, v) in values.items()}


# ---------------------------------------------------------------- the computations


def _gain(cell: dict | None, base: dict | None, sd: float) -> dict | None:
    """A setting's gain over the baseline on one metric: {"gain", "half", "significant", "std"}; None without both.

    half: the two 95% half-widths combined as independent, sqrt(h^2 + h_base^2); significant: the
    gain exceeds it (None where either interval is missing); std: the gain in units of the
    baseline's per-prompt standard deviation sd (NaN where that is unknown or 0).
    """
    if cell is None or base is None or not (math.isfinite(cell["mean"]) and math.isfinite(base["mean"])):
        return None
    gain = cell["mean"] - base["mean"]
    half = math.sqrt(cell["half"] ** 2 + base["half"] ** 2)
    return {
        "gain": gain,
        "half": half,
        "significant": gain > half if math.isfinite(half) else None,
        "std": gain / sd if math.isfinite(sd) and sd > 0 else math.nan,
    }


def _overoptimisation(groups: list[dict], best: dict[str, int], reward: str | None, starting: set[str]) -> dict:
    """Per setting its gains over the baseline on the reward and on the held-out scorer, and the flag.

    Baseline: SFT's marked setting (★ or †), or the starting policy (the runs of `starting`, pooled)
    where there is no SFT run. A setting is flagged over-optimised when its reward gain is
    significant (_gain) and its held-out gain (HELDOUT) is not, or is less than a third of the
    reward gain in standardised units (each gain over its own baseline per-prompt standard
    deviation, se x sqrt(n) averaged over the baseline's runs). "—" where the setting or the
    baseline lacks either metric or an interval; "no" where the reward gain is not significant.
    Returns {"base": its name or None, "rows": {group index: {"reward", "heldout", "flag"}}}.
    """
    if reward is None:
        return {"base": None, "rows": {}}
    if SFT in best:
        base_index = {best[SFT]}
        base_name = f"{SFT} ({groups[best[SFT]]['setting']})"
    elif starting:
        base_index = {i for i, g in enumerate(groups) if g["algo"] in starting}
        base_name = "the starting policy"
    else:
        return {"base": None, "rows": {}}
    base_runs = [r for i in sorted(base_index) for r in groups[i]["runs"]]
    rows = {}
    base: dict[str, tuple] = {}
    for m in (reward, HELDOUT):
        present = [r["metrics"][m] for r in base_runs if records.is_aggregate(r["metrics"].get(m))]
        sds = [a["se"] * math.sqrt(a["n"]) for a in present if math.isfinite(a["se"]) and a["n"] >= 2]
        base[m] = (table.cell(present) if present else None, math.fsum(sds) / len(sds) if sds else math.nan)
    for i, g in enumerate(groups):
        if i in base_index:
            rows[i] = {"reward": None, "heldout": None, "flag": "baseline"}
            continue
        gold, held = (_gain(g["cells"].get(m), *base[m]) for m in (reward, HELDOUT))
        if gold is None or held is None or gold["significant"] is None:
            flag = "—"
        elif not gold["significant"]:
            flag = "no"
        elif held["significant"] is None:
            flag = "—"
        elif not held["significant"]:
            flag = "yes"
        elif math.isfinite(gold["std"]) and math.isfinite(held["std"]) and held["std"] < gold["std"] / 3:
            flag = "yes"
        else:
            flag = "no"
        rows[i] = {"reward": gold, "heldout": held, "flag": flag}
    return {"base": base_name, "rows": rows}


def _gain_text(x: dict | None) -> str:
    return "—" if x is None else f"{x['gain']:+.3f}" + (f" ± {x['half']:.3f}" if math.isfinite(x["half"]) else "")


def _summary(
    groups: list[dict],
    metrics: list[str],
    best: dict[str, int],
    over: set[str],
    overopt: dict,
    reward: str | None,
    starting: set[str],
) -> Table:
    shown = [m for m in SUMMARY_METRICS if m in metrics]
    header = ["", "algorithm", "setting", "seeds"] + [f"{m} (mean ± 95% CI)" for m in shown] + ["n"]
    csv_header = ["algorithm", "setting", "seeds", "best"]
    for m in metrics:
        csv_header += [f"{m}_mean", f"{m}_ci_low", f"{m}_ci_high", f"{m}_n", f"{m}_n_unit"]
    base = overopt["base"]
    if base:
        header += [f"Δ {reward} vs {base}", f"Δ {HELDOUT} vs {base}", "over-optimised?"]
        for m in ("reward", "heldout"):
            csv_header += [f"{m}_gain", f"{m}_gain_half", f"{m}_gain_significant", f"{m}_gain_std"]
        csv_header += ["overoptimised", "baseline"]
    csv_header.append("runs")
    rows, csv_rows = [], []
    for i, g in enumerate(groups):
        marked = best.get(g["algo"]) == i and g["algo"] not in starting
        mark = ("†" if g["algo"] in over else "★") if marked else ""
        ns = sorted({c["n"] for m, c in g["cells"].items() if m in shown})
        row = (
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
        if base:
            o = overopt["rows"][i]
            if o["flag"] == "baseline":
                row += ["baseline", "baseline", "—"]
            else:
                row += [_gain_text(o["reward"]), _gain_text(o["heldout"]), o["flag"]]
            for x in (o["reward"], o["heldout"]):
                if x is None:
                    line += ["", "", "", ""]
                else:
                    sig = "" if x["significant"] is None else x["significant"]
                    line += [render.raw(x["gain"]), render.raw(x["half"]), sig, render.raw(x["std"])]
            line += [o["flag"], base]
        line.append(" ".join(r["dir"].name for r in g["runs"]))
        rows.append(row)
        csv_rows.append(line)
    note = (
        "Each cell: mean ± 95% t-interval over seeds (n seeds); with one seed, over evaluation prompts "
        "(n prompts). ★: the algorithm's best setting (highest gold reward with KL within the budget); †: no "
        "setting of the algorithm is within the budget, this is its lowest-KL one."
    )
    if starting:
        note += f" {', '.join(sorted(starting))}: the starting policy (KL 0), unmarked."
    if base:
        note += (
            f" Δ vs {base}: the setting's mean minus the baseline's, ± the two 95% half-widths combined as "
            f"independent. Over-optimised? yes: the {reward} gain exceeds its ± and the {HELDOUT} gain (a scorer "
            f"that shares nothing with the {reward}) does not, or is under a third of it in standardised units "
            "(each gain over the baseline's per-prompt standard deviation of its metric); no: the reward gain is "
            "not significant or the held-out gain keeps up; —: a metric or its interval is missing."
        )
    return Table("summary", "Summary by algorithm and setting", header, rows, csv_header, csv_rows, note)


def _starting(groups: list[dict]) -> set[str]:
    """The algorithms whose runs leave the starting policy as it is: named in STARTING, or KL 0 at every policy.

    Their policy is the reference (a reward model's run trains only the reward model), so their
    points are the frontiers' common origin, not an algorithm of the comparison.
    """
    out = set()
    by_algo: dict[str, list[float]] = {}
    for g in groups:
        for run in g["runs"]:
            by_algo.setdefault(g["algo"], []).extend(_mean(m, KL) for m in _policies(run).values())
    for algo, kls in by_algo.items():
        if algo in STARTING or (kls and all(k == 0 for k in kls)):
            out.add(algo)
    return out


def _origin(groups: list[dict], reward: str, starting: set[str]) -> dict | None:
    """The starting policy's point, (KL 0, its mean reward over the starting-policy runs), or None without one."""
    values = [
        _mean(r["metrics"], reward)
        for g in groups
        if g["algo"] in starting
        for r in g["runs"]
        if reward in r["metrics"]
    ]
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return None
    return {"kl": 0.0, "reward": math.fsum(values) / len(values), "runs": len(values), "algos": sorted(starting)}


def _frontier(groups: list[dict], reward: str, kl_budget: float | None, starting: set[str]) -> dict | None:
    """Per algorithm: every point, seed-averaged points, front, area with bootstrap CI, bootstrap replicates.

    Also the KL budget, the floor and the origin (the starting policy). Algorithms in `starting`
    are the origin, not algorithms. Each algorithm's points are its (setting, checkpoint) rows,
    lined up across seeds by training progress (_policies); the final policy's per-prompt rewards
    come from samples.jsonl, the checkpoints keep aggregates only.
    """
    per_algo: dict[str, dict] = {}
    key = PER_SAMPLE.get(reward, reward)
    for g in groups:
        if g["algo"] in starting:
            continue
        a = per_algo.setdefault(
            g["algo"], {"algo": g["algo"], "points": [], "rows": [], "seeds": set(), "bound": False}
        )
        rows: dict[float, dict] = {}  # (this setting's) checkpoint -> seed -> point
        for run in g["runs"]:
            seed = run["config"]["seed"]
            a["seeds"].add(seed)
            for at, m in _policies(run).items():
                se = m.get(reward, {}).get("se", math.nan) if isinstance(m.get(reward), dict) else math.nan
                point = {
                    "kl": _mean(m, KL),
                    "reward": _mean(m, reward),
                    "se": float(se) if isinstance(se, (int, float)) else math.nan,
                    "prompts": _per_prompt(run, key) if at == 1.0 else {},
                }
                if isinstance(m.get(KL), dict) and m[KL].get("estimator") == BOUND:
                    a["bound"] = True
                a["points"].append((point["kl"], point["reward"]))
                rows.setdefault(at, {})[seed] = point
        a["rows"] += [rows[at] for at in sorted(rows)]
    algos = []
    for name in sorted(per_algo):
        a = per_algo[name]
        seeds = a["seeds"] = sorted(a["seeds"])
        nan = {"kl": math.nan, "reward": math.nan, "se": math.nan, "prompts": {}}
        cells = [[row.get(s, nan) for s in seeds] for row in a["rows"]]
        kl = np.array([[c["kl"] for c in row] for row in cells], dtype=float)
        rw = np.array([[c["reward"] for c in row] for row in cells], dtype=float)
        ok = np.isfinite(kl) & np.isfinite(rw)
        if not ok.any():
            continue
        with np.errstate(invalid="ignore"):  # 0/0 -> NaN: a point no seed reached
            mean_kl = np.where(ok, kl, 0).sum(1) / ok.sum(1)
            mean_rw = np.where(ok, rw, 0).sum(1) / ok.sum(1)
        a.update(kl=kl, rw=rw, mean_kl=mean_kl, mean_rw=mean_rw, cells=cells)
        a["se"] = np.array([[c["se"] for c in row] for row in cells], dtype=float)
        front = stats.pareto_front(mean_kl.tolist(), mean_rw.tolist())
        a["front"] = [(float(mean_kl[i]), float(mean_rw[i])) for i in front]
        a["points"] = [p for p in a["points"] if math.isfinite(p[0]) and math.isfinite(p[1])]
        a["max_kl"] = float(np.nanmax(np.where(ok.any(1) & np.isfinite(mean_rw), mean_kl, np.nan)))
        algos.append(a)
    if not algos:
        return None
    if kl_budget is None:
        budget = min(a["max_kl"] for a in algos)
    else:
        budget = float(kl_budget)
    origin = _origin(groups, reward, starting)
    # The starting policy is a point of every algorithm's front (training zero steps reaches it), so where a
    # run records it, F(k) starts at its reward; otherwise at the lowest reward of the report.
    floor = origin["reward"] if origin else min(float(np.nanmin(a["mean_rw"])) for a in algos)
    for a in algos:
        a["area"] = stats.bootstrap_front_area(a["kl"], a["rw"], budget, floor, n_boot=N_BOOT, seed=RNG_SEED)
        # Without the origin and without a policy within the budget the area would be floor x budget for
        # any algorithm: a number that compares nothing.
        no_area = (
            "no policy within the KL budget" if origin is None and not any(k <= budget for k, _ in a["front"]) else None
        )
        if no_area:
            a["area"] = {**a["area"], "area": math.nan, "low": math.nan, "high": math.nan}
        bound = ", KL: analytic bound" if a["bound"] else ""
        a["label"] = f"{a['algo']} ({no_area or 'area ' + format(a['area']['area'], '.3g')}{bound})"
    _replicates(algos)
    return {"algos": algos, "budget": budget, "floor": floor, "origin": origin}


def _replicates(algos: list[dict]) -> None:
    """Bootstrap replicates of every algorithm's points (stats.frontier_replicates), stored on each algorithm.

    The prompt draws are one array for all algorithms (so that differences are paired over the
    prompts they share); each algorithm draws its seeds and normal draws from a stream of its own,
    keyed by its name, so an algorithm added to the results (on the same prompts) changes no other
    algorithm's replicates.
    """
    keys = sorted({(i, p) for a in algos for row in a["cells"] for c in row for i, (p, _) in c["prompts"].items()})
    index = {k: j for j, k in enumerate(keys)}
    rng = np.random.default_rng([RNG_SEED, 1])
    weights = np.zeros((N_BOOT, len(keys)))
    if keys:
        np.add.at(weights, (np.arange(N_BOOT)[:, None], rng.integers(0, len(keys), size=(N_BOOT, len(keys)))), 1.0)
    for a in algos:
        values = np.full((len(a["cells"]), len(a["seeds"]), len(keys)), np.nan)
        prompts = set()
        for p, row in enumerate(a["cells"]):
            for s, c in enumerate(row):
                for i, (text, v) in c["prompts"].items():
                    values[p, s, index[(i, text)]] = v
                    prompts.add((i, text))
        a["prompt_keys"] = prompts
        own = np.random.default_rng([RNG_SEED, zlib.crc32(a["algo"].encode("utf-8"))])
        _, _, a["boot_kl"], a["boot_rw"] = stats.frontier_replicates(a["kl"], a["rw"], a["se"], values, weights, own)


def _valid(a: dict) -> np.ndarray:
    """Which of an algorithm's points (rows) have a seed-averaged KL and reward."""
    return np.isfinite(a["mean_kl"]) & np.isfinite(a["mean_rw"])


def _support(a: dict) -> tuple[float, float]:
    kls = a["mean_kl"][_valid(a)]
    return float(kls.min()), float(kls.max())


def _curves(a: dict, at) -> tuple[np.ndarray, np.ndarray]:
    """An algorithm's frontier at the KLs `at`: as observed (G,) and in every replicate (B, G)."""
    return stats.step_frontier(a["mean_kl"], a["mean_rw"], at), stats.step_frontier(a["boot_kl"], a["boot_rw"], at)


def _one_seed(*algos: dict) -> list[str]:
    return [a["algo"] for a in algos if len(a["seeds"]) < 2]


def _matched(a: dict, b: dict) -> dict:
    """A's and B's frontiers compared at matched KL, on the pieces of their common KL support.

    Common support: [lo, hi], lo the larger of their smallest KLs and hi the smaller of their
    largest KLs (seed-averaged points); "support": False where lo > hi. On it, the difference
    d(k) = F_A(k) - F_B(k) of the two step functions is evaluated on every piece where it is
    constant (stats.kl_pieces), with pointwise percentile intervals, a simultaneous 95% band and a
    paired bootstrap p-value per piece (stats.difference_band) over the replicates of
    stats.frontier_replicates (seeds of each algorithm drawn independently, prompts drawn once for
    both, so paired where both have per-prompt values). Verdicts (stats.dominance_verdict) for
    "A >= B at every KL in [lo, hi]" ("ab") and for "B >= A" ("ba"), each with its deciding piece,
    and the KLs where d changes sign ("crossings").
    """
    (lo_a, hi_a), (lo_b, hi_b) = _support(a), _support(b)
    out = {
        "a": a["algo"],
        "b": b["algo"],
        "lo": max(lo_a, lo_b),
        "hi": min(hi_a, hi_b),
        "ranges": ((lo_a, hi_a), (lo_b, hi_b)),
        "seeds": (len(a["seeds"]), len(b["seeds"])),
        "one_seed": _one_seed(a, b),
        "paired_prompts": len(a["prompt_keys"] & b["prompt_keys"]),
        "bound": [x["algo"] for x in (a, b) if x["bound"]],
    }
    if not out["lo"] <= out["hi"]:
        return {**out, "support": False}
    kls = np.concatenate([a["mean_kl"][_valid(a)], b["mean_kl"][_valid(b)]])
    starts, at = stats.kl_pieces(kls.tolist(), out["lo"], out["hi"])
    (fa, fa_boot), (fb, fb_boot) = _curves(a, at), _curves(b, at)
    band = stats.difference_band(fa - fb, fa_boot - fb_boot)
    return {
        **out,
        "support": True,
        "starts": starts,
        "ends": starts[1:] + [out["hi"]],
        "at": at,
        "fa": fa,
        "fb": fb,
        **band,
        "ab": stats.dominance_verdict(band["band_low"], band["band_high"]),
        "ba": stats.dominance_verdict(-band["band_high"], -band["band_low"]),
        "crossings": stats.sign_changes(starts, band["diff"]),
    }


def _flip(m: dict) -> dict:
    """The same comparison seen from B's side (B - A)."""
    out = {**m, "a": m["b"], "b": m["a"], "ranges": m["ranges"][::-1], "seeds": m["seeds"][::-1]}
    if not m["support"]:
        return out
    return {
        **out,
        "fa": m["fb"],
        "fb": m["fa"],
        "diff": -m["diff"],
        "low": -m["high"],
        "high": -m["low"],
        "band_low": -m["band_high"],
        "band_high": -m["band_low"],
        "ab": m["ba"],
        "ba": m["ab"],
    }


def _kl(x: float) -> str:
    """A KL in the text: three significant digits, so small KLs stay apart."""
    return "–" if not math.isfinite(x) else f"{x:.3g}"


def _kl_span(start: float, end: float) -> str:
    return _kl(start) if end <= start else f"{_kl(start)}–{_kl(end)}"


def _at_piece(m: dict, j: int) -> dict:
    """The numbers of one piece of a comparison: its KL span, difference, band and p."""
    return {
        "kl": _kl_span(m["starts"][j], m["ends"][j]),
        "start": m["starts"][j],
        "diff": float(m["diff"][j]),
        "band_low": float(m["band_low"][j]),
        "band_high": float(m["band_high"][j]),
        "p": float(m["p"][j]),
    }


def _delta(x: dict) -> str:
    return f"{x['diff']:+.3f} [{render.num(x['band_low'])}, {render.num(x['band_high'])}] at KL {x['kl']}"


def _caveats(m: dict) -> str:
    notes = []
    if m["one_seed"]:
        notes.append(f"one seed of {', '.join(m['one_seed'])}: interval over prompts only")
    if m["bound"]:
        notes.append(f"{', '.join(m['bound'])} plotted at its KL bound")
    return "; ".join(notes)


def _matched_tables(front: dict, reward: str) -> tuple[Table, Table, dict]:
    """The per-pair table, the per-piece table (CSV) and the comparisons by ordered pair."""
    algos = front["algos"]
    pairs: dict[tuple[str, str], dict] = {}
    rows, csv_rows, grid_rows = [], [], []
    for x in range(len(algos)):
        for y in range(x + 1, len(algos)):
            m = _matched(algos[x], algos[y])
            pairs[(m["a"], m["b"])], pairs[(m["b"], m["a"])] = m, _flip(m)
            seeds = f"{m['seeds'][0]} / {m['seeds'][1]}"
            prompts = str(m["paired_prompts"]) if m["paired_prompts"] else "–"
            if not m["support"]:
                (la, ha), (lb, hb) = m["ranges"]
                note = f"no common KL support ({m['a']} {_kl_span(la, ha)}, {m['b']} {_kl_span(lb, hb)} nats)"
                rows.append(
                    [
                        m["a"],
                        m["b"],
                        note,
                        "0",
                        "undecided",
                        "undecided",
                        "–",
                        "–",
                        "–",
                        "–",
                        seeds,
                        prompts,
                        _caveats(m),
                    ]
                )
                csv_rows.append(
                    [m["a"], m["b"], "", "", 0, "undecided", "undecided", "", "", "", "", "", "", "", "", "", ""]
                    + [m["seeds"][0], m["seeds"][1], m["paired_prompts"], note]
                )
                continue
            lowest, highest = _at_piece(m, int(np.argmin(m["diff"]))), _at_piece(m, int(np.argmax(m["diff"])))
            crossings = ", ".join(_kl(k) for k in m["crossings"]) or "–"
            rows.append(
                [
                    m["a"],
                    m["b"],
                    _kl_span(m["lo"], m["hi"]),
                    str(len(m["at"])),
                    m["ab"][0],
                    m["ba"][0],
                    crossings,
                    _delta(lowest),
                    _delta(highest),
                    f"{render.p_value(lowest['p'])} / {render.p_value(highest['p'])}",
                    seeds,
                    prompts,
                    _caveats(m),
                ]
            )
            csv_rows.append(
                [m["a"], m["b"], render.raw(m["lo"]), render.raw(m["hi"]), len(m["at"]), m["ab"][0], m["ba"][0]]
                + [" ".join(repr(k) for k in m["crossings"])]
                + [render.raw(lowest[k]) for k in ("start", "diff", "band_low", "band_high", "p")]
                + [render.raw(highest[k]) for k in ("start", "diff", "band_low", "band_high")]
                + [m["seeds"][0], m["seeds"][1], m["paired_prompts"], _caveats(m)]
            )
            for j in range(len(m["at"])):
                grid_rows.append(
                    [m["a"], m["b"], render.raw(m["starts"][j]), render.raw(m["ends"][j]), render.raw(m["at"][j])]
                    + [render.raw(float(m[k][j])) for k in ("fa", "fb", "diff", "low", "high", "band_low")]
                    + [render.raw(float(m["band_high"][j])), render.raw(float(m["p"][j]))]
                )
    table = Table(
        "matched_kl",
        f"Frontiers compared at matched KL ({reward}, A − B)",
        [
            "A",
            "B",
            "common KL (nats)",
            "pieces",
            "A ≥ B at every KL",
            "B ≥ A at every KL",
            "cross at KL",
            "lowest Δ [95% band]",
            "highest Δ [95% band]",
            "p (lowest / highest)",
            "seeds A / B",
            "paired prompts",
            "notes",
        ],
        rows,
        [
            "a",
            "b",
            "kl_lo",
            "kl_hi",
            "pieces",
            "a_ge_b",
            "b_ge_a",
            "crossings",
            "lowest_kl",
            "lowest_diff",
            "lowest_band_low",
            "lowest_band_high",
            "lowest_p",
            "highest_kl",
            "highest_diff",
            "highest_band_low",
            "highest_band_high",
            "seeds_a",
            "seeds_b",
            "paired_prompts",
            "note",
        ],
        csv_rows,
        f"F(k): an algorithm's best seed-averaged {reward} among its points (all settings, all evaluated "
        "checkpoints) with KL ≤ k. Common KL: from the larger of the two smallest KLs to the smaller of the two "
        "largest; Δ(k) = F_A(k) − F_B(k) on every piece of it where both are constant (each piece evaluated at its "
        "midpoint, the last at the range's end; every value Δ takes there is shown in matched_kl_grid.csv). "
        f"Bootstrap ({N_BOOT} replicates, seed {RNG_SEED}): each algorithm's seeds drawn with replacement, and "
        "within a seed the evaluation prompts, drawn once for both algorithms (paired) where the record keeps "
        "per-prompt values (final policies); a checkpoint, which keeps only its mean and standard error, moves by "
        "a normal draw. KL moves with the seed draw only. Band: simultaneous 95% over the pieces (bootstrap "
        "sup-t). A ≥ B at every KL: holds when the band lies above 0 on every piece, fails when it lies below 0 "
        "on some piece, undecided otherwise. p: paired bootstrap test at that piece (2 × the smaller share of "
        "replicates on either side of 0), not adjusted over pieces. Cross at KL: where the observed Δ changes "
        "sign. Best-of-N is placed at its KL bound, right of its true KL, which can only understate it.",
    )
    grid = Table(
        "matched_kl_grid",
        "Matched-KL differences on every piece",
        [],
        [],
        [
            "a",
            "b",
            "piece_start",
            "piece_end",
            "kl",
            "a_reward",
            "b_reward",
            "diff",
            "ci_low",
            "ci_high",
            "band_low",
            "band_high",
            "p",
        ],
        grid_rows,
    )
    return table, grid, pairs


def _competitive(front: dict) -> dict:
    """Claim (c): is best-of-N within a margin of the best other method at low KL?

    - The best method at KL k: E(k) = the highest F_m(k) over the other algorithms m whose
      frontier is defined at k (their smallest KL <= k), so the best may differ along KL.
    - Low KL: the lowest quarter [lo, lo + (hi - lo) / 4] of the common support [lo, hi] of
      best-of-N and E (lo: the larger of their smallest KLs, hi: the smaller of their largest).
    - Competitive: best-of-N's frontier minus E stays above -margin, margin = COMPETITIVE_MARGIN x
      the largest gain over the starting policy that any other algorithm reaches (over the lowest
      reward of the report when no run records the starting policy). Verdict from the
      simultaneous band of F_bon - E over the low-KL pieces (stats.dominance_verdict with that
      margin); E is recomputed in every replicate, so the choice of the best is part of the interval.
    """
    algos = {a["algo"]: a for a in front["algos"]}
    if BEST_OF_N not in algos:
        return {"missing": [BEST_OF_N]}
    bon, others = algos[BEST_OF_N], [a for a in front["algos"] if a["algo"] != BEST_OF_N]
    if not others:
        return {"missing": ["another algorithm"]}
    lo_b, hi_b = _support(bon)
    lo_e, hi_e = min(_support(a)[0] for a in others), max(_support(a)[1] for a in others)
    out = {
        "lo": max(lo_b, lo_e),
        "hi": min(hi_b, hi_e),
        "ranges": ((lo_b, hi_b), (lo_e, hi_e)),
        "one_seed": _one_seed(bon, *others),
        "bound": [a["algo"] for a in front["algos"] if a["bound"]],
    }
    if not out["lo"] <= out["hi"]:
        return {**out, "support": False}
    out["q"] = out["lo"] + (out["hi"] - out["lo"]) / 4
    kls = np.concatenate([a["mean_kl"][_valid(a)] for a in front["algos"]])
    starts, at = stats.kl_pieces(kls.tolist(), out["lo"], out["q"])
    fb, fb_boot = _curves(bon, at)
    curves, boots = [], []
    for a in others:
        f, f_boot = _curves(a, at)
        undefined = _support(a)[0] > np.asarray(at)
        curves.append(np.where(undefined, np.nan, f))
        boots.append(np.where(undefined, np.nan, f_boot))
    curves, boots = np.array(curves), np.array(boots)
    best = np.argmax(np.where(np.isfinite(curves), curves, -np.inf), axis=0)
    with np.errstate(invalid="ignore"):
        envelope = np.nanmax(np.where(np.isfinite(curves), curves, -np.inf), axis=0)
        boot = np.max(np.where(np.isfinite(boots), boots, -np.inf), axis=0)
    boot = np.where(np.isfinite(boot), boot, np.nan)
    band = stats.difference_band(fb - envelope, fb_boot - boot)
    top = max(float(np.nanmax(a["mean_rw"])) for a in others)
    origin = front["origin"]
    base = origin["reward"] if origin else min(float(np.nanmin(a["mean_rw"])) for a in front["algos"])
    margin = COMPETITIVE_MARGIN * max(top - base, 0.0)
    verdict, j = stats.dominance_verdict(band["band_low"], band["band_high"], margin)
    return {
        **out,
        "support": True,
        "starts": starts,
        "ends": starts[1:] + [out["q"]],
        "at": at,
        **band,
        "margin": margin,
        "verdict": verdict,
        "index": j,
        "best": [others[i]["algo"] for i in best],
    }


CLAIMS = (
    (
        "a",
        "dpo",
        "ppo",
        "DPO's frontier dominates PPO's: DPO ≥ PPO at every KL of their common range",
        "sentiment: DPO's frontier dominates PPO's (about 0.9 reward at KL 1–2; PPO needs far larger KL)",
    ),
    (
        "b",
        "dpo",
        "ppo-gt",
        "DPO dominates even PPO on the gold reward: DPO ≥ PPO-GT at every common KL",
        "sentiment: DPO's frontier dominates even PPO-GT's",
    ),
    (
        "c",
        BEST_OF_N,
        None,
        "Best-of-N is competitive with the best method at low KL",
        "best-of-N is a strong baseline (best-of-128 close to DPO on TL;DR and dialogue); "
        "the paper does not put it on the sentiment frontier",
    ),
    (
        "d",
        "dpo",
        "unlikelihood",
        "Unlikelihood stays low: below DPO at every common KL",
        "sentiment frontier figure: unlikelihood below DPO",
    ),
    (
        "d",
        "dpo",
        "preferred-ft",
        "Preferred-FT stays low: below DPO at every common KL",
        "sentiment frontier figure: preferred-FT below DPO",
    ),
)
"""The DPO paper's controlled-sentiment findings: (id, A, B, the claim "A >= B at every common KL", the paper's)."""

AGREES = {
    "holds": "yes",
    "fails": "no: this task disagrees with the paper",
    "undecided": "not decided",
    "not tested": "not tested here",
}
"""The claims table's "agrees with the paper" column for each verdict. "not tested": the results hold no run of an
algorithm the claim names (a sweep without it, as `--preset modern` without unlikelihood), which says nothing of the
claim, unlike "undecided", where the runs are there and their bands cannot tell."""


def _claim_pair(m: dict) -> tuple[str, str, dict | None]:
    """Verdict, reason and deciding piece of "A >= B at every KL in the common range"."""
    if not m["support"]:
        (la, ha), (lb, hb) = m["ranges"]
        return (
            "undecided",
            f"no common KL support ({m['a']} {_kl_span(la, ha)}, {m['b']} {_kl_span(lb, hb)} nats)",
            None,
        )
    verdict, j = m["ab"]
    x = _at_piece(m, j)
    span = _kl_span(m["lo"], m["hi"])
    if verdict == "holds":
        reason = f"{m['a']} above {m['b']} at every KL in {span} nats; its smallest lead at KL {x['kl']}"
    elif verdict == "fails":
        reason = f"{m['b']} above {m['a']} at KL {x['kl']}"
        if m["crossings"]:
            reason += f"; the frontiers cross at KL {', '.join(_kl(k) for k in m['crossings'])}"
    else:
        reason = f"the band includes 0 at KL {x['kl']}, and {m['b']} is nowhere significantly above {m['a']}"
    return verdict, reason, x


def _claims(front: dict | None, pairs: dict, reward: str | None, ran: set[str]) -> Table:
    """The CLAIMS on these runs; `ran`: every algorithm with a complete run, on the frontier or not."""
    rows, csv_rows = [], []
    present = {a["algo"] for a in front["algos"]} if front else set()
    for cid, a, b, claim, paper in CLAIMS:
        x, span, caveats = None, "–", ""
        if not_run := [n for n in (a, b) if n and n not in ran]:
            verdict, reason = "not tested", f"no runs of {', '.join(not_run)} in these results"
        elif front is None:
            verdict, reason = "undecided", f"no frontier: the runs record no {KL} and {reward or 'reward'} together"
        elif missing := [n for n in (a, b) if n and n not in present]:
            verdict, reason = "undecided", f"no runs of {', '.join(missing)} with {KL} and {reward}"
        elif cid == "c":
            c = _competitive(front)
            caveats = _caveats(c) if "missing" not in c else ""
            if "missing" in c:
                verdict, reason = "undecided", f"no runs of {', '.join(c['missing'])}"
            elif not c["support"]:
                (lb, hb), (le, he) = c["ranges"]
                verdict = "undecided"
                reason = (
                    f"no common KL support ({BEST_OF_N} {_kl_span(lb, hb)}, the other "
                    f"algorithms {_kl_span(le, he)} nats)"
                )
            else:
                verdict, j = c["verdict"], c["index"]
                x = _at_piece(c, j)
                span = _kl_span(c["lo"], c["q"])
                best, margin = c["best"][j], render.num(c["margin"])
                reason = {
                    "holds": f"{BEST_OF_N} within {margin} of the best method or above it at every KL in {span} "
                    f"nats; closest call at KL {x['kl']} (best: {best})",
                    "fails": f"{BEST_OF_N} more than {margin} below the best method ({best}) at KL {x['kl']}",
                    "undecided": f"the band reaches more than {margin} below the best method ({best}) at KL "
                    f"{x['kl']}, and nowhere lies entirely below that",
                }[verdict]
        else:
            m = pairs[(a, b)]
            verdict, reason, x = _claim_pair(m)
            caveats = _caveats(m)
            if m["support"]:
                span = _kl_span(m["lo"], m["hi"])
        if caveats:
            reason += f" ({caveats})"
        rows.append(
            [
                cid,
                claim,
                paper,
                verdict,
                AGREES[verdict],
                span,
                f"{x['diff']:+.3f} [{render.num(x['band_low'])}, {render.num(x['band_high'])}]" if x else "–",
                render.p_value(x["p"]) if x else "–",
                reason,
            ]
        )
        csv_rows.append(
            [cid, a, b or "", claim, verdict, {"holds": "yes", "fails": "no"}.get(verdict, "")]
            + ([render.raw(x[k]) for k in ("start", "diff", "band_low", "band_high", "p")] if x else [""] * 5)
            + [reason]
        )
    return Table(
        "claims",
        "The DPO paper's sentiment findings, tested on these runs",
        [
            "",
            "claim",
            "the paper",
            "verdict",
            "agrees with the paper",
            "KL (nats)",
            "deciding Δ [95% band]",
            "p",
            "why",
        ],
        rows,
        ["claim", "a", "b", "text", "verdict", "agrees", "kl", "diff", "band_low", "band_high", "p", "reason"],
        csv_rows,
        "(a), (b), (d): the matched-KL comparison of the two frontiers (see below) over their common KL range: "
        "holds when the simultaneous 95% band of Δ = A − B lies above 0 on every piece of it, fails when it lies "
        "below 0 on some piece, undecided otherwise. Deciding Δ: for fails the piece with the lowest band, "
        "otherwise the piece whose band reaches lowest. (c): low KL is the lowest quarter of the KL range where "
        "best-of-N and the other algorithms (from the larger of their smallest KLs to the smaller of their largest); "
        "the best method at each KL is the highest of the other algorithms' frontiers there; competitive means "
        "best-of-N is at most "
        f"{COMPETITIVE_MARGIN:g} × (the largest gain over the starting policy any other algorithm reaches) below "
        "it: holds when the band of best-of-N − best lies above minus that margin on every low-KL piece, fails "
        "when it lies below it on some piece. Best-of-N is placed at its KL bound, which can only understate it. "
        "Not tested: these results hold no run of an algorithm the claim names.",
    )


def _frontier_table(front: dict, reward: str) -> Table:
    rows, csv_rows = [], []
    for a in front["algos"]:
        ar = a["area"]
        ci = "–" if not math.isfinite(ar["low"]) else f"[{render.num(ar['low'])}, {render.num(ar['high'])}]"
        within = [p for p in a["front"] if p[0] <= front["budget"]]
        kl = BOUND if a["bound"] else "measured"
        lo, hi = _support(a)
        rows.append(
            [
                a["algo"],
                str(len(a["points"])),
                str(len(a["front"])),
                str(ar["seeds"]),
                _kl_span(lo, hi),
                kl,
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
                render.raw(lo),
                render.raw(hi),
                kl,
                render.raw(front["budget"]),
                render.raw(front["floor"]),
                render.raw(ar["area"]),
                render.raw(ar["low"]),
                render.raw(ar["high"]),
                render.raw(max((p[1] for p in within), default=math.nan)),
            ]
        )
    origin = front["origin"]
    start = (
        f"The starting policy (the reference, KL 0; runs of {', '.join(origin['algos'])}) is the frontiers' common "
        f"origin, {reward} {origin['reward']:.3g}, and not an algorithm here. "
        if origin
        else "No run records the starting policy (e.g. a reward-model run), so the origin is not drawn. "
    )
    return Table(
        "frontier",
        f"Area under the {reward}-vs-KL front up to KL {front['budget']:.3g} nats",
        [
            "algorithm",
            "points",
            "front points",
            "seeds",
            "KL range (nats)",
            "KL",
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
            "kl_min",
            "kl_max",
            "kl_estimator",
            "kl_budget",
            "floor",
            "area",
            "ci_low",
            "ci_high",
            "best_reward_within_budget",
        ],
        csv_rows,
        start
        + f"Area = ∫₀^B F(k) dk, F(k) = best seed-averaged {reward} reached at KL ≤ k, and {front['floor']:.3g} "
        + (
            "(the starting policy's, which every front starts from) below an algorithm's first point and wherever "
            f"its points are lower; B = {front['budget']:.3g} nats. "
            if origin
            else f"(the lowest reward in this report) below an algorithm's first point; B = {front['budget']:.3g} "
            "nats; – where no policy of the algorithm is within B (evaluate intermediate checkpoints, "
            "run.eval_checkpoints, or pass --kl-budget). "
        )
        + f"KL: {BOUND} where the record gives the analytic bound of best-of-N, log N − (N − 1)/N, "
        "an upper bound on its KL, at which its points are placed. "
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


def _pairwise(
    groups: list[dict], best: dict[str, int], over: set[str], metrics: list[str], starting: set[str]
) -> Table | None:
    algos = sorted(set(best) - starting)
    if len(algos) < 2:
        return None
    # The held-out scorer beside the gold reward: whether a gold win transfers, with the same paired test.
    keys = [m for m in ("gold_reward", HELDOUT, "judge_win_rate") if m in metrics]
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
        "Pairwise comparisons of each algorithm's best setting (at unmatched KL)",
        header,
        rows,
        csv_header,
        csv_rows,
        "Per prompt: mean over its samples, averaged over the seeds both settings have; Δ = mean over prompts. "
        "CI: percentile bootstrap over prompts. p: paired sign-flip permutation test over prompts (scipy); "
        f"Holm-adjusted over the {len(results)} pairs, per metric; verdict at α = {ALPHA}. Compare the KLs too: the "
        "two settings are each algorithm's best within the KL budget (or its lowest-KL one, †), not equal in KL: "
        "the matched-KL comparison above is the one that compares frontiers.",
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
    starting = _starting(groups)
    report = Report(
        task,
        [
            f"Task {task}: {len(runs)} complete runs, {len(groups)} settings of {len(algos)} "
            f"algorithms ({', '.join(algos)})."
        ],
    )
    front = report.frontier = _frontier(groups, reward, kl_budget, starting) if reward and KL in metrics else None
    budget = front["budget"] if front else None
    best, over = _best(groups, reward, budget)
    overopt = _overoptimisation(groups, best, reward, starting)
    report.tables["summary"] = _summary(groups, metrics, best, over, overopt, reward, starting)
    pairs: dict = {}
    if front:
        report.tables["frontier"] = _frontier_table(front, reward)
        label = "gold reward" if reward == REWARD else reward
        report.figures["frontier.png"] = plots.frontier_png(
            task, label, front["algos"], front["budget"], front["origin"]
        )
        missing = sorted(set(algos) - starting - {a["algo"] for a in front["algos"]})
        if missing:
            report.frontier_note = f"Not on the frontier (no KL or reward recorded): {', '.join(missing)}."
        if len(front["algos"]) >= 2:
            report.tables["matched_kl"], report.tables["matched_kl_grid"], pairs = _matched_tables(front, reward)
    else:
        report.frontier_note = f"No frontier: the runs record no {KL} and {reward or 'reward'} together."
    report.tables["claims"] = _claims(front, pairs, reward, set(algos))
    pairwise = _pairwise(groups, best, over, metrics, starting)
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
            or p.name
            in {"frontier.png"}
            | {f"{n}.{ext}" for n in [n for n, _ in render.SECTIONS] + list(render.CSV_ONLY) for ext in ("csv", "tex")}
        )
    ]
    for p in stale:
        p.unlink()
    for name in sorted(files):
        data = files[name]
        bench_io.atomic_write_bytes(out / name, data if isinstance(data, bytes) else data.encode("utf-8"))
    return [out / name for name in sorted(files)]
