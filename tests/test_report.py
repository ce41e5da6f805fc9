"""`bench report` on synthetic run records whose answers are known by construction."""

from __future__ import annotations

import csv
import hashlib
import json
import math

import numpy as np
import pytest

from bench import io as bench_io
from bench import records
from bench.cli import main
from bench.report import build, write_report
from bench.stats import ci95_halfwidth, mean_se, paired_difference

PROMPTS = [f"prompt number {i}" for i in range(12)]


def fake_run(
    results,
    algo,
    seed,
    *,
    setting=None,
    reward,
    kl,
    checkpoints=(),
    task="sentiment",
    log=None,
    cost=None,
    judge=None,
    complete=True,
    extra=None,
    kl_estimator=None,
):
    """A run directory in the harness's format.

    `reward` and `kl`: per-prompt values (one sample per prompt); metrics.json holds their means
    and standard errors over prompts. `checkpoints`: (kl, reward) of intermediate policies.
    `judge`: per-prompt judge verdicts (1 win, 0 loss, 0.5 tie, NaN not judged), as the judge evaluator writes.
    `extra`: {metric: per-prompt values} of further evaluators (e.g. heldout_sentiment), written as `reward` is.
    `kl_estimator`: the kl aggregate's "estimator" (best-of-N's "analytic bound"); its samples then carry no kl.
    """
    setting = setting or {}
    config = {
        "seed": seed,
        "task": {"name": task, "scale": "tiny"},
        "algo": {"name": algo, **setting},
        "train": {"lr": 1e-4},
        "eval": {"temperature": 1.0},
        "data": {},
        "run": {},
        "evaluators": {},
    }
    name = records.run_name(task, algo, hashlib.sha256(json.dumps([algo, seed, setting]).encode()).hexdigest()[:12])
    d = results / name
    bench_io.atomic_write_json(
        d / "config.json",
        {"run_id": name[-12:], "name": name, "config": config, "git_revision": "0123abc", "versions": {}},
    )
    samples = [
        {
            "prompt_index": i,
            "prompt": PROMPTS[i],
            "completion": f"{algo} says {i}",
            "completion_ids": [1, 2],
            "gold_reward": float(r),
            "kl": float(k),
            "length": 2.0,
        }
        for i, (r, k) in enumerate(zip(reward, kl))
    ]
    for key, values in (extra or {}).items():
        for s, v in zip(samples, values):
            s[key] = float(v)
    if kl_estimator is not None:
        for s in samples:
            del s["kl"]
    metrics = {"n_prompts": len(samples), "n_samples": len(samples)}
    if judge is not None:
        for s, v in zip(samples, judge):
            s["judge_win"] = float(v)
        metrics["judge_win_rate"] = {
            **mean_se([v for v in judge if v == v]),
            "higher_is_better": True,
            "evaluator": "judge",
        }
    bench_io.write_jsonl(d / "samples.jsonl", samples)
    for key in ("gold_reward", "length", *(extra or {})):
        metrics[key] = {
            **mean_se([s[key] for s in samples]),
            "higher_is_better": key != "length",
            "evaluator": key,
        }
    metrics["kl"] = {**mean_se([float(k) for k in kl]), "higher_is_better": False, "evaluator": "kl"}
    if kl_estimator is not None:
        metrics["kl"].update(se=0.0, estimator=kl_estimator)
    bench_io.atomic_write_json(d / "metrics.json", metrics)
    rows = [
        {
            "step": 10 * (j + 1),
            "total_steps": 10 * (len(checkpoints) + 1),
            "metrics": {"kl": {"mean": k, "se": 0.0, "n": 12}, "gold_reward": {"mean": r, "se": 0.0, "n": 12}},
        }
        for j, (k, r) in enumerate(checkpoints)
    ]
    rows.append(
        {
            "step": 10 * (len(checkpoints) + 1),
            "total_steps": 10 * (len(checkpoints) + 1),
            "final": True,
            "metrics": metrics,
        }
    )
    bench_io.write_jsonl(d / "checkpoints.jsonl", rows)
    bench_io.write_jsonl(
        d / "train_log.jsonl",
        log
        or [{"step": s, "epoch": s / 10, "lr": 1e-4, "loss": 1.0 / s, "rewards/margins": 0.1 * s} for s in (1, 2, 3)],
    )
    bench_io.atomic_write_json(
        d / "cost.json", cost or {"wall_time_s": {"build": 1.0, "fit": 2.0}, "preference_labels": 100}
    )
    if complete:
        (d / records.COMPLETE).write_text("")
    return d


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_summary_cells_are_means_with_t_intervals_and_best_setting_is_marked(tmp_path):
    base = np.linspace(0.3, 0.6, 12)
    for seed, shift in enumerate((0.0, 0.1, 0.2)):  # seed means of reward: mean(base) + 0.0 / 0.1 / 0.2
        fake_run(tmp_path, "dpo", seed, setting={"beta": 0.1}, reward=base + shift, kl=np.full(12, 1.0))
        fake_run(tmp_path, "dpo", seed, setting={"beta": 1.0}, reward=base + 0.5, kl=np.full(12, 5.0))
    single = fake_run(tmp_path, "sft", 0, reward=base, kl=np.full(12, 0.5))
    out = tmp_path / "report"
    write_report(tmp_path, "sentiment", out, kl_budget=2.0)
    rows = {(r["algorithm"], r["setting"]): r for r in _csv(out / "summary.csv")}
    low = rows[("dpo", "beta=0.1")]
    m = float(np.mean(base)) + 0.1
    half = ci95_halfwidth(0.1 / math.sqrt(3), 3)  # SE over seeds of m-0.1, m, m+0.1 is 0.1/sqrt(3)
    assert float(low["gold_reward_mean"]) == pytest.approx(m)
    assert float(low["gold_reward_ci_high"]) == pytest.approx(m + half)
    assert low["gold_reward_n"] == "3" and low["gold_reward_n_unit"] == "seeds"
    # One seed: the interval is over prompts.
    sft = rows[("sft", "default")]
    se = float(np.std(base, ddof=1) / math.sqrt(12))
    assert float(sft["gold_reward_ci_low"]) == pytest.approx(float(np.mean(base)) - ci95_halfwidth(se, 12))
    assert sft["gold_reward_n_unit"] == "prompts" and sft["runs"] == single.name
    # beta=1 has the higher reward but KL 5 > budget 2: beta=0.1 is dpo's best within the budget.
    assert low["best"] == "best" and rows[("dpo", "beta=1.0")]["best"] == "" and sft["best"] == "best"
    md = (out / "report.md").read_text()
    assert "| ★ | dpo | beta=0.1 | 3 |" in md and "| | dpo | beta=1.0 | 3 |" in md.replace("|  |", "| |")
    # With a budget above every KL the higher-reward setting wins.
    write_report(tmp_path, "sentiment", out, kl_budget=10.0)
    assert {r["setting"] for r in _csv(out / "summary.csv") if r["best"] == "best"} == {"beta=1.0", "default"}
    # With a budget below every dpo KL its lowest-KL setting stands in, marked as over the budget.
    write_report(tmp_path, "sentiment", out, kl_budget=0.7)
    assert {r["setting"]: r["best"] for r in _csv(out / "summary.csv") if r["algorithm"] == "dpo"} == {
        "beta=0.1": "over_budget",
        "beta=1.0": "",
    }
    assert "| † | dpo | beta=0.1 |" in (out / "report.md").read_text()


def test_frontier_front_and_area_with_bootstrap_over_seeds(tmp_path):
    flat = np.full(12, 0.0)
    # dpo: checkpoints then the final policy; seed means (1.1, .55), (1.5, .45) dominated, (2.1, .85).
    fake_run(tmp_path, "dpo", 0, checkpoints=[(1.0, 0.5), (1.5, 0.45)], reward=flat + 0.8, kl=flat + 2.0)
    fake_run(tmp_path, "dpo", 1, checkpoints=[(1.2, 0.6), (1.5, 0.45)], reward=flat + 0.9, kl=flat + 2.2)
    fake_run(tmp_path, "sft", 0, reward=flat + 0.4, kl=flat + 0.5)
    fake_run(tmp_path, "sft", 1, reward=flat + 0.4, kl=flat + 0.5)
    report = build(tmp_path, "sentiment", kl_budget=3.0)
    fronts = {a["algo"]: a for a in report.frontier["algos"]}
    assert np.allclose(fronts["dpo"]["front"], [(1.1, 0.55), (2.1, 0.85)]) and len(fronts["dpo"]["points"]) == 6
    rows = {r["algorithm"]: r for r in _rows(report.tables["frontier"])}
    # floor = lowest seed-mean reward of the report (0.4); areas by hand:
    assert rows["dpo"]["area"] == pytest.approx(0.4 * 1.1 + 0.55 * 1.0 + 0.85 * 0.9)
    assert rows["sft"]["area"] == pytest.approx(0.4 * 3.0) and rows["sft"]["ci_low"] == pytest.approx(1.2)
    # Bootstrap over 2 seeds: the extremes are seed 0 twice (0.4 + 0.5 + 0.8) and seed 1 twice (0.48 + 0.6 + 0.72).
    assert rows["dpo"]["ci_low"] == pytest.approx(1.7) and rows["dpo"]["ci_high"] == pytest.approx(1.8)
    assert rows["dpo"]["front_points"] == 2
    # Default budget: the smallest of the algorithms' largest KLs (sft's 0.5).
    default = build(tmp_path, "sentiment")
    assert default.frontier["budget"] == pytest.approx(0.5)
    # No dpo policy has KL <= 0.5: no area (floor x budget would compare nothing), said so in table and legend.
    rows = {r["algorithm"]: r for r in _rows(default.tables["frontier"])}
    assert rows["dpo"]["area"] == "" and rows["sft"]["area"] == pytest.approx(0.4 * 0.5)
    assert "no policy within the KL budget" in {a["algo"]: a for a in default.frontier["algos"]}["dpo"]["label"]
    # A run that leaves the policy unchanged (a reward model's: KL 0) is the starting point, the common
    # origin: not an algorithm of the frontier, matched-KL or pairwise tables, and it does not pull the
    # budget to 0 (doing nothing would otherwise "win" at a small budget).
    fake_run(tmp_path, "reward-model", 0, reward=flat + 0.45, kl=flat)
    with_rm = build(tmp_path, "sentiment")
    assert with_rm.frontier["budget"] == pytest.approx(0.5)
    assert with_rm.frontier["origin"]["reward"] == pytest.approx(0.45) and with_rm.frontier["origin"]["kl"] == 0
    rows = {r["algorithm"]: r for r in _rows(with_rm.tables["frontier"])}
    # The origin is on every front: F starts at its 0.45, which sft's lower 0.4 does not pull down, and dpo,
    # with no policy within the budget, gets the origin's area rather than none.
    assert set(rows) == {"dpo", "sft"} and rows["sft"]["area"] == pytest.approx(0.45 * 0.5)
    assert rows["dpo"]["area"] == pytest.approx(0.45 * 0.5)
    assert all(float(r["floor"]) == pytest.approx(0.45) for r in rows.values())
    assert not any("no policy within" in a["label"] for a in with_rm.frontier["algos"])
    with_budget = {r["algorithm"]: r for r in _rows(build(tmp_path, "sentiment", kl_budget=3.0).tables["frontier"])}
    assert with_budget["dpo"]["area"] == pytest.approx(0.45 * 1.1 + 0.55 * 1.0 + 0.85 * 0.9)
    assert {a["algo"] for a in with_rm.frontier["algos"]} == {"dpo", "sft"}
    for name in ("pairwise", "matched_kl", "matched_kl_grid"):
        t = with_rm.tables[name]
        assert not any("reward-model" in (row[0], row[1]) for row in t.csv_rows), name
    assert "reward-model" in {row[0] for row in with_rm.tables["summary"].csv_rows}  # still a run of the report
    assert "starting policy" in with_rm.tables["frontier"].note


def test_checkpoints_line_up_across_seeds_by_training_progress(tmp_path):
    flat = np.full(12, 0.0)
    fake_run(tmp_path, "sft", 0, checkpoints=[(0.2, 0.3)], reward=flat + 0.5, kl=flat + 0.6)  # half way, then final
    fake_run(tmp_path, "sft", 1, reward=flat + 0.7, kl=flat + 0.8)  # evaluated only at the end
    (sft,) = build(tmp_path, "sentiment").frontier["algos"]
    # The final policies average with each other, not with seed 0's half-way checkpoint.
    assert np.allclose(sft["front"], [(0.2, 0.3), (0.7, 0.6)])


def _rows(t):
    return [dict(zip(t.csv_header, row)) for row in t.csv_rows]


def test_pairwise_decisions_match_a_direct_paired_test(tmp_path):
    rng = np.random.default_rng(3)
    base = rng.uniform(0.2, 0.7, size=12)
    cancel = np.array([0.04, -0.04, 0.02, -0.02, 0.03, -0.03, 0.01, -0.01, 0.05, -0.05, 0.02, -0.02])
    wins = np.array([1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0.5, math.nan])
    for seed in (0, 1):
        fake_run(tmp_path, "sft", seed, reward=base, kl=np.full(12, 0.5), judge=np.roll(1 - wins, seed))
        fake_run(tmp_path, "dpo", seed, reward=base + 0.2 + rng.normal(0, 0.01, 12), kl=np.full(12, 1.0), judge=wins)
        # preferred-ft differs from sft by amounts that cancel within each seed: no difference.
        fake_run(
            tmp_path, "preferred-ft", seed, reward=base + (cancel if seed == 0 else -cancel[::-1]), kl=np.full(12, 0.7)
        )
    report = build(tmp_path, "sentiment", kl_budget=2.0)
    pairs = {(r["a"], r["b"]): r for r in _rows(report.tables["pairwise"])}
    assert set(pairs) == {("dpo", "preferred-ft"), ("dpo", "sft"), ("preferred-ft", "sft")}
    differs, same = pairs[("dpo", "sft")], pairs[("preferred-ft", "sft")]
    assert differs["gold_reward_verdict"] == "dpo higher (at higher KL)" and differs["gold_reward_p_holm"] < 0.05
    assert same["gold_reward_verdict"] == "no significant difference" and same["gold_reward_p"] > 0.5
    assert differs["gold_reward_prompts"] == 12 and differs["gold_reward_seeds"] == 2
    # The same numbers as a paired test on per-prompt values averaged over the two seeds.
    runs = {}
    for d in records.complete_runs(tmp_path):
        rows = bench_io.read_jsonl(d / "samples.jsonl")
        algo = d.name.split("-")[1] if not d.name.startswith("sentiment-preferred") else "preferred-ft"
        runs.setdefault(algo, []).append(np.array([r["gold_reward"] for r in rows]))
    direct = paired_difference(np.mean(runs["dpo"], axis=0), np.mean(runs["sft"], axis=0), seed=0)
    assert differs["gold_reward_diff"] == pytest.approx(direct["diff"]) and differs["gold_reward_p"] == pytest.approx(
        direct["p"]
    )
    # Judge win rates are compared on the prompts judged in both runs of a seed (NaN: not judged).
    # dpo's prompt 11 was never judged: 11 prompts; on prompt 0 only seed 0 has both verdicts.
    assert differs["judge_win_rate_prompts"] == 11 and differs["judge_win_rate_diff"] > 0.5
    assert same["judge_win_rate_note"] == "fewer than 2 shared prompts with judge_win"
    assert "judge_win_rate (mean ± 95% CI)" in report.tables["summary"].header
    assert "heldout_sentiment_diff" not in report.tables["pairwise"].csv_header  # no run has the held-out scorer


def test_pairwise_compares_the_held_out_scorer_with_the_same_paired_test(tmp_path):
    rng = np.random.default_rng(4)
    base, held = rng.uniform(0.2, 0.7, size=12), rng.uniform(0.3, 0.6, size=12)
    shift = rng.normal(0.0, 0.01, size=12)
    for seed in (0, 1):
        fake_run(tmp_path, "sft", seed, reward=base, kl=np.full(12, 0.5), extra={"heldout_sentiment": held})
        # dpo: a large gold gain, a small held-out one that is consistent prompt by prompt (so paired, it is clear).
        fake_run(
            tmp_path,
            "dpo",
            seed,
            reward=base + 0.2,
            kl=np.full(12, 1.0),
            extra={"heldout_sentiment": held + 0.02 + shift},
        )
    report = build(tmp_path, "sentiment", kl_budget=2.0)
    (row,) = _rows(report.tables["pairwise"])
    assert (row["a"], row["b"]) == ("dpo", "sft")
    direct = paired_difference(held + 0.02 + shift, held, seed=0)
    assert row["heldout_sentiment_diff"] == pytest.approx(direct["diff"])
    assert row["heldout_sentiment_p"] == pytest.approx(direct["p"]) and row["heldout_sentiment_p"] < 0.01
    assert row["heldout_sentiment_ci_low"] > 0 and row["heldout_sentiment_prompts"] == 12
    assert "Δ heldout_sentiment (A − B) [95% CI]" in report.tables["pairwise"].header


def test_pairwise_needs_shared_seeds_and_prompts(tmp_path):
    fake_run(tmp_path, "sft", 0, reward=np.full(12, 0.5), kl=np.full(12, 0.5))
    fake_run(tmp_path, "dpo", 1, reward=np.full(12, 0.6), kl=np.full(12, 0.5))
    row = _rows(build(tmp_path, "sentiment").tables["pairwise"])[0]
    assert row["gold_reward_note"] == "no shared seeds" and row["gold_reward_p"] == ""


def test_same_records_same_bytes_and_a_run_without_complete_drops_out(tmp_path):
    results, base = tmp_path / "results", np.linspace(0.2, 0.8, 12)
    for seed in (0, 1):
        fake_run(
            results,
            "dpo",
            seed,
            setting={"beta": 0.1},
            reward=base + 0.1 * seed,
            kl=np.full(12, 1.0 + seed),
            checkpoints=[(0.3, 0.3), (0.6, 0.4)],
        )
        fake_run(results, "sft", seed, reward=base, kl=np.full(12, 0.4), checkpoints=[(0.2, 0.3)])
    last = fake_run(results, "dpo", 2, setting={"beta": 0.1}, reward=base, kl=np.full(12, 1.5))
    first, second = tmp_path / "a", tmp_path / "b"
    write_report(results, "sentiment", first)
    write_report(results, "sentiment", second)
    names = sorted(p.name for p in first.iterdir())
    assert {
        "report.md",
        "index.html",
        "frontier.png",
        "summary.csv",
        "summary.tex",
        "pairwise.csv",
        "frontier.csv",
        "cost.csv",
        "curves-dpo.png",
        "curves-sft.png",
    } <= set(names)
    assert names == sorted(p.name for p in second.iterdir())
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    html = (first / "index.html").read_text()
    assert html.count("data:image/png;base64,") == 3 and 'src="frontier.png"' not in html
    assert last.name in (first / "report.md").read_text() and "5 complete runs" in (first / "report.md").read_text()

    (last / records.COMPLETE).unlink()
    write_report(results, "sentiment", first)
    text = (first / "report.md").read_text()
    assert last.name not in text and "4 complete runs" in text
    assert [r["seeds"] for r in _csv(first / "summary.csv") if r["algorithm"] == "dpo"] == ["2"]


def test_stale_figures_go_and_foreign_files_stay(tmp_path):
    results = tmp_path / "results"
    fake_run(results, "sft", 0, reward=np.full(12, 0.5), kl=np.full(12, 0.5))
    gone = fake_run(results, "dpo", 0, reward=np.full(12, 0.6), kl=np.full(12, 0.8))
    out = tmp_path / "out"
    write_report(results, "sentiment", out)
    (out / "notes.txt").write_text("mine")
    assert (out / "curves-dpo.png").exists() and (out / "pairwise.csv").exists()
    (gone / records.COMPLETE).unlink()
    write_report(results, "sentiment", out)
    assert not (out / "curves-dpo.png").exists() and not (out / "pairwise.csv").exists()
    assert (out / "notes.txt").read_text() == "mine"


def test_cost_columns(tmp_path):
    cost = {
        "wall_time_s": {"build": 1.0, "fit": 10.0, "sample": 2.0, "evaluate": 3.0},
        "preference_labels": 600,
        "train_tokens": 1000,
        "sampled_tokens": 50,
        "train_flops": 6e12,
    }
    fake_run(tmp_path, "dpo", 0, reward=np.full(12, 0.5), kl=np.full(12, 0.5), cost=cost)
    fake_run(tmp_path, "dpo", 1, reward=np.full(12, 0.5), kl=np.full(12, 0.5), cost={**cost, "train_flops": 8e12})
    row = _rows(build(tmp_path, "sentiment").tables["cost"])[0]
    assert row["wall_time_s"] == pytest.approx(16.0) and row["preference_labels"] == pytest.approx(600)
    assert row["train_flops"] == pytest.approx(7e12) and row["sampled_tokens"] == pytest.approx(50)


def test_cli_report_and_its_errors(tmp_path, capsys):
    fake_run(tmp_path / "r", "sft", 0, reward=np.full(12, 0.5), kl=np.full(12, 0.5))
    assert main(["report", "--task", "sentiment", "--results", str(tmp_path / "r"), "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "report.md").exists() and "report.md" in capsys.readouterr().out
    assert main(["report", "--task", "nothing", "--results", str(tmp_path / "r"), "--out", str(tmp_path / "x")]) == 2
    assert "no complete runs" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert main(["report", "--task", "sentiment", "--results", str(tmp_path / "r"), "--kl-budget", "-1"]) == 2
    assert "--kl-budget" in capsys.readouterr().err


def test_palette_gives_eleven_fronts_eleven_colours():
    from matplotlib import colormaps

    from bench.plots import _palette

    assert _palette(10) == [colormaps["tab10"](i) for i in range(10)]  # ten or fewer: the pictures as before
    eleven = _palette(11)
    assert len(set(eleven)) == 11 and eleven[10] == colormaps["tab20"](1)
    assert len(set(_palette(20))) == 20 and _palette(21)[20] == eleven[0]
