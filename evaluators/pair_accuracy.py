"""Implicit-reward accuracy on held-out preference pairs.

The share of pairs where log pi(chosen) - log pi_ref(chosen) exceeds the same for rejected,
i.e. where the policy's implicit reward (up to beta) ranks the pair as the labels do; ties count
one half. Reference log-probs are computed once per (reference, pairs) and cached.
"""

from __future__ import annotations

from bench.contracts import Evaluation
from bench.stats import mean_se


class PairAccuracy:
    name = "pair-accuracy"
    description = "implicit-reward accuracy of the policy on held-out preference pairs"
    higher_is_better = True

    def applies(self, ctx) -> bool:
        return hasattr(ctx.trained, "model") and bool(ctx.test_preferences)

    def evaluate(self, samples, ctx) -> Evaluation:
        from bench.logprobs import cached_dataset_logps, dataset_logps, encode

        tok, max_len = ctx.tokenizer, ctx.train.max_length
        pad, bs = tok.pad_token_id, ctx.generation.batch_size
        key = ctx.task.reference_key  # same file name scheme as training: shared across runs
        margins = []
        logps = {}
        for side in ("chosen", "rejected"):
            enc = [encode(tok, p["prompt"], p[side], max_len) for p in ctx.test_preferences]
            ref = cached_dataset_logps(ctx.reference, enc, pad, bs, ctx.cache_dir / "ref_logps", key)
            logps[side] = dataset_logps(ctx.trained.model, enc, pad, bs) - ref
        margins = (logps["chosen"] - logps["rejected"]).tolist()
        correct = [1.0 if m > 0 else 0.5 if m == 0 else 0.0 for m in margins]
        return Evaluation(aggregates={"pair_accuracy": {**mean_se(correct), "unit": "pairs"}})
