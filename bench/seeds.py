"""Seeds derived from a run's seed: one named stream per use, so no two uses draw the same numbers.

`stream(seed, k)` is the k-th seed of a family (an epoch's shuffle, a sampling batch, a PPO
update); `seed + OFFSET` separates whole families (evaluation sampling from training, the judge's
SFT baseline from evaluation). The constants are the ones every record so far was made with:
changing one changes every number.
"""

from __future__ import annotations

STRIDE = 1_000_003
"""A prime above any count of epochs, batches or updates in a run, so streams of nearby seeds never meet."""
EVALUATION = 1_000_003
"""Evaluation sampling draws from seed + EVALUATION, apart from everything training draws."""
JUDGE_SFT_BASELINE = 2_000_003
"""The judge's starting-policy baseline (judge.baseline=sft) samples from seed + JUDGE_SFT_BASELINE."""


def stream(seed: int, index: int) -> int:
    """The index-th seed derived from `seed`, within what a torch generator takes."""
    return (seed * STRIDE + index) % 2**64
