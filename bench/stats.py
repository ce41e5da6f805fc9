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


def ci95_halfwidth(se: float, n: int) -> float:
    """Half-width of a two-sided 95% t interval for a mean with n observations."""
    if n < 2 or not math.isfinite(se):
        return float("nan")
    from scipy.stats import t

    return float(t.ppf(0.975, n - 1)) * se
