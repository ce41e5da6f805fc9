"""Chunked log-probs and KL: equal to the whole-batch computation, gradients included, never a [B, T, V] tensor."""

from __future__ import annotations

import copy
import random

import pytest
import torch
from tiny import tiny_gpt2, tiny_llama

from bench.algorithms.ppo import PolicyWithValue
from bench.kl import sequence_kl
from bench.logprobs import collate, collate_pairs, concatenated_forward, sequence_logps, split_head, token_logps

VOCAB = 64
PAD = 0
MODELS = {"gpt2": tiny_gpt2, "llama": tiny_llama}
CHUNKS = [1, 3, 7, 10_000, None]  # mid-sequence splits, then one chunk larger than the batch


def _encoded(n: int, seed: int) -> list[tuple[list[int], int]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        n_prompt, n_completion = rng.randint(1, 6), rng.randint(0, 9)
        out.append(([rng.randrange(1, VOCAB) for _ in range(n_prompt + n_completion)], n_prompt))
    return out


def _full_token_logps(model, batch: dict, temperature: float = 1.0) -> torch.Tensor:
    """The whole-batch computation: every position's logits from the model's forward, then gather - logsumexp."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    logits = logits / temperature
    picked = logits.gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1) - torch.logsumexp(logits, -1)
    return picked.masked_fill(batch["completion_mask"][:, 1:] == 0, 0.0)


def _full_kl(policy, reference, batch: dict, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        logp = torch.log_softmax(
            policy(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits / temperature, -1
        )
        logq = torch.log_softmax(
            reference(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits / temperature, -1
        )
    logp, logq, mask = logp[:, :-1], logq[:, :-1], batch["completion_mask"][:, 1:].float()
    labels = batch["input_ids"][:, 1:, None]
    kl = (logp.exp() * (logp - logq)).sum(-1)
    ratio = (logp.gather(-1, labels) - logq.gather(-1, labels)).squeeze(-1)
    return (kl * mask).sum(-1), (ratio * mask).sum(-1)


def _grads(model) -> list[torch.Tensor]:
    grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return grads


def _assert_grads_close(got: list[torch.Tensor], want: list[torch.Tensor]) -> None:
    """Within 1e-5 of each tensor's scale: a weight's gradient sums over every scored position, and chunks sum
    them in another order, so float32 rounding differs a little (as much as the whole-batch float32 result
    itself differs from float64)."""
    for g, w in zip(got, want):
        assert (g - w).abs().max() <= 1e-5 * max(1.0, float(w.abs().max()))


@pytest.mark.parametrize("arch", MODELS)
def test_models_split_into_backbone_and_head(arch):
    model = MODELS[arch](vocab_size=VOCAB, seed=0)
    backbone, head = split_head(model)
    ids = torch.tensor([[1, 2, 3, 4]])
    torch.testing.assert_close(head(backbone(input_ids=ids).last_hidden_state), model(input_ids=ids).logits)
    assert split_head(torch.nn.Linear(2, 2)) is None  # not a known causal LM: full logits instead


@pytest.mark.parametrize("arch", MODELS)
@pytest.mark.parametrize("max_tokens", CHUNKS)
def test_token_logps_and_gradients_equal_the_whole_batch(arch, max_tokens):
    model = MODELS[arch](vocab_size=VOCAB, seed=1)
    batch = collate(_encoded(5, seed=1), PAD)
    _full_token_logps(model, batch, 0.8).sum().backward()
    expected_grads = _grads(model)
    expected = _full_token_logps(model, batch, 0.8).detach()

    logps, mask = token_logps(model, batch, 0.8, max_tokens=max_tokens)
    torch.testing.assert_close(logps, expected, atol=1e-5, rtol=0)
    assert (logps[mask == 0] == 0).all()
    logps.sum().backward()
    _assert_grads_close(_grads(model), expected_grads)
    with torch.no_grad():
        want = _full_token_logps(model, batch).sum(-1)
        torch.testing.assert_close(sequence_logps(model, batch, max_tokens=max_tokens), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", MODELS)
@pytest.mark.parametrize("max_tokens", CHUNKS)
def test_concatenated_forward_and_its_gradients_equal_the_whole_batch(arch, max_tokens):
    model = MODELS[arch](vocab_size=VOCAB, seed=2)
    pairs = [{"chosen": c, "rejected": r, "index": i} for i, (c, r) in enumerate(zip(_encoded(3, 2), _encoded(3, 3)))]
    batch = collate_pairs(pairs, PAD)
    full = _full_token_logps(model, batch)
    (full[:3].sum(-1) - 2 * full[3:].sum(-1)).sum().backward()
    expected_grads = _grads(model)
    out = concatenated_forward(model, batch, max_tokens=max_tokens)
    torch.testing.assert_close(out["chosen_token_logps"], full[:3].detach(), atol=1e-5, rtol=0)
    torch.testing.assert_close(out["rejected_logps"], full[3:].sum(-1).detach(), atol=1e-5, rtol=0)
    (out["chosen_logps"] - 2 * out["rejected_logps"]).sum().backward()
    _assert_grads_close(_grads(model), expected_grads)


@pytest.mark.parametrize("arch", MODELS)
@pytest.mark.parametrize("max_tokens", CHUNKS)
def test_sequence_kl_equals_the_whole_batch(arch, max_tokens):
    policy = MODELS[arch](vocab_size=VOCAB, seed=3)
    reference = copy.deepcopy(policy)
    torch.manual_seed(4)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.1 * torch.randn_like(p))
    encoded = _encoded(6, seed=4)
    prompts, completions = [ids[:n] for ids, n in encoded], [ids[n:] for ids, n in encoded]
    exact, ratio = sequence_kl(
        policy, reference, prompts, completions, pad_id=PAD, batch_size=4, temperature=0.9, max_tokens=max_tokens
    )
    want_exact, want_ratio = [], []
    for ids, n in encoded:  # one row per batch: the same values as any batching
        kl, r = _full_kl(policy, reference, collate([(ids, n)], PAD), 0.9)
        want_exact.append(float(kl[0]))
        want_ratio.append(float(r[0]))
    assert exact == pytest.approx(want_exact, abs=1e-5) and ratio == pytest.approx(want_ratio, abs=1e-5)
    assert max(want_exact) > 0.01  # a KL worth comparing


@pytest.mark.parametrize("max_logits", [None, 5 * VOCAB])
@pytest.mark.parametrize("arch", MODELS)
def test_ppo_forward_equals_the_whole_batch(arch, max_logits, monkeypatch):
    """Whole batch (fits MAX_LOGITS) and in chunks of 5 positions (the test's MAX_LOGITS) alike."""
    from bench.algorithms import ppo

    if max_logits:
        monkeypatch.setattr(ppo, "MAX_LOGITS", max_logits)
        monkeypatch.setattr("bench.logprobs.MAX_LOGITS", max_logits)
    policy = MODELS[arch](vocab_size=VOCAB, seed=5)
    torch.manual_seed(0)
    model = PolicyWithValue(policy, temperature=0.7)
    batch = collate(_encoded(4, seed=5), PAD)
    heads = _HeadShapes(policy)
    logps, entropy, values = model(batch)
    assert heads.largest() <= 5 if max_logits else heads.largest() > 5
    out = policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    logits = out.logits[:, :-1].float() / 0.7
    log_z = torch.logsumexp(logits, -1)
    torch.testing.assert_close(logps, logits.gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1) - log_z)
    torch.testing.assert_close(entropy, log_z - (torch.softmax(logits, -1) * logits).sum(-1))
    torch.testing.assert_close(values, model.value_head(out.hidden_states[-1][:, :-1]).squeeze(-1))
    assert logps.requires_grad and values.requires_grad and not entropy.requires_grad


class _HeadShapes:
    """Records the shape of every output of a model's output projection."""

    def __init__(self, *models):
        self.shapes = []
        for model in models:
            model.get_output_embeddings().register_forward_hook(lambda m, args, out: self.shapes.append(out.shape))

    def largest(self) -> int:
        return max(s[:-1].numel() for s in self.shapes)


@pytest.mark.parametrize("arch", MODELS)
def test_no_vocabulary_wide_tensor_spans_more_than_one_chunk(arch):
    """Structural, not measured: the head (the only vocabulary-wide producer) never sees more than max_tokens rows.

    In the backward pass too: checkpointing reruns the head per chunk rather than keeping every chunk's logits.
    """
    policy, reference = MODELS[arch](vocab_size=VOCAB, seed=6), MODELS[arch](vocab_size=VOCAB, seed=7)
    encoded = _encoded(8, seed=6)
    batch = collate(encoded, PAD)
    n_scored = int(batch["completion_mask"][:, 1:].sum())
    assert n_scored > 20
    heads = _HeadShapes(policy, reference)
    token_logps(policy, batch, max_tokens=5)[0].sum().backward()
    assert heads.shapes and heads.largest() <= 5
    assert len(heads.shapes) == 2 * -(-n_scored // 5)  # every chunk once forward, once recomputed for backward

    heads.shapes.clear()
    prompts, completions = [ids[:n] for ids, n in encoded], [ids[n:] for ids, n in encoded]
    sequence_kl(policy, reference, prompts, completions, pad_id=PAD, batch_size=8, max_tokens=4)
    assert heads.shapes and heads.largest() <= 4

    heads.shapes.clear()
    token_logps(policy, batch, max_tokens=None)
    rows, width = batch["input_ids"].shape
    start = int(batch["completion_mask"][:, 1:].any(0).int().argmax())
    # All at once: the head on every column from the first scored one, less the last (it predicts no token).
    assert heads.largest() == rows * (width - 1 - start)


def test_auto_scores_a_batch_whole_when_it_fits_and_in_chunks_when_it_does_not(monkeypatch):
    """AUTO: the whole-batch path (bitwise today's results) while logits fit the budget (MAX_LOGITS; the exact
    KL's EVAL_LOGITS), bounded chunks beyond."""
    from bench import logprobs

    policy, reference = tiny_gpt2(vocab_size=VOCAB, seed=10), tiny_gpt2(vocab_size=VOCAB, seed=11)
    encoded = _encoded(8, seed=10)
    batch = collate(encoded, PAD)
    prompts, completions = [ids[:n] for ids, n in encoded], [ids[n:] for ids, n in encoded]
    rows, width = batch["input_ids"].shape
    heads = _HeadShapes(policy, reference)
    whole = token_logps(policy, batch)[0]
    kl_whole = sequence_kl(policy, reference, prompts, completions, pad_id=PAD, batch_size=8)
    assert logprobs.one_chunk(policy, batch) and heads.largest() > 8
    assert torch.equal(whole, token_logps(policy, batch, max_tokens=None)[0])

    monkeypatch.setattr(logprobs, "MAX_LOGITS", 8 * VOCAB)
    monkeypatch.setattr(logprobs, "EVAL_LOGITS", 8 * VOCAB)  # the exact KL's budget (evaluation)
    heads.shapes.clear()
    chunked = token_logps(policy, batch)[0]
    kl_chunked = sequence_kl(policy, reference, prompts, completions, pad_id=PAD, batch_size=8)
    assert not logprobs.one_chunk(policy, batch) and heads.largest() <= 8
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.tensor(kl_chunked), torch.tensor(kl_whole), atol=1e-5, rtol=0)


def test_saved_activations_do_not_grow_with_the_number_of_chunks():
    """What autograd keeps for backward: the hidden states, not one [chunk, V] tensor per chunk."""
    model = tiny_gpt2(vocab_size=2048, seed=8)
    batch = collate(_encoded(8, seed=8), PAD)

    def saved_elements(compute):
        total = [0]

        def pack(t):
            total[0] += t.numel()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            compute()
        return total[0]

    n_scored = int(batch["completion_mask"][:, 1:].sum())
    chunked = saved_elements(lambda: token_logps(model, batch, max_tokens=2))
    # Checkpointed chunks keep only their inputs: the same whatever the chunk size, and no logits.
    assert chunked == saved_elements(lambda: token_logps(model, batch, max_tokens=7))
    assert saved_elements(lambda: _full_token_logps(model, batch)) - chunked >= n_scored * 2048
    # A batch that fits one chunk is not recomputed: it keeps its logits for backward, as before chunking.
    assert saved_elements(lambda: token_logps(model, batch, max_tokens=None)) - chunked >= n_scored * 2048


@pytest.mark.parametrize("arch", MODELS)
def test_lora_wrapped_models_split_and_match_their_own_forward(arch):
    peft = pytest.importorskip("peft")
    model = MODELS[arch](vocab_size=VOCAB, seed=9)
    targets = ["c_attn", "lm_head"] if arch == "gpt2" else ["q_proj", "lm_head"]
    config = peft.LoraConfig(r=2, target_modules=targets, init_lora_weights=False, fan_in_fan_out=arch == "gpt2")
    wrapped = peft.get_peft_model(model, config)
    assert split_head(wrapped) is not None
    batch = collate(_encoded(4, seed=9), PAD)
    with torch.no_grad():
        want = _full_token_logps(wrapped, batch)
        with wrapped.disable_adapter():
            assert not torch.allclose(_full_token_logps(wrapped, batch), want, atol=1e-3)  # the adapter matters
    torch.testing.assert_close(token_logps(wrapped, batch, max_tokens=3)[0].detach(), want, atol=1e-5, rtol=0)


def test_auto_chunks_hold_at_most_max_logits_elements(monkeypatch):
    from bench import logprobs

    monkeypatch.setattr(logprobs, "MAX_LOGITS", 10 * 64)
    sizes = []
    (out,) = logprobs.chunked_map(lambda x: (sizes.append(len(x)), x * 2)[1], (torch.arange(25.0),), logprobs.AUTO, 64)
    assert sizes == [10, 10, 5] and torch.equal(out, torch.arange(25.0) * 2)
    sizes.clear()
    logprobs.chunked_map(lambda x: (sizes.append(len(x)), x)[1], (torch.arange(25.0),), None, 64)
    assert sizes == [25]
