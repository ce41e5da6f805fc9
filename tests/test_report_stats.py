"""Frontier and comparison statistics against hand-computed answers."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from bench.stats import (
    bootstrap_front_area,
    difference_band,
    dominance_verdict,
    front_area,
    frontier_replicates,
    holm,
    kl_pieces,
    paired_difference,
    pareto_front,
    sign_changes,
    step_frontier,
)


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


# ---------------------------------------------------------------- frontiers at matched KL


def test_step_frontier_is_the_best_reward_at_or_below_each_kl():
    kl, reward = [1.0, 2.0, 1.5, math.nan], [0.5, 0.7, 0.3, 9.0]
    at = [0.5, 1.0, 1.7, 2.0, 3.0]
    # Below the first point: the first point's level; the dominated (1.5, 0.3) and the NaN point change nothing.
    assert step_frontier(kl, reward, at).tolist() == [0.5, 0.5, 0.5, 0.7, 0.7]
    batch = step_frontier([[1.0, 2.0], [2.0, math.nan]], [[0.5, 0.4], [0.9, 0.1]], [1.0, 2.0])
    assert batch.tolist() == [[0.5, 0.5], [0.9, 0.9]]
    assert np.isnan(step_frontier([math.nan], [0.5], [1.0])).all()


def test_kl_pieces_cover_every_value_of_a_step_difference():
    starts, at = kl_pieces([0.5, 1.0, 2.0, 3.0], 1.0, 2.5)
    assert starts == [1.0, 2.0, 2.5] and at == [1.5, 2.25, 2.5]
    assert kl_pieces([1.0, 4.0], 2.0, 2.0) == ([2.0], [2.0])


def test_band_and_bootstrap_p_by_hand():
    # One point, replicates 0, 1, 2, 3 around an observed 1.5: sd = std(ddof=1) = 1.291; |z| = 1.162, 0.387, ...;
    # the 95% quantile of max |z| (numpy's linear rule) is 1.162, so the band is 1.5 ± 1.5.
    out = difference_band([1.5], [[0.0], [1.0], [2.0], [3.0]])
    assert out["band_low"][0] == pytest.approx(0.0) and out["band_high"][0] == pytest.approx(3.0)
    # p = 2 min(1 + #(<= 0), 1 + #(>= 0)) / (1 + B) = 2 * 2 / 5.
    assert out["p"][0] == pytest.approx(0.8)
    # A point without spread has a band of width 0, and all replicates above 0 give the smallest p, 2 / (B + 1).
    flat = difference_band([0.2, 1.0], [[0.2, 0.0], [0.2, 2.0], [0.2, 1.0]])
    assert flat["band_low"][0] == flat["band_high"][0] == pytest.approx(0.2) and flat["p"][0] == pytest.approx(0.5)


def test_dominance_verdict_rules():
    assert dominance_verdict([0.1, 0.2], [0.3, 0.4]) == ("holds", 0)
    assert dominance_verdict([0.1, -0.2], [0.3, 0.4]) == ("undecided", 1)
    assert dominance_verdict([0.1, -0.5, -0.4], [0.3, -0.1, -0.2]) == ("fails", 2)
    # With a margin: "A - B >= -0.1 everywhere".
    assert dominance_verdict([-0.05], [0.1], margin=0.1) == ("holds", 0)
    assert dominance_verdict([-0.3], [-0.15], margin=0.1) == ("fails", 0)
    assert dominance_verdict([math.nan], [0.1]) == ("undecided", 0)
    assert sign_changes([1.0, 2.0, 3.0, 4.0], [0.2, 0.0, -0.1, -0.3]) == [3.0]


def test_replicates_pair_prompts_and_draw_seeds():
    rng = np.random.default_rng(0)
    weights = np.zeros((500, 12))
    np.add.at(weights, (np.arange(500)[:, None], rng.integers(0, 12, size=(500, 12))), 1.0)
    values = (0.5 + np.linspace(-0.05, 0.05, 12))[None, None, :]
    one = frontier_replicates([[1.0]], [[0.5]], [[0.0]], values, weights, np.random.default_rng(1))
    shifted = frontier_replicates([[1.0]], [[0.6]], [[0.0]], values + 0.1, weights, np.random.default_rng(2))
    # Per-prompt values moved by the shared draw: the difference of the two is the constant 0.1 (paired).
    assert np.allclose(shifted[3] - one[3], 0.1) and one[3].std() > 0.005
    # Two seeds, aggregates only with se 0: a replicate is seed 0's value, seed 1's or their mean.
    kl, rw = [[1.0, 2.0]], [[0.4, 0.6]]
    none = np.full((1, 2, 12), np.nan)
    kl_obs, rw_obs, kl_boot, rw_boot = frontier_replicates(kl, rw, [[0.0, 0.0]], none, weights, rng)
    assert kl_obs.tolist() == [1.5] and rw_obs.tolist() == pytest.approx([0.5])
    assert set(np.round(rw_boot[:, 0], 9)) == {0.4, 0.5, 0.6} and set(np.round(kl_boot[:, 0], 9)) == {1.0, 1.5, 2.0}
    # A point that keeps only its mean and se (a checkpoint) moves by a normal draw with that se.
    _, _, _, drawn = frontier_replicates([[1.0]], [[0.5]], [[0.1]], np.full((1, 1, 12), np.nan), weights, rng)
    assert drawn.mean() == pytest.approx(0.5, abs=0.02) and drawn.std() == pytest.approx(0.1, rel=0.15)
