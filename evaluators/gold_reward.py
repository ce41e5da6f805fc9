"""Gold reward: the task's ground-truth scorer (e.g. P(positive) for sentiment) on the policy's samples."""

from __future__ import annotations

from bench.contracts import Evaluation
from bench.stats import by_prompt


class GoldReward:
    name = "gold-reward"
    description = "mean ground-truth reward of the policy's completions (SE over prompts)"
    higher_is_better = True

    def applies(self, ctx) -> bool:
        return ctx.reward is not None

    def evaluate(self, samples, ctx) -> Evaluation:
        scores = [float(s) for s in ctx.reward([s.prompt for s in samples], [s.completion for s in samples])]
        agg = by_prompt(scores, [s.prompt_index for s in samples])
        return Evaluation(per_sample={"gold_reward": scores}, aggregates={"gold_reward": agg})
