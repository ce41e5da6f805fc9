"""Statistics against hand-computed values."""

from __future__ import annotations

import math

import pytest

from bench.stats import bootstrap_mean_ci, by_prompt, ci95_halfwidth, mean_se, pairwise_win, per_prompt_means


def test_mean_se_by_hand():
    s = mean_se([1.0, 2.0, 3.0, 4.0])
    assert s["mean"] == 2.5 and s["n"] == 4
    assert s["se"] == pytest.approx(math.sqrt((2.25 + 0.25 + 0.25 + 2.25) / 3 / 4))
    assert math.isnan(mean_se([1.0])["se"]) and mean_se([])["n"] == 0


def test_samples_of_one_prompt_are_one_observation():
    values = [0.0, 1.0, 1.0, 1.0, 0.5, 0.5]
    index = [0, 0, 1, 1, 2, 2]
    assert per_prompt_means(values, index) == [0.5, 1.0, 0.5]
    agg = by_prompt(values, index)
    assert agg["n"] == 3 and agg["mean"] == pytest.approx(2 / 3)


def test_pairwise_win_counts_ties_one_half():
    assert [pairwise_win(a, b) for a, b in ((0.9, 0.1), (0.5, 0.5), (0.1, 0.9))] == [1.0, 0.5, 0.0]


def test_bootstrap_mean_ci_small_cases():
    assert bootstrap_mean_ci([1.0, 1.0, 1.0], 200, seed=0) == (1.0, 1.0)
    low, high = bootstrap_mean_ci([0.0, 1.0], 2000, seed=0)
    # Resampling two values: the mean is 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4.
    assert (low, high) == (0.0, 1.0)
    assert all(math.isnan(x) for x in bootstrap_mean_ci([], 100, seed=0))
    assert all(math.isnan(x) for x in bootstrap_mean_ci([0.5], 0, seed=0))
    values = [i / 19 for i in range(20)]
    assert bootstrap_mean_ci(values, 300, seed=1) == bootstrap_mean_ci(values, 300, seed=1)
    assert bootstrap_mean_ci(values, 300, seed=1) != bootstrap_mean_ci(values, 300, seed=2)
    assert bootstrap_mean_ci(values, 300, seed=[1, 7]) != bootstrap_mean_ci(values, 300, seed=1)


def test_ci_uses_student_t():
    assert ci95_halfwidth(1.0, 2) == pytest.approx(12.7062, rel=1e-4)
    assert ci95_halfwidth(1.0, 1000) == pytest.approx(1.9623, rel=1e-3)
    assert math.isnan(ci95_halfwidth(1.0, 1))
