"""Implicit-reward accuracy on held-out preference pairs.

The share of pairs whose chosen completion gets a higher implicit reward than the rejected one,
i.e. where the policy ranks the pair as the labels do; ties count one half. The implicit reward
is the run's algorithm's (bench.contracts.ImplicitReward, handed over as ctx.implicit_reward):
DPO's beta * (log pi - log pi_ref) unless the algorithm declares its own, such as SimPO's
length-normalised beta / |y| * log pi. Reference log-probs are computed once per (reference,
pairs) and cached, shared with training.
"""

from __future__ import annotations

from bench.contracts import Evaluation, optional
from bench.logprobs import pad_id
from bench.stats import mean_se, pairwise_win


class PairAccuracy:
    name = "pair-accuracy"
    description = "implicit-reward accuracy of the policy on held-out preference pairs"
    higher_is_better = True
    # A property of the final policy, not a frontier coordinate: intermediate policies skip its forwards.
    at_checkpoints = False

    def applies(self, ctx) -> bool:
        return optional(ctx.trained, "policy", "model") is not None and bool(ctx.test_preferences)

    def evaluate(self, samples, ctx) -> Evaluation:
        import torch

        from bench.logprobs import cached_dataset_logps, dataset_logps, encode, eval_tokens
        from bench.preference import ends_with_eos

        tok, max_len, eos = ctx.tokenizer, ctx.train.max_length, ends_with_eos(ctx.task)
        pad, bs = pad_id(tok), ctx.generation.batch_size
        key = ctx.task.reference_key  # same file name scheme as training: shared across runs
        rewards = {}
        for side in ("chosen", "rejected"):
            # Encoded as training encodes them (eos after whole responses), so the cached reference values match.
            enc = [encode(tok, p["prompt"], p[side], max_len, eos) for p in ctx.test_preferences]
            ref = cached_dataset_logps(ctx.reference, enc, pad, bs, ctx.cache_dir / "ref_logps", key)
            model = optional(ctx.trained, "policy", "model")
            logps = dataset_logps(model, enc, pad, bs, max_tokens=eval_tokens(model))
            n_tokens = torch.tensor([len(ids) - n_prompt for ids, n_prompt in enc])
            rewards[side] = ctx.implicit_reward(logps, ref, n_tokens)
        margins = (rewards["chosen"] - rewards["rejected"]).tolist()
        correct = [pairwise_win(m, 0.0) for m in margins]
        return Evaluation(aggregates={"pair_accuracy": {**mean_se(correct), "unit": "pairs"}})
