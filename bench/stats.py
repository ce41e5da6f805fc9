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


def length_controlled_win_rate(wins: Sequence[float], length_differences: Sequence[float]) -> dict:
    """The win rate a judge would give at equal lengths: {"mean", "se", "n", "slope"} (NaN where it cannot be fit).

    AlpacaEval 2's length control, in its two-parameter form: a logistic model of each comparison's
    outcome w in [0, 1] (ties and log-prob preferences are fractions) on the standardised length
    difference, logit P(win) = a + b * tanh(d / sd(d)), fit by maximum likelihood (scipy), then
    predicted at d = 0: sigmoid(a). Its standard error is the delta method's, sigmoid'(a) * se(a), with
    se(a) from the inverse of the observed information. `slope` is b, the judge's pull toward the
    longer answer. Where every difference has the same sign (the policy always the longer, or always
    the shorter), d = 0 lies outside the data and sigmoid(a) would be an extrapolation: NaN.
    """
    import numpy as np
    from scipy.optimize import minimize
    from scipy.special import expit

    w = np.asarray(wins, dtype=float)
    d = np.asarray(length_differences, dtype=float)
    keep = np.isfinite(w) & np.isfinite(d)
    w, d = w[keep], d[keep]
    n = len(w)
    nan = {"mean": math.nan, "se": math.nan, "n": n, "slope": math.nan}
    sd = d.std(ddof=1) if n > 1 else 0.0
    if n < 3 or not sd > 0 or not d.min() <= 0 <= d.max():
        return nan
    x = np.stack([np.ones(n), np.tanh(d / sd)], axis=1)

    def loss(theta):
        z = x @ theta
        # -log-likelihood of fractional outcomes: w log s(z) + (1 - w) log(1 - s(z)), stable in z.
        value = np.sum(np.logaddexp(0, z) - w * z)
        grad = x.T @ (expit(z) - w)
        return value, grad

    fit = minimize(loss, np.zeros(2), jac=True, method="BFGS")
    a, b = fit.x
    # A (quasi-)separable fit walks off to infinity (every shorter answer lost, say): no finite answer.
    if not np.all(np.isfinite(fit.x)) or abs(a) > 30:
        return nan
    p = expit(x @ fit.x)
    information = (x * (p * (1 - p))[:, None]).T @ x
    try:
        cov = np.linalg.inv(information)
    except np.linalg.LinAlgError:
        return nan
    rate = float(expit(a))
    se = rate * (1 - rate) * math.sqrt(max(cov[0, 0], 0.0))
    if not (math.isfinite(rate) and math.isfinite(se)):
        return nan
    return {"mean": rate, "se": se, "n": n, "slope": float(b)}


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


# ---------------------------------------------------------------- frontiers compared at matched KL
# A frontier is the Pareto step function of an algorithm's points: F(k) = the best reward among its
# points with KL <= k. Two frontiers are compared where both are defined, on the pieces of KL on
# which both are constant, with a bootstrap over seeds and prompts (frontier_replicates).


def step_frontier(kl, reward, at):
    """F(k) at each k of `at`: the best reward among the points with KL <= k; vectorised over leading axes.

    `kl`, `reward`: (..., P) arrays, NaN for a point that is missing; `at`: (G,). Returns (..., G).
    Below every point F is the reward of the lowest-KL point (in a bootstrap replicate an
    algorithm's first point may move just right of a KL where the observed frontier starts; it
    keeps its first level there); NaN where there is no point at all.
    """
    import numpy as np

    kl, reward, at = np.asarray(kl, dtype=float), np.asarray(reward, dtype=float), np.asarray(at, dtype=float)
    ok = np.isfinite(kl) & np.isfinite(reward)
    order = np.argsort(np.where(ok, kl, np.inf), axis=-1, kind="stable")
    k = np.take_along_axis(np.where(ok, kl, np.inf), order, -1)
    best = np.maximum.accumulate(np.take_along_axis(np.where(ok, reward, -np.inf), order, -1), axis=-1)
    below = (k[..., :, None] <= at).sum(-2)  # (..., G): how many points have KL <= k
    out = np.take_along_axis(best, np.maximum(below - 1, 0), -1)
    out[~ok.any(-1)] = np.nan
    return out


def kl_pieces(kls: Sequence[float], lo: float, hi: float) -> tuple[list[float], list[float]]:
    """The pieces of [lo, hi] on which step functions through points at `kls` are constant: (starts, at).

    The breakpoints are lo, hi and every finite KL of `kls` inside [lo, hi]. Piece j runs from
    starts[j] to the next breakpoint and is evaluated at its midpoint at[j], where a small shift of
    a point's KL in a bootstrap replicate does not change which side of it the piece lies; the
    last piece is hi itself (a frontier may step up exactly there). With lo == hi, one piece.
    Every value a difference of two such step functions takes on [lo, hi] is taken at some at[j].
    """
    if not lo < hi:
        return [float(lo)], [float(lo)]
    breaks = sorted({float(lo), float(hi)} | {float(k) for k in kls if math.isfinite(k) and lo <= k <= hi})
    starts = breaks[:-1] + [breaks[-1]]
    at = [(x + y) / 2 for x, y in zip(breaks, breaks[1:])] + [breaks[-1]]
    return starts, at


def frontier_replicates(kl, reward, reward_se, prompt_values, prompt_weights, rng) -> tuple:
    """Each point's (KL, reward) in every bootstrap replicate, and as observed: (kl_obs, rw_obs, kl_boot, rw_boot).

    `kl`, `reward`, `reward_se`: (P, S) arrays, point x training seed, NaN where a seed lacks the
    point; `prompt_values`: (P, S, Q), the point's per-prompt mean reward over a prompt index
    shared by all algorithms (NaN where it has none: a record keeps per-sample values for its
    final policy only); `prompt_weights`: (B, Q) how often each prompt is drawn in each of B
    replicates, the same array for every algorithm so that differences are paired over prompts.

    A replicate (Owen's bootstrap for crossed factors: every seed evaluates the same prompts):
    - draws the S seeds with replacement (with one seed, keeps it);
    - within each (point, seed) moves the reward by the prompt draw, as the weighted mean of its
      per-prompt values minus their plain mean, or, where the record keeps only the aggregate,
      by a normal draw with its standard error (not paired over prompts; NaN se counts as 0);
    - averages KL and reward over the drawn seeds of each point (NaN where none has it).
    KL moves with the seed draw only. Observed values: the plain means over seeds, (P,).
    """
    import numpy as np

    kl, reward = np.asarray(kl, dtype=float), np.asarray(reward, dtype=float)
    se = np.asarray(reward_se, dtype=float)
    values, weights = np.asarray(prompt_values, dtype=float), np.asarray(prompt_weights, dtype=float)
    n_points, n_seeds = kl.shape
    n_boot = weights.shape[0]
    present = np.isfinite(kl) & np.isfinite(reward)
    kl0, rw0 = np.where(present, kl, 0.0), np.where(present, reward, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        kl_obs = kl0.sum(1) / present.sum(1)
        rw_obs = rw0.sum(1) / present.sum(1)
    if n_seeds > 1:
        draws = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
        counts = (draws[:, :, None] == np.arange(n_seeds)).sum(1).astype(float)
    else:
        counts = np.ones((n_boot, 1))
    has = np.isfinite(values)
    v0, h = np.where(has, values, 0.0), has.astype(float)
    keeps = has.any(-1)
    n_prompts = values.shape[-1]
    with np.errstate(invalid="ignore", divide="ignore"):  # one matrix product each: (B, Q) x (Q, P * S)
        den = (weights @ h.reshape(-1, n_prompts).T).reshape(n_boot, n_points, n_seeds)
        drawn = (weights @ v0.reshape(-1, n_prompts).T).reshape(n_boot, n_points, n_seeds)
        moved = drawn / den - v0.sum(-1) / h.sum(-1)
    moved = np.where(np.isfinite(moved), moved, 0.0)  # a point none of whose prompts was drawn stays put
    noise = np.where(np.isfinite(se), se, 0.0) * rng.standard_normal((n_boot, n_points, n_seeds))
    rw = rw0 + np.where(keeps, moved, noise)
    w = counts[:, None, :] * present
    total = w.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        kl_boot = (w * kl0).sum(-1) / total
        rw_boot = (w * rw).sum(-1) / total
    return kl_obs, rw_obs, kl_boot, rw_boot


def difference_band(observed, replicates, level: float = 0.95) -> dict:
    """Intervals and paired bootstrap p-values for a difference curve d (G,) from its replicates (B, G).

    - low, high: pointwise percentile intervals;
    - band_low, band_high: a simultaneous band, d ± c·sd, where sd is the replicates' standard
      deviation at each point and c the `level` quantile of max_g |d*_g - d_g| / sd_g over the
      replicates (the bootstrap sup-t band): it covers the whole curve at once with probability
      `level`, so "at every KL" and "at some KL" read from it keep their error rate;
    - p: the paired bootstrap test at each point, 2·min(share of replicates <= 0, share >= 0),
      each share counting the observed difference once ((1 + count) / (1 + B)).
    Replicates that are NaN at a point are left out there. Points without spread have a band of width 0.
    """
    import warnings

    import numpy as np

    d, reps = np.asarray(observed, dtype=float), np.asarray(replicates, dtype=float)
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: NaN results are the answer
        low, high = np.nanquantile(reps, [(1 - level) / 2, 1 - (1 - level) / 2], axis=0)
        sd = np.nanstd(reps, axis=0, ddof=1)
        spread = np.isfinite(sd) & (sd > 1e-12 * (1 + np.abs(d)))  # not rounding noise of a constant
        t = np.nanmax(np.where(spread, np.abs(reps - d) / np.where(spread, sd, 1.0), np.nan), axis=1)
        t = t[np.isfinite(t)]
        c = float(np.quantile(t, level)) if t.size else 0.0
        half = np.where(spread, c * sd, 0.0)
        n = np.isfinite(reps).sum(0)
        le, ge = (reps <= 0).sum(0), (reps >= 0).sum(0)
        p = np.minimum(1.0, 2 * np.minimum(1 + le, 1 + ge) / (1 + n))
    return {
        "diff": d,
        "low": low,
        "high": high,
        "band_low": d - half,
        "band_high": d + half,
        "p": np.where(n > 0, p, np.nan),
        "c": c,
    }


def dominance_verdict(band_low, band_high, margin: float = 0.0) -> tuple[str, int]:
    """Whether "A - B >= -margin at every point" holds, read from a simultaneous band of A - B.

    - "holds": the band lies above -margin at every point (with margin 0: A is above B everywhere);
    - "fails": the band lies below -margin at some point (A is below B - margin there);
    - "undecided": neither, i.e. somewhere the band reaches -margin and nowhere does it lie below it.
    A point with a NaN end counts as undecided. Also returns the index of the deciding point: for
    "fails" the point whose band is lowest (the strongest evidence against), otherwise the point
    whose band reaches lowest (where the claim is least supported).
    """
    import numpy as np

    lo, hi = np.asarray(band_low, dtype=float), np.asarray(band_high, dtype=float)
    if lo.size == 0:
        return "undecided", -1
    below = np.isfinite(hi) & (hi < -margin)
    if below.any():
        return "fails", int(np.argmin(np.where(below, hi, np.inf)))
    weakest = int(np.argmin(np.where(np.isfinite(lo), lo, -np.inf)))
    above = np.isfinite(lo) & (lo > -margin)
    return ("holds" if above.all() else "undecided"), weakest


def sign_changes(starts: Sequence[float], diff: Sequence[float]) -> list[float]:
    """The KLs (piece starts) at which a difference curve changes sign, zeros passed over."""
    out, last = [], 0.0
    for k, d in zip(starts, diff):
        if not math.isfinite(d) or d == 0:
            continue
        if last and (d > 0) != (last > 0):
            out.append(float(k))
        last = d
    return out
