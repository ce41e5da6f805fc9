"""Matched-KL verdicts, the claims table and the over-optimisation flag, on synthetic records with known answers.

The records come from tests/test_report.py's fake_run: per-prompt final rewards in samples.jsonl,
checkpoints as aggregates with se 0. U, the prompts' spread, has mean 0, so a seed-averaged point's
reward is known by hand.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_report import fake_run

from bench import stats
from bench.report import build, write_report

U = np.linspace(-0.05, 0.05, 12)
"""Per-prompt offsets (mean 0): prompts differ, identically for every algorithm (paired)."""
SEEDS = (0, 1, 2)


def _rows(t):
    return [dict(zip(t.csv_header, row)) for row in t.csv_rows]


def _pair(report, a, b):
    (row,) = [r for r in _rows(report.tables["matched_kl"]) if (r["a"], r["b"]) == (a, b)]
    return row


def _grid(report, a, b):
    return [r for r in _rows(report.tables["matched_kl_grid"]) if (r["a"], r["b"]) == (a, b)]


def _claims(report):
    return [dict(zip(report.tables["claims"].csv_header, row)) for row in report.tables["claims"].csv_rows]


def _algorithms(results, *, gt=True, bon_reward=0.70):
    """Seed s shifts every reward by 0.01 s (seed means: + 0.01), and dpo's checkpoint KL too."""
    for s in SEEDS:
        j = 0.01 * s
        # dpo: (1.01, 0.71), (2.0, 0.91)
        fake_run(results, "dpo", s, checkpoints=[(1.0 + j, 0.70 + j)], reward=0.90 + U + j, kl=np.full(12, 2.0))
        # ppo: (1.5, 0.41), (3.0, 0.51): below dpo wherever both are defined
        fake_run(results, "ppo", s, checkpoints=[(1.5, 0.40 + j)], reward=0.50 + U + j, kl=np.full(12, 3.0))
        if gt:
            # ppo-gt: (1.2, 0.51), (1.8, 0.98), (2.5, 1.0): below dpo up to KL 1.8, above it from there
            fake_run(
                results,
                "ppo-gt",
                s,
                checkpoints=[(1.2, 0.50 + j), (1.8, 0.97 + j)],
                reward=0.99 + U + j,
                kl=np.full(12, 2.5),
            )
        # unlikelihood: (3.5, 0.51), (4.0, 0.53): no KL in common with dpo
        fake_run(results, "unlikelihood", s, checkpoints=[(3.5, 0.50 + j)], reward=0.52 + U + j, kl=np.full(12, 4.0))
        # preferred-ft: (0.5, 0.46), (1.2, 0.51)
        fake_run(results, "preferred-ft", s, checkpoints=[(0.5, 0.45 + j)], reward=0.50 + U + j, kl=np.full(12, 1.2))
        fake_run(results, "reward-model", s, reward=np.full(12, 0.45), kl=np.zeros(12))
    for n, kl, r in ((4, 0.636, bon_reward), (16, 1.83, bon_reward + 0.04)):  # one seed, KL at the bound
        fake_run(
            results,
            "best-of-n",
            0,
            setting={"n": n},
            reward=r + U,
            kl=np.full(12, kl),
            kl_estimator="analytic bound",
        )


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    _algorithms(results)
    return build(results, "sentiment")


# ---------------------------------------------------------------- matched-KL comparisons


def test_a_dominating_frontier_holds_with_an_interval_that_excludes_zero(report):
    row = _pair(report, "dpo", "ppo")
    # Common KL [1.5, 2.0] (ppo's first point, dpo's last); pieces [1.5, 2.0) and {2.0}.
    assert row["kl_lo"] == pytest.approx(1.5) and row["kl_hi"] == pytest.approx(2.0) and row["pieces"] == 2
    grid = _grid(report, "dpo", "ppo")
    assert [g["kl"] for g in grid] == pytest.approx([1.75, 2.0])
    assert [g["diff"] for g in grid] == pytest.approx([0.71 - 0.41, 0.91 - 0.41])
    assert all(g["band_low"] > 0 and g["ci_low"] > 0 for g in grid)
    assert row["a_ge_b"] == "holds" and row["b_ge_a"] == "fails" and row["crossings"] == ""
    assert row["lowest_diff"] == pytest.approx(0.30) and row["lowest_band_low"] > 0.2


def test_crossing_frontiers_fail_both_ways_and_the_crossing_is_reported(report):
    row = _pair(report, "dpo", "ppo-gt")
    grid = _grid(report, "dpo", "ppo-gt")
    # Common KL [1.2, 2.0]; dpo 0.71 up to 2.0, then 0.91; ppo-gt 0.51 up to 1.8, then 0.98.
    assert [g["piece_start"] for g in grid] == pytest.approx([1.2, 1.8, 2.0])
    assert [g["diff"] for g in grid] == pytest.approx([0.20, -0.27, -0.07])
    assert row["a_ge_b"] == "fails" and row["b_ge_a"] == "fails"
    assert float(row["crossings"]) == pytest.approx(1.8)
    # The deciding piece for "dpo >= ppo-gt" is the one with the lowest band: from KL 1.8, Δ -0.27.
    md = report.tables["matched_kl"]
    (shown,) = [r for r in md.rows if r[:2] == ["dpo", "ppo-gt"]]
    assert shown[6] == "1.8" and "-0.270" in shown[7] and "at KL 1.8–2" in shown[7]


def test_no_common_support_is_said_so(report):
    row = _pair(report, "dpo", "unlikelihood")
    assert row["a_ge_b"] == row["b_ge_a"] == "undecided" and row["pieces"] == 0
    assert row["note"] == "no common KL support (dpo 1.01–2, unlikelihood 3.5–4 nats)"
    assert not _grid(report, "dpo", "unlikelihood")


def test_one_seed_bootstraps_prompts_only_and_says_so(tmp_path):
    e = np.array([0.03, -0.02, 0.05, 0.0, -0.01, 0.04, 0.02, -0.03, 0.06, 0.01, 0.0, 0.02])
    fake_run(tmp_path, "dpo", 0, reward=0.55 + U + e, kl=np.full(12, 1.0))
    fake_run(tmp_path, "ppo", 0, reward=0.50 + U, kl=np.full(12, 1.0))
    report = build(tmp_path, "sentiment")
    row = _pair(report, "dpo", "ppo")
    assert row["note"] == "one seed of dpo, ppo: interval over prompts only" and row["paired_prompts"] == 12
    (g,) = _grid(report, "dpo", "ppo")
    # One piece at KL 1: the difference is the mean per-prompt difference, its interval the paired bootstrap
    # of the per-prompt differences (U cancels: it is the same on both sides).
    assert g["diff"] == pytest.approx(0.05 + e.mean())
    low, high = stats.bootstrap_mean_ci((0.05 + e).tolist(), 2000, seed=5)
    assert g["ci_low"] == pytest.approx(low, abs=0.15 * (high - low))
    assert g["ci_high"] == pytest.approx(high, abs=0.15 * (high - low))
    assert row["a_ge_b"] == "holds" and g["band_low"] > 0
    (claim,) = [c for c in _claims(report) if c["a"] == "dpo" and c["b"] == "ppo"]
    assert claim["verdict"] == "holds" and "one seed of dpo, ppo: interval over prompts only" in claim["reason"]


# ---------------------------------------------------------------- the claims table


def test_claims_verdicts(report):
    claims = {(c["claim"], c["b"] or c["a"]): c for c in _claims(report)}
    a, b = claims[("a", "ppo")], claims[("b", "ppo-gt")]
    assert a["verdict"] == "holds" and a["agrees"] == "yes"
    assert a["diff"] == pytest.approx(0.30) and a["band_low"] > 0 and a["kl"] == pytest.approx(1.5)
    # DPO >= PPO-GT fails here: the table says plainly that this task disagrees with the paper.
    assert b["verdict"] == "fails" and b["agrees"] == "no"
    assert b["diff"] == pytest.approx(-0.27) and b["band_high"] < 0
    assert "ppo-gt above dpo at KL 1.8–2" in b["reason"] and "cross at KL 1.8" in b["reason"]
    (b_row,) = [r for r in report.tables["claims"].rows if r[0] == "b"]
    assert b_row[4] == "no: this task disagrees with the paper"
    d_ul, d_pft = claims[("d", "unlikelihood")], claims[("d", "preferred-ft")]
    assert d_ul["verdict"] == "undecided" and d_ul["reason"].startswith("no common KL support")
    assert d_pft["verdict"] == "holds" and d_pft["diff"] == pytest.approx(0.20)  # at KL 1.2: 0.71 - 0.51
    # (c): low KL = the lowest quarter of [0.636, 1.83], where only preferred-ft (0.46) is defined among the
    # others: best-of-N 0.70 is well above it; the margin is 0.1 x (1.0 - 0.45) (ppo-gt's best over the origin).
    c = claims[("c", "best-of-n")]
    assert c["verdict"] == "holds" and c["diff"] == pytest.approx(0.70 - 0.46)
    assert "best: preferred-ft" in c["reason"] and "within 0.055" in c["reason"]
    assert "one seed of best-of-n" in c["reason"] and "best-of-n plotted at its KL bound" in c["reason"]


def test_claims_when_best_of_n_falls_short_and_an_algorithm_is_missing(tmp_path):
    _algorithms(tmp_path, gt=False, bon_reward=0.30)
    claims = {(c["claim"], c["b"] or c["a"]): c for c in _claims(build(tmp_path, "sentiment"))}
    c = claims[("c", "best-of-n")]
    assert c["verdict"] == "fails" and c["agrees"] == "no" and c["diff"] == pytest.approx(0.30 - 0.46)
    b = claims[("b", "ppo-gt")]  # never run: nothing said of the claim, which is not the same as undecided
    assert b["verdict"] == "not tested" and b["agrees"] == "" and b["reason"] == "no runs of ppo-gt in these results"


def _drop_kl(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    del metrics["kl"]
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    (run_dir / "checkpoints.jsonl").unlink()


def test_a_claim_on_runs_without_kl_is_undecided_not_untested(tmp_path):
    _algorithms(tmp_path, gt=False)
    _drop_kl(fake_run(tmp_path, "ppo-gt", 0, checkpoints=[(1.2, 0.5)], reward=0.99 + U, kl=np.full(12, 2.5)))
    b = {(c["claim"], c["b"] or c["a"]): c for c in _claims(build(tmp_path, "sentiment"))}[("b", "ppo-gt")]
    assert b["verdict"] == "undecided" and b["reason"] == "no runs of ppo-gt with kl and gold_reward"


def test_claims_and_matched_tables_are_on_the_page(tmp_path):
    _algorithms(tmp_path / "r")
    write_report(tmp_path / "r", "sentiment", tmp_path / "out")
    md, html = (tmp_path / "out" / "report.md").read_text(), (tmp_path / "out" / "index.html").read_text()
    for text in (md, html):
        assert "The DPO paper&#x27;s findings" in text or "The DPO paper's findings" in text
        assert "Frontiers at matched KL" in text and "no common KL support" in text
        assert "this task disagrees with the paper" in text
    assert (tmp_path / "out" / "matched_kl_grid.csv").exists() and not (
        tmp_path / "out" / "matched_kl_grid.tex"
    ).exists()
    assert (tmp_path / "out" / "claims.csv").exists() and (tmp_path / "out" / "claims.tex").exists()


def test_without_kl_there_are_no_verdicts(tmp_path):
    _drop_kl(fake_run(tmp_path, "dpo", 0, reward=0.5 + U, kl=np.ones(12)))
    _drop_kl(fake_run(tmp_path, "ppo", 0, reward=0.4 + U, kl=np.ones(12)))
    report = build(tmp_path, "sentiment")
    assert "matched_kl" not in report.tables
    claims = _claims(report)
    assert claims[0]["verdict"] == "undecided" and claims[0]["reason"].startswith("no frontier")  # dpo vs ppo: run
    assert {c["verdict"] for c in claims[1:]} == {"not tested"}  # ppo-gt, best-of-n, unlikelihood, preferred-ft


# ---------------------------------------------------------------- over-optimisation


def _summary(report):
    return {(r["algorithm"], r["setting"]): r for r in _rows(report.tables["summary"])}


def test_over_optimisation_flag(tmp_path):
    for s in SEEDS:
        j = 0.01 * s
        fake_run(tmp_path, "sft", s, reward=0.5 + U + j, kl=np.full(12, 1.0), extra={"heldout_sentiment": 0.5 + U + j})
        # Gold rises, the held-out scorer does not: flagged.
        fake_run(tmp_path, "ppo", s, reward=0.8 + U + j, kl=np.full(12, 2.0), extra={"heldout_sentiment": 0.5 + U + j})
        # Both rise together: not flagged.
        fake_run(tmp_path, "dpo", s, reward=0.8 + U + j, kl=np.full(12, 2.0), extra={"heldout_sentiment": 0.75 + U + j})
        # The held-out gain is significant but under a third of the gold gain in standardised units: flagged.
        fake_run(
            tmp_path,
            "preferred-ft",
            s,
            reward=0.8 + U + j,
            kl=np.full(12, 2.0),
            extra={"heldout_sentiment": 0.55 + U + j},
        )
        # No held-out scorer in this record: "—", and nothing breaks.
        fake_run(tmp_path, "unlikelihood", s, reward=0.8 + U + j, kl=np.full(12, 2.0))
    report = build(tmp_path, "sentiment")
    rows = _summary(report)
    ppo, dpo, pft, ul = (rows[(a, "default")] for a in ("ppo", "dpo", "preferred-ft", "unlikelihood"))
    assert ppo["overoptimised"] == "yes" and dpo["overoptimised"] == "no" and pft["overoptimised"] == "yes"
    assert (
        ul["overoptimised"] == "—"
        and ul["heldout_gain"] == ""
        and rows[("sft", "default")]["overoptimised"] == "baseline"
    )
    assert ppo["reward_gain"] == pytest.approx(0.3) and ppo["reward_gain_significant"] is True
    assert ppo["heldout_gain"] == pytest.approx(0.0, abs=1e-12) and ppo["heldout_gain_significant"] is False
    # Held-out +0.05 beats its ± (two t-intervals over 3 seeds, sqrt(2) x 4.303 x 0.01 / sqrt(3) = 0.035) ...
    assert pft["heldout_gain_significant"] is True and pft["heldout_gain_half"] == pytest.approx(0.0351, abs=1e-3)
    # ... but 0.05 / sd(U) is under a third of 0.3 / sd(U).
    sd = float(np.std(U, ddof=1))
    assert pft["heldout_gain_std"] == pytest.approx(0.05 / sd) and pft["reward_gain_std"] == pytest.approx(0.3 / sd)
    assert pft["baseline"] == "sft (default)"
    header = report.tables["summary"].header
    assert header[-3:] == ["Δ gold_reward vs sft (default)", "Δ heldout_sentiment vs sft (default)", "over-optimised?"]
    shown = {(r[1], r[2]): r for r in report.tables["summary"].rows}
    assert shown[("ppo", "default")][-1] == "yes" and shown[("unlikelihood", "default")][-2:] == ["—", "—"]
    assert "heldout_sentiment (mean ± 95% CI)" in header


def test_over_optimisation_against_the_starting_policy_without_sft(tmp_path):
    for s in SEEDS:
        j = 0.01 * s
        fake_run(
            tmp_path, "reward-model", s, reward=0.5 + U + j, kl=np.zeros(12), extra={"heldout_sentiment": 0.5 + U + j}
        )
        fake_run(tmp_path, "ppo", s, reward=0.8 + U + j, kl=np.full(12, 2.0), extra={"heldout_sentiment": 0.5 + U + j})
    rows = _summary(build(tmp_path, "sentiment"))
    assert rows[("ppo", "default")]["overoptimised"] == "yes"
    assert rows[("ppo", "default")]["baseline"] == "the starting policy"
    assert rows[("reward-model", "default")]["overoptimised"] == "baseline"
