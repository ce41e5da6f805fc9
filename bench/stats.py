"""Means, standard errors and confidence intervals, with the prompt as the unit of observation."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Sequence


def mean_se(values: Sequence[float]) -> dict:
    """{"mean", "se", "n"}: the sample mean and its standard error (ddof=1)."""
    n = len(values)
    if n == 0:
        return {"mean": float("nan"), "se": float("nan"), "n": 0}
    mean = math.fsum(values) / n
    if n == 1:
        return {"mean": mean, "se": float("nan"), "n": 1}
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return {"mean": mean, "se": math.sqrt(var / n), "n": n}


def per_prompt_means(values: Sequence[float], prompt_index: Sequence[int]) -> list[float]:
    """Average the samples of each prompt: samples of one prompt are correlated, prompts are not."""
    groups: dict[int, list[float]] = defaultdict(list)
    for v, i in zip(values, prompt_index):
        groups[i].append(v)
    return [math.fsum(g) / len(g) for _, g in sorted(groups.items())]


def by_prompt(values: Sequence[float], prompt_index: Sequence[int]) -> dict:
    """mean_se over prompts (n = number of prompts)."""
    return mean_se(per_prompt_means(values, prompt_index))


def pairwise_win(score: float, other: float) -> float:
    """The outcome of one comparison for the side scoring `score`: 1 if higher, 0 if lower, ties count one half."""
    return 1.0 if score > other else 0.5 if score == other else 0.0


def bootstrap_mean_ci(
    values: Sequence[float], resamples: int, seed: int | Sequence[int], level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (e.g. one per prompt); NaN without values or resamples.

    `seed` is numpy's seed entropy, an int or a sequence of ints, so that a caller can draw a
    stream of its own from a run's seed (e.g. [seed, a constant of its own]).
    """
    if not values or resamples <= 0:
        return float("nan"), float("nan")
    import numpy as np

    rng = np.random.default_rng(seed)
    x = np.asarray(values, dtype=float)
    # Resampled in blocks of 500, so that memory stays bounded however many resamples are asked.
    means = np.concatenate(
        [
            x[rng.integers(0, len(x), size=(min(500, resamples - done), len(x)))].mean(axis=1)
            for done in range(0, resamples, 500)
        ]
    )
    low, high = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(low), float(high)


def ci95_halfwidth(se: float, n: int) -> float:
    """Half-width of a two-sided 95% t interval for a mean with n observations."""
    if n < 2 or not math.isfinite(se):
        return float("nan")
    from scipy.stats import t

    return float(t.ppf(0.975, n - 1)) * se


# ---------------------------------------------------------------- frontiers and paired comparisons
# A frontier point is (KL, reward) of one evaluated policy: lower KL and higher reward are better.


def pareto_front(kl: Sequence[float], reward: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats (KL no higher and reward no lower), by rising KL.

    Of several identical points only the first is kept; points with a NaN coordinate are ignored.
    """
    order = sorted((k, -r, i) for i, (k, r) in enumerate(zip(kl, reward)) if math.isfinite(k) and math.isfinite(r))
    front, best = [], -math.inf
    for k, neg_r, i in order:
        if -neg_r > best:
            front.append(i)
            best = -neg_r
    return front


def front_area(kl: Sequence[float], reward: Sequence[float], budget: float, floor: float) -> float:
    """Area under the frontier from KL 0 to `budget`: the integral of F(k) dk (reward x nats).

    F(k) is the best reward among the points with KL <= k, and `floor` where that is lower or
    there is no such point yet. The step function credits only what some evaluated policy
    reached at or below each KL; give every algorithm of a comparison the same floor (e.g. the
    lowest reward of all points), so an algorithm is not rewarded for points it lacks.
    """
    points = sorted(
        (max(k, 0.0), r) for k, r in zip(kl, reward) if math.isfinite(k) and math.isfinite(r) and k <= budget
    )
    area, level, at = 0.0, floor, 0.0
    for k, r in points:
        area += level * (k - at)
        at, level = k, max(level, r)
    return area + level * (budget - at)


def bootstrap_front_area(kl, reward, budget: float, floor: float, n_boot: int = 2000, seed: int = 0) -> dict:
    """Area under the front of seed-averaged points, with a percentile bootstrap CI over seeds.

    `kl` and `reward` are (points x seeds) arrays, NaN where a seed lacks a point: row i is one
    setting at one checkpoint, column j one training seed. Each bootstrap replicate draws the
    seeds with replacement, averages every point over the drawn seeds, and recomputes the area.
    Returns {"area", "low", "high", "seeds"}; with one seed the interval is NaN.
    """
    import numpy as np

    kl, reward = np.asarray(kl, dtype=float), np.asarray(reward, dtype=float)
    present = np.isfinite(kl) & np.isfinite(reward)
    kl0, reward0 = np.where(present, kl, 0.0), np.where(present, reward, 0.0)

    def averaged(weights):  # weights: (..., seeds) draw counts -> per-point means over drawn seeds
        w = weights[..., None, :] * present
        total = w.sum(-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (w * kl0).sum(-1) / total, (w * reward0).sum(-1) / total

    n_seeds = kl.shape[1]
    k, r = averaged(np.ones(n_seeds))
    out = {
        "area": front_area(k.tolist(), r.tolist(), budget, floor),
        "low": math.nan,
        "high": math.nan,
        "seeds": n_seeds,
    }
    if n_seeds >= 2:
        rng = np.random.default_rng(seed)
        draws = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
        counts = np.stack([np.bincount(d, minlength=n_seeds) for d in draws]).astype(float)
        kb, rb = averaged(counts)
        areas = [front_area(kb[b].tolist(), rb[b].tolist(), budget, floor) for b in range(n_boot)]
        out["low"], out["high"] = (float(x) for x in np.percentile(areas, [2.5, 97.5]))
    return out


def paired_difference(a: Sequence[float], b: Sequence[float], n_resamples: int = 9999, seed: int = 0) -> dict:
    """Mean of a - b over paired units, a percentile bootstrap 95% CI, and a permutation-test p-value.

    The test flips the sign of each unit's difference at random (scipy's paired permutation test,
    exact when 2^n <= n_resamples): under the null hypothesis that a and b are exchangeable within
    each unit, the mean difference is as likely to be negative as positive.
    Returns {"diff", "low", "high", "p", "n"}.
    """
    import numpy as np
    from scipy.stats import bootstrap, permutation_test

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired samples must have the same length, got {a.shape} and {b.shape}")
    d = a - b
    n = len(d)
    out = {"diff": float(d.mean()) if n else math.nan, "low": math.nan, "high": math.nan, "p": math.nan, "n": n}
    if n < 2:
        return out
    test = permutation_test(
        (a, b),
        lambda x, y, axis: np.mean(x - y, axis=axis),
        permutation_type="samples",
        vectorized=True,
        n_resamples=n_resamples,
        rng=np.random.default_rng(seed),
    )
    out["p"] = float(min(1.0, test.pvalue))
    if np.all(d == d[0]):
        out["low"] = out["high"] = float(d[0])  # no spread: the bootstrap distribution is one point
    else:
        ci = bootstrap(
            (d,), np.mean, n_resamples=n_resamples, method="percentile", rng=np.random.default_rng(seed)
        ).confidence_interval
        out["low"], out["high"] = float(ci.low), float(ci.high)
    return out


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (family-wise error over all the comparisons given); NaN stays NaN."""
    idx = sorted((p, i) for i, p in enumerate(pvalues) if p == p)
    m, out, running = len(idx), [math.nan] * len(pvalues), 0.0
    for rank, (p, i) in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out
