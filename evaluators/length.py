"""Completion length in tokens: DPO and judges are both known to drift toward longer answers."""

from __future__ import annotations

from bench.contracts import Evaluation
from bench.stats import by_prompt


class Length:
    name = "length"
    description = "completion length in tokens (SE over prompts)"
    higher_is_better = None  # neither: reported so length drift is visible

    def evaluate(self, samples, ctx) -> Evaluation:
        lengths = [float(len(s.completion_ids)) for s in samples]
        return Evaluation(
            per_sample={"length": lengths}, aggregates={"length": by_prompt(lengths, [s.prompt_index for s in samples])}
        )
