"""Frontier and comparison statistics against hand-computed answers."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from bench.stats import bootstrap_front_area, front_area, holm, paired_difference, pareto_front


def test_pareto_front_keeps_only_undominated_points_by_rising_kl():
    kl = [1.0, 2.0, 3.0, 0.5, 2.0, 1.5, math.nan]
    reward = [0.5, 0.7, 0.6, 0.2, 0.7, 0.5, 9.0]
    # (3, 0.6) is beaten by (2, 0.7); (1.5, 0.5) by (1, 0.5); the second (2, 0.7) repeats the first; NaN ignored.
    assert pareto_front(kl, reward) == [3, 0, 1]
    assert pareto_front([], []) == []


def test_front_area_is_the_integral_of_the_best_reward_so_far():
    # F = floor 0.1 on [0, 1), 0.5 on [1, 2), 0.7 on [2, 3]; the dominated (1.5, 0.3) changes nothing.
    assert front_area([1.0, 2.0, 1.5], [0.5, 0.7, 0.3], budget=3.0, floor=0.1) == pytest.approx(0.1 + 0.5 + 0.7)
    # Points beyond the budget do not count; the last level runs to the budget.
    assert front_area([1.0, 2.0, 4.0], [0.5, 0.7, 0.9], budget=2.5, floor=0.0) == pytest.approx(0.5 + 0.7 * 0.5)
    # No point within the budget: the floor everywhere.
    assert front_area([5.0], [0.9], budget=2.0, floor=0.25) == pytest.approx(0.5)
    # A point below the floor does not pull the front down.
    assert front_area([1.0], [-1.0], budget=2.0, floor=0.0) == pytest.approx(0.0)


def test_area_bootstrap_over_seeds_has_the_known_interval():
    # Rows: (setting, checkpoint) points; columns: seeds 0 and 1.
    kl = [[1.0, 1.2], [2.0, 2.2], [1.5, 1.5]]
    reward = [[0.5, 0.6], [0.8, 0.9], [0.45, 0.45]]
    out = bootstrap_front_area(kl, reward, budget=3.0, floor=0.4, n_boot=400, seed=0)
    # Seed means (1.1, .55), (2.1, .85), (1.5, .45): 0.4*1.1 + 0.55*1.0 + 0.85*0.9
    assert out["area"] == pytest.approx(1.755) and out["seeds"] == 2
    # A replicate draws seed 0 twice (area 0.4+0.5+0.8 = 1.7), seed 1 twice (0.48+0.6+0.72 = 1.8) or both
    # (1.755), each extreme with probability 1/4: the 2.5% and 97.5% quantiles are the extremes.
    assert out["low"] == pytest.approx(1.7) and out["high"] == pytest.approx(1.8)
    # Same seed, same answer; one seed, no interval; a point a seed lacks (NaN) is averaged over the others.
    assert bootstrap_front_area(kl, reward, 3.0, 0.4, n_boot=400, seed=0) == out
    one = bootstrap_front_area([[1.0], [2.0]], [[0.5], [0.8]], 3.0, 0.4)
    assert one["area"] == pytest.approx(0.4 + 0.5 + 0.8) and math.isnan(one["low"]) and math.isnan(one["high"])
    gap = bootstrap_front_area([[1.0, math.nan]], [[0.5, math.nan]], 2.0, 0.0)
    assert gap["area"] == pytest.approx(0.5)


def _exact_sign_flip_p(d):
    """Two-sided p of the paired sign-flip test by full enumeration (the definition)."""
    d = np.asarray(d, dtype=float)
    observed = d.mean()
    stats_ = [np.mean(d * np.array(s)) for s in itertools.product((1, -1), repeat=len(d))]
    greater = np.mean([s >= observed - 1e-12 for s in stats_])
    less = np.mean([s <= observed + 1e-12 for s in stats_])
    return min(1.0, 2 * min(greater, less))


def test_paired_difference_detects_a_shift_and_not_noise():
    rng = np.random.default_rng(7)
    base = rng.uniform(0.2, 0.8, size=10)
    shifted = base + 0.1 + rng.normal(0, 0.01, size=10)
    # Differences that cancel exactly: as many flips make the mean larger as smaller, p = 1.
    same = base + np.array([0.05, -0.05, 0.03, -0.03, 0.02, -0.02, 0.04, -0.04, 0.01, -0.01])
    differs = paired_difference(shifted, base)
    assert differs["diff"] == pytest.approx(float(np.mean(shifted - base)))
    assert differs["p"] < 0.01 and differs["low"] > 0
    assert differs["p"] == pytest.approx(_exact_sign_flip_p(shifted - base))  # 2^10 <= 9999: scipy is exact
    null = paired_difference(same, base)
    assert null["diff"] == pytest.approx(0.0, abs=1e-12) and null["p"] == pytest.approx(1.0)
    assert null["low"] < 0 < null["high"]
    assert null["p"] == pytest.approx(_exact_sign_flip_p(same - base))
    # Four all-positive differences: only all-plus and all-minus reach |mean| 2.5, p = 2 / 16.
    assert paired_difference([2, 3, 4, 5], [1, 1, 1, 1])["p"] == pytest.approx(0.125)


def test_paired_difference_edge_cases():
    constant = paired_difference([1.0, 2.0, 3.0], [0.5, 1.5, 2.5])
    assert constant["diff"] == pytest.approx(0.5) and constant["low"] == constant["high"] == pytest.approx(0.5)
    assert math.isnan(paired_difference([1.0], [0.0])["p"])
    with pytest.raises(ValueError):
        paired_difference([1.0, 2.0], [1.0])


def test_holm_by_hand():
    # Sorted 0.01, 0.03, 0.04 -> 3*0.01, 2*0.03, max(0.06, 1*0.04); NaN passes through.
    adjusted = holm([0.04, 0.01, math.nan, 0.03])
    assert adjusted[0] == pytest.approx(0.06) and adjusted[1] == pytest.approx(0.03)
    assert math.isnan(adjusted[2]) and adjusted[3] == pytest.approx(0.06)
    assert holm([0.5, 0.9]) == [1.0, 1.0]
