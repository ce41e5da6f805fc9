"""bench.kl: both sequence-KL estimators against the KL enumerated over every possible completion."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
from tiny import tiny_gpt2, tiny_llama

from bench.kl import best_of_n_kl_bound, sequence_kl
from bench.sampling import sample

PAD = 0


def _toy_pair(vocab: int, noise: float = 0.1):
    """A policy and a reference that is the policy with perturbed weights (KL of about one nat)."""
    policy = tiny_gpt2(vocab_size=vocab, seed=0)
    reference = copy.deepcopy(policy)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(noise * torch.randn_like(p))
    return policy, reference


def _completion_logps(model, prompt: list[int], completions: list[tuple[int, ...]], temperature: float) -> torch.Tensor:
    """log pi(y | prompt) of each completion, from one plain unpadded forward per sequence set."""
    ids = torch.tensor([prompt + list(y) for y in completions])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids, attention_mask=torch.ones_like(ids)).logits.double() / temperature, -1)
    picked = logp[:, len(prompt) - 1 : -1].gather(-1, ids[:, len(prompt) :, None]).squeeze(-1)
    return picked.sum(-1)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_estimators_match_the_enumerated_sequence_kl(temperature):
    vocab, length, n_each = 5, 3, 4000
    policy, reference = _toy_pair(vocab)
    prompts = [[1, 2], [3]]
    every = list(itertools.product(range(vocab), repeat=length))  # all 125 completions
    enumerated = []
    for prompt in prompts:
        logp = _completion_logps(policy, prompt, every, temperature)
        logq = _completion_logps(reference, prompt, every, temperature)
        assert abs(float(logp.exp().sum()) - 1) < 1e-9
        enumerated.append(float((logp.exp() * (logp - logq)).sum()))
    target = sum(enumerated) / len(enumerated)
    assert target > 0.5  # a KL worth measuring

    prompt_ids = [prompts[0]] * n_each + [prompts[1]] * n_each
    completions = sample(
        policy,
        prompt_ids,
        max_new_tokens=length,
        temperature=temperature,
        eos_token_id=None,
        pad_token_id=PAD,
        seed=0,
        batch_size=1024,
    )
    exact, log_ratio = sequence_kl(
        policy, reference, prompt_ids, completions, pad_id=PAD, batch_size=1000, temperature=temperature
    )
    exact, log_ratio = torch.tensor(exact, dtype=torch.float64), torch.tensor(log_ratio, dtype=torch.float64)
    n = len(prompt_ids)
    assert abs(exact.mean() - target) < 0.01 * target
    assert abs(log_ratio.mean() - target) < 3 * log_ratio.std() / math.sqrt(n)
    assert exact.std() < log_ratio.std() / 3  # the reason to prefer the exact per-token KL


def test_kl_of_a_model_with_itself_is_zero():
    model = tiny_llama(vocab_size=32, seed=3)
    prompts = [[1, 2, 3], [4], [5, 6]]
    completions = sample(model, prompts, max_new_tokens=5, eos_token_id=None, pad_token_id=PAD, seed=0)
    exact, log_ratio = sequence_kl(model, model, prompts, completions, pad_id=PAD)
    assert max(map(abs, exact)) < 1e-6 and max(map(abs, log_ratio)) < 1e-6


def test_per_sequence_values_match_a_hand_computation_under_any_batching():
    policy, reference = _toy_pair(vocab=7, noise=0.2)
    prompts = [[1, 2, 3], [4], [5, 6], [2, 2, 2, 2, 2]]
    completions = [[3, 1], [6, 5, 4, 0], [], [1]]
    by_one = sequence_kl(policy, reference, prompts, completions, pad_id=PAD, batch_size=1, temperature=0.9)
    together = sequence_kl(policy, reference, prompts, completions, pad_id=PAD, batch_size=4, temperature=0.9)
    for prompt, completion, kl_one, ratio_one, kl_all, ratio_all in zip(prompts, completions, *by_one, *together):
        ids = torch.tensor([prompt + completion])
        with torch.no_grad():
            logp = torch.log_softmax(policy(ids).logits[0].double() / 0.9, -1)
            logq = torch.log_softmax(reference(ids).logits[0].double() / 0.9, -1)
        steps = range(len(prompt) - 1, len(prompt) + len(completion) - 1)
        kl = sum(float((logp[t].exp() * (logp[t] - logq[t])).sum()) for t in steps)
        ratio = sum(float(logp[t, ids[0, t + 1]] - logq[t, ids[0, t + 1]]) for t in steps)
        assert kl_one == pytest.approx(kl, abs=1e-5) and kl_all == pytest.approx(kl, abs=1e-5)
        assert ratio_one == pytest.approx(ratio, abs=1e-5) and ratio_all == pytest.approx(ratio, abs=1e-5)
    assert by_one[0][2] == 0.0 and by_one[1][2] == 0.0  # empty completion


def test_best_of_n_bound_values():
    assert best_of_n_kl_bound(1) == 0.0
    assert best_of_n_kl_bound(2) == pytest.approx(0.19314718, abs=1e-8)  # ln 2 - 1/2
    assert best_of_n_kl_bound(16) == pytest.approx(1.83508872, abs=1e-8)  # ln 16 - 15/16
    with pytest.raises(ValueError):
        best_of_n_kl_bound(0)


@pytest.mark.parametrize("n", [2, 4, 16])
def test_best_of_n_bound_is_tight_for_many_equally_likely_outcomes(n):
    """Best-of-n over m outcomes ranked by reward: P(rank i) = (i/m)^n - ((i-1)/m)^n, exactly."""
    m = 100_000
    ranks = torch.arange(1, m + 1, dtype=torch.float64)
    best = (ranks / m) ** n - ((ranks - 1) / m) ** n
    kl = float((best * torch.log(best * m)).sum())
    assert kl <= best_of_n_kl_bound(n)
    assert kl == pytest.approx(best_of_n_kl_bound(n), rel=1e-3)
