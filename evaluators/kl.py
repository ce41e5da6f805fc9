"""Sequence-level KL(policy || reference) on the policy's own samples.

Two estimators of the same quantity, each with a standard error over prompts:
`kl` sums the exact per-token KL over the vocabulary along each sample (low variance), and
`kl_mc` sums the sampled tokens' log-ratios (the plain Monte-Carlo estimate). A policy that is
not a model (best-of-N) reports its analytic bound instead, marked as such.
"""

from __future__ import annotations

from bench.contracts import Evaluation, optional
from bench.logprobs import pad_id
from bench.stats import by_prompt


class KL:
    name = "kl"
    description = "sequence KL(policy || reference) in nats: exact per-token sum and Monte-Carlo log-ratio"
    higher_is_better = False

    def applies(self, ctx) -> bool:
        policy = ctx.trained
        return ctx.reference is not None and (
            optional(policy, "policy", "model") is not None or optional(policy, "policy", "kl_bound") is not None
        )

    def evaluate(self, samples, ctx) -> Evaluation:
        from bench.kl import sequence_kl

        model = optional(ctx.trained, "policy", "model")
        if model is None:
            bound = float(ctx.trained.kl_bound())
            return Evaluation(
                aggregates={
                    "kl": {
                        "mean": bound,
                        "se": 0.0,
                        "n": len({s.prompt_index for s in samples}),
                        "estimator": "analytic bound",
                    }
                }
            )
        exact, mc = sequence_kl(
            model,
            ctx.reference,
            [s.prompt_ids for s in samples],
            [s.completion_ids for s in samples],
            pad_id=pad_id(ctx.tokenizer),
            batch_size=ctx.generation.batch_size,
            temperature=ctx.generation.temperature or 1.0,
        )
        index = [s.prompt_index for s in samples]
        aggregates = {"kl": by_prompt(exact, index), "kl_mc": by_prompt(mc, index)}
        if not ctx.generation.temperature:
            # Greedy samples are not draws from the policy, so these sums do not estimate its KL.
            for agg in aggregates.values():
                agg["estimator"] = "T=1 along greedy samples, not an estimate of KL"
        return Evaluation(per_sample={"kl": exact, "kl_mc": mc}, aggregates=aggregates)
