"""KL(pi || pi_ref) of sampled completions, the x-axis of the reward-vs-KL frontier.

For completions y sampled from the policy, the sequence KL is KL(pi(.|x) || pi_ref(.|x)) =
E_y[ sum_t KL(pi(.|x, y_<t) || pi_ref(.|x, y_<t)) ] (chain rule). `sequence_kl` gives two
unbiased per-sequence estimates of it:

- exact: the sum over generated tokens of the per-token KL over the whole vocabulary. It
  averages out the choice of y_t at every step, so its variance is much lower.
- log-ratio: sum_t [log pi(y_t|.) - log pi_ref(y_t|.)], the Monte-Carlo estimate most code uses;
  kept to show how far the two disagree on few samples (one reason reported KLs differ).

Best-of-N is not a model with log-probs; its KL to the base policy has the analytic bound
`best_of_n_kl_bound`.
"""

from __future__ import annotations

import math

import torch

from bench.logprobs import (
    AUTO,
    chunk_logits,
    chunked_map,
    eval_tokens,
    log_softmax_,
    one_chunk,
    scored_in_length_order,
    scored_logits,
    scored_states,
    vocab_size,
)


def sequence_kl(
    policy,
    reference,
    prompt_ids: list[list[int]],
    completion_ids: list[list[int]],
    *,
    pad_id: int,
    batch_size: int = 32,
    temperature: float = 1.0,
    max_tokens: int | None = AUTO,
) -> tuple[list[float], list[float]]:
    """Per-sequence (exact KL summed over generated tokens, Monte-Carlo log-ratio sum).

    Both models score `logits / temperature`: the distribution the completions were sampled
    from. An empty completion has KL 0. Sequences are batched in length order with right padding;
    both models' vocabulary-wide logits exist for at most `max_tokens` positions at a time (AUTO: the
    evaluation budget bench.logprobs.EVAL_LOGITS; None: a whole batch at once).
    """
    if len(prompt_ids) != len(completion_ids):
        raise ValueError(f"sequence_kl: {len(prompt_ids)} prompts but {len(completion_ids)} completions")
    if temperature <= 0:
        raise ValueError(
            f"sequence_kl: temperature must be positive (greedy samples have no KL to score), got {temperature}"
        )
    if any(len(p) == 0 for p in prompt_ids):
        raise ValueError("sequence_kl: every prompt needs at least one token")
    if max_tokens == AUTO:
        max_tokens = eval_tokens(policy)
    encoded = [(p + c, len(p)) for p, c in zip(prompt_ids, completion_ids)]
    scores = scored_in_length_order(
        [policy, reference],
        encoded,
        pad_id,
        batch_size,
        lambda b: _batch_kl(policy, reference, b, temperature, max_tokens),
    )
    return [k for k, _ in scores], [r for _, r in scores]


def _batch_kl(
    policy, reference, batch: dict, temperature: float, max_tokens: int | None = AUTO
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (exact KL, log-ratio) sums [B] over completion tokens, `max_tokens` positions at a time."""
    device = next(policy.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    if one_chunk(policy, batch, max_tokens):
        return _whole_batch_kl(policy, reference, batch, temperature)
    policy_states, policy_head, start = scored_states(policy, batch)
    reference_device = next(reference.parameters()).device
    reference_states, reference_head, _ = scored_states(
        reference, {k: v.to(reference_device) for k, v in batch.items()}
    )
    completion = batch["completion_mask"][:, start + 1 :]
    rows, cols = completion.nonzero(as_tuple=True)
    labels = batch["input_ids"][:, start + 1 :][rows, cols]
    # The reference's states stay on its device; each chunk's logits come back to the policy's.
    reference_rows = reference_states[rows.to(reference_device), cols.to(reference_device)]

    def per_token(states: torch.Tensor, reference_states: torch.Tensor, labels: torch.Tensor) -> tuple:
        # Scored without gradients (scored_in_length_order), so tensors not needed again are overwritten in
        # place: at most three vocabulary-wide tensors per chunk, and the values of the plain expressions.
        policy_logps = log_softmax_(chunk_logits(policy_head, states, temperature))
        reference_logps = log_softmax_(chunk_logits(reference_head, reference_states, temperature)).to(device)
        picked = labels.unsqueeze(-1)
        ratio = (policy_logps.gather(-1, picked) - reference_logps.gather(-1, picked)).squeeze(-1)
        log_ratio = reference_logps.neg_().add_(policy_logps)  # policy - reference, exactly
        kl = policy_logps.exp_().mul_(log_ratio).sum(-1)
        return kl, ratio

    scored = policy_states[rows, cols]
    kl, ratio = chunked_map(per_token, (scored, reference_rows, labels), max_tokens, vocab_size(policy_head, scored))
    mask = completion.to(kl.dtype)
    per_token_kl = torch.zeros(completion.shape, dtype=kl.dtype, device=device).index_put((rows, cols), kl)
    per_token_ratio = torch.zeros(completion.shape, dtype=ratio.dtype, device=device).index_put((rows, cols), ratio)
    return (per_token_kl * mask).sum(-1).cpu(), (per_token_ratio * mask).sum(-1).cpu()


def _whole_batch_kl(policy, reference, batch: dict, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`_batch_kl` for a batch whose logits fit one chunk: both models' [B, T, V] log-probs at once."""
    device = next(policy.parameters()).device
    policy_logits, start = scored_logits(policy, batch, temperature)
    policy_logps = log_softmax_(policy_logits)
    reference_batch = {k: v.to(next(reference.parameters()).device) for k, v in batch.items()}
    reference_logps = log_softmax_(scored_logits(reference, reference_batch, temperature)[0]).to(device)
    mask = batch["completion_mask"][:, start + 1 :].to(policy_logps.dtype)
    per_token_kl = (policy_logps.exp() * (policy_logps - reference_logps)).sum(-1)
    labels = batch["input_ids"][:, start + 1 :].unsqueeze(-1)
    per_token_ratio = (policy_logps.gather(-1, labels) - reference_logps.gather(-1, labels)).squeeze(-1)
    return (per_token_kl * mask).sum(-1).cpu(), (per_token_ratio * mask).sum(-1).cpu()


def best_of_n_kl_bound(n: int) -> float:
    """Upper bound on KL(best-of-n || base policy): log n - (n - 1) / n (0 for n = 1)."""
    if n < 1:
        raise ValueError(f"best_of_n_kl_bound: n must be at least 1, got {n}")
    return math.log(n) - (n - 1) / n
