"""bench.logprobs: encoding rules, masks, log-probs against a plain full-sequence computation, caching."""

from __future__ import annotations

import random

import pytest
import torch
from tiny import tiny_gpt2, tiny_llama, tiny_tokenizer

from bench.logprobs import (
    cached_dataset_logps,
    collate,
    collate_pairs,
    concatenated_forward,
    dataset_logps,
    encode,
    sequence_logps,
    token_logps,
)

VOCAB = 64
PAD = 0
MODELS = {"gpt2": tiny_gpt2, "llama": tiny_llama}


def _encoded(n: int, seed: int = 0) -> list[tuple[list[int], int]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        n_prompt, n_completion = rng.randint(1, 7), rng.randint(1, 8)
        out.append(([rng.randrange(1, VOCAB) for _ in range(n_prompt + n_completion)], n_prompt))
    return out


def _plain_token_logps(model, ids: list[int], n_prompt: int, temperature: float = 1.0) -> torch.Tensor:
    """The textbook computation on one unpadded sequence: full log_softmax, then pick the realised tokens."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double() / temperature
    logp = torch.log_softmax(logits, -1)
    return torch.stack([logp[t - 1, ids[t]] for t in range(n_prompt, len(ids))])


# ---- encode / collate -------------------------------------------------------------------------


def test_encode_concatenates_separate_tokenizations():
    tok = tiny_tokenizer()
    prompt, completion = "the movie was", " great and wonderful"
    ids, n_prompt = encode(tok, prompt, completion, max_length=100)
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    c = tok(completion, add_special_tokens=False)["input_ids"]
    assert (ids, n_prompt) == (p + c, len(p))
    ids_eos, _ = encode(tok, prompt, completion, max_length=100, add_eos=True)
    assert ids_eos == p + c + [tok.eos_token_id]


def test_encode_truncates_completion_then_prompt_from_the_left():
    tok = tiny_tokenizer()
    prompt, completion = "the film was terrible and the plot", " made no sense at all"
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    c = tok(completion, add_special_tokens=False)["input_ids"]
    assert len(p) >= 4 and len(c) >= 3
    # Room for the prompt and part of the completion: the completion loses its end.
    assert encode(tok, prompt, completion, max_length=len(p) + 2) == (p + c[:2], len(p))
    # The prompt alone fills the budget: keep its last tokens and one completion token.
    assert encode(tok, prompt, completion, max_length=3) == (p[-2:] + c[:1], 2)
    assert encode(tok, prompt, completion, max_length=len(p)) == (p[1:] + c[:1], len(p) - 1)
    # eos is part of the completion and is cut like any completion token.
    assert encode(tok, prompt, completion, max_length=len(p) + len(c), add_eos=True) == (p + c, len(p))
    with pytest.raises(ValueError):
        encode(tok, "", completion, max_length=10)


def test_collate_pads_right_to_the_batch_longest_and_marks_completions():
    batch = collate([([5, 6, 7, 8], 1), ([9, 10], 1), ([1, 2, 3], 3)], pad_id=PAD)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8], [9, 10, PAD, PAD], [1, 2, 3, PAD]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]]
    assert batch["completion_mask"].tolist() == [[0, 1, 1, 1], [0, 1, 0, 0], [0, 0, 0, 0]]
    assert all(v.dtype == torch.long for v in batch.values())


# ---- log-probs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", MODELS)
def test_padded_batch_matches_plain_single_sequences(arch):
    model = MODELS[arch](vocab_size=VOCAB, seed=1)
    encoded = _encoded(6, seed=1)
    batch = collate(encoded, PAD)
    logps, mask = token_logps(model, batch)
    assert logps.shape == mask.shape == (6, batch["input_ids"].shape[1] - 1)
    for r, (ids, n_prompt) in enumerate(encoded):
        plain = _plain_token_logps(model, ids, n_prompt)
        assert mask[r].sum() == len(plain)
        torch.testing.assert_close(logps[r][mask[r] == 1].double(), plain, atol=1e-5, rtol=0)
        assert (logps[r][mask[r] == 0] == 0).all()
    torch.testing.assert_close(
        sequence_logps(model, batch).double(),
        torch.stack([_plain_token_logps(model, ids, n).sum() for ids, n in encoded]),
        atol=1e-5,
        rtol=0,
    )


@pytest.mark.parametrize("arch", MODELS)
def test_padding_invariance(arch):
    model = MODELS[arch](vocab_size=VOCAB, seed=2)
    target = ([3, 4, 5, 6, 7], 2)
    alone, _ = token_logps(model, collate([target], PAD))
    others = [([8] * 12, 3), ([9, 10], 1)]
    padded, _ = token_logps(model, collate([others[0], target, others[1]], PAD))
    torch.testing.assert_close(padded[1, : alone.shape[1]], alone[0], atol=1e-5, rtol=0)
    assert (padded[1, alone.shape[1] :] == 0).all()


def test_temperature_divides_the_logits():
    model = tiny_gpt2(vocab_size=VOCAB, seed=3)
    encoded = _encoded(3, seed=3)
    logps, mask = token_logps(model, collate(encoded, PAD), temperature=0.5)
    for r, (ids, n_prompt) in enumerate(encoded):
        plain = _plain_token_logps(model, ids, n_prompt, temperature=0.5)
        torch.testing.assert_close(logps[r][mask[r] == 1].double(), plain, atol=1e-5, rtol=0)


def test_concatenated_forward_equals_separate_forwards_and_has_gradients():
    model = tiny_llama(vocab_size=VOCAB, seed=4)
    chosen, rejected = _encoded(4, seed=4), _encoded(4, seed=5)
    pairs = [{"chosen": c, "rejected": r, "index": 10 + i} for i, (c, r) in enumerate(zip(chosen, rejected))]
    batch = collate_pairs(pairs, PAD)
    assert batch["input_ids"].shape[0] == 8 and batch["index"].tolist() == [10, 11, 12, 13]
    out = concatenated_forward(model, batch)
    torch.testing.assert_close(out["chosen_logps"], sequence_logps(model, collate(chosen, PAD)), atol=1e-5, rtol=0)
    torch.testing.assert_close(out["rejected_logps"], sequence_logps(model, collate(rejected, PAD)), atol=1e-5, rtol=0)
    torch.testing.assert_close(out["chosen_token_logps"].sum(-1), out["chosen_logps"])
    assert out["chosen_mask"].sum() == sum(len(ids) - n for ids, n in chosen)
    assert out["rejected_mask"].sum() == sum(len(ids) - n for ids, n in rejected)
    (out["chosen_logps"] - out["rejected_logps"]).sum().backward()
    assert model.lm_head.weight.grad is not None and model.lm_head.weight.grad.abs().sum() > 0


def _input_ids(args, kwargs) -> torch.Tensor:
    return kwargs["input_ids"] if kwargs.get("input_ids") is not None else args[0]


def test_concatenated_forward_makes_one_forward_pass():
    model = tiny_gpt2(vocab_size=VOCAB, seed=5)
    calls = []
    # The backbone runs once per forward, whether the model's own forward calls it (a batch that fits
    # one chunk) or the chunked path calls it and applies the output projection itself.
    model.base_model.register_forward_hook(
        lambda module, args, kwargs, output: calls.append(_input_ids(args, kwargs).shape), with_kwargs=True
    )
    pairs = [{"chosen": c, "rejected": r, "index": 0} for c, r in zip(_encoded(3, 6), _encoded(3, 7))]
    concatenated_forward(model, collate_pairs(pairs, PAD))
    assert len(calls) == 1 and calls[0][0] == 6


@pytest.mark.parametrize("arch", MODELS)
def test_a_frozen_reference_scores_its_columns_with_one_matrix_product(arch):
    """The scored columns are a strided slice of the hidden states: for a head without gradients (a frozen
    reference) they are copied contiguous first, so the output projection is one mm (not a batched product on
    the weight repeated per row), with the values of the trainable model's path."""
    model = MODELS[arch](vocab_size=VOCAB, seed=3)
    frozen = MODELS[arch](vocab_size=VOCAB, seed=3).requires_grad_(False)
    encoded = [([1] * 4 + ids, n + 4) for ids, n in _encoded(5, seed=3)]  # leading prompt columns: a slice
    batch = collate(encoded, PAD)
    with torch.profiler.profile() as prof:
        got, _ = token_logps(frozen, batch)
    assert "aten::bmm" not in {e.key for e in prof.key_averages()}
    with torch.no_grad():
        want, _ = token_logps(model, batch)
    assert torch.equal(got, want)


# ---- data sets and the cache -------------------------------------------------------------------


def test_dataset_logps_restores_order_and_batches_by_length():
    model = tiny_gpt2(vocab_size=VOCAB, seed=6)
    encoded = _encoded(11, seed=8)
    expected = torch.stack([_plain_token_logps(model, ids, n).sum() for ids, n in encoded])
    shapes = []
    model.base_model.register_forward_hook(
        lambda module, args, kwargs, output: shapes.append(tuple(_input_ids(args, kwargs).shape)),
        with_kwargs=True,
    )
    got = dataset_logps(model, encoded, PAD, batch_size=4)
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=0)
    lengths = sorted(len(ids) for ids, _ in encoded)
    assert shapes == [(len(lengths[s : s + 4]), lengths[s : s + 4][-1]) for s in range(0, 11, 4)]
    assert not got.requires_grad


def test_cache_hit_does_not_call_the_model(tmp_path):
    model = tiny_llama(vocab_size=VOCAB, seed=7)
    encoded = _encoded(5, seed=9)
    first = cached_dataset_logps(model, encoded, PAD, 2, tmp_path, key="reference-a")
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].suffix == ".pt"  # no temporary file left behind

    def refuse(*args, **kwargs):
        raise AssertionError("the model was called despite a cached result")

    model.forward = model.base_model.forward = refuse
    torch.testing.assert_close(cached_dataset_logps(model, encoded, PAD, 2, tmp_path, key="reference-a"), first)
    # Another model key or other data is a miss.
    with pytest.raises(AssertionError, match="despite a cached"):
        cached_dataset_logps(model, encoded, PAD, 2, tmp_path, key="reference-b")
    with pytest.raises(AssertionError, match="despite a cached"):
        cached_dataset_logps(
            model, encoded[:4] + [(encoded[4][0], encoded[4][1] + 1)], PAD, 2, tmp_path, key="reference-a"
        )


def test_picked_logps_is_gathered_log_softmax_with_autograds_own_gradient():
    from bench.logprobs import picked_logps

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 7, 33, generator=g, requires_grad=True)
    labels = torch.randint(0, 33, (4, 7), generator=g)
    weights = torch.randn(4, 7, generator=g)
    want = torch.log_softmax(logits, -1).gather(-1, labels[..., None]).squeeze(-1)
    (want_grad,) = torch.autograd.grad((want * weights).sum(), logits)
    got = picked_logps(logits, labels)
    (got_grad,) = torch.autograd.grad((got * weights).sum(), logits)
    assert torch.equal(got, want)  # the same arithmetic, not merely close
    torch.testing.assert_close(got_grad, want_grad, atol=1e-7, rtol=0)
    other = logits.gather(-1, labels[..., None]).squeeze(-1) - torch.logsumexp(logits, -1)  # TRL's formulation
    torch.testing.assert_close(got, other, atol=1e-6, rtol=0)
    with torch.no_grad():  # the reference's scores: the same values as the trained policy's, bit for bit
        assert torch.equal(picked_logps(logits, labels), got)
    # Against central differences in float64 (gradcheck itself backpropagates through one graph many times).
    double, small = torch.randn(3, 5, 6, dtype=torch.double, generator=g), torch.randint(0, 6, (3, 5), generator=g)
    w = torch.randn(3, 5, dtype=torch.double, generator=g)
    leaf = double.clone().requires_grad_(True)
    (analytic,) = torch.autograd.grad((picked_logps(leaf, small) * w).sum(), leaf)
    numeric = torch.zeros_like(double)
    for i in range(double.numel()):
        step = torch.zeros(double.numel(), dtype=torch.double)
        step[i] = 1e-6
        step = step.view_as(double)
        with torch.no_grad():
            up, down = (picked_logps(double + step, small) * w).sum(), (picked_logps(double - step, small) * w).sum()
        numeric.view(-1)[i] = (up - down) / 2e-6
    torch.testing.assert_close(analytic, numeric, atol=1e-6, rtol=0)
    # The backward reuses the saved log-softmax: a second backward through the same graph is an error, not a
    # silently wrong gradient.
    twice = picked_logps(logits, labels).sum()
    twice.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        twice.backward()


def test_picked_logps_consumes_only_logits_it_is_given_to_consume():
    from bench.logprobs import log_softmax_, picked_logps

    g = torch.Generator().manual_seed(1)
    base = torch.randn(3, 6, 50, generator=g) * 4
    labels = torch.randint(0, 50, (3, 6), generator=g)
    weights = torch.randn(3, 6, generator=g)
    kept = base.clone().requires_grad_(True)
    want = picked_logps(kept, labels)
    (want_grad,) = torch.autograd.grad((want * weights).sum(), kept)
    assert torch.equal(kept.detach(), base)  # by default the caller's logits are left as they were
    # Logits made for the call (here: a product in the graph) are overwritten with their log-softmax, and the
    # values and gradient are the same bit for bit.
    leaf = base.clone().requires_grad_(True)
    made = leaf * 1.0
    got = picked_logps(made, labels, consume=True)
    (got_grad,) = torch.autograd.grad((got * weights).sum(), leaf)
    assert torch.equal(got, want) and torch.equal(got_grad, want_grad)
    x = base.clone()
    assert log_softmax_(x) is x and torch.equal(x, torch.log_softmax(base, dim=-1))


_SCORER = r"""
import sys, time
import torch
sys.path.insert(0, sys.argv[3])
from tiny import tiny_llama
import bench.logprobs as lp

scored = lp.dataset_logps

def slow(*args, **kwargs):  # long enough for the other process to arrive while this one computes
    with open(sys.argv[2], "a") as log:
        log.write("computed\n")
    time.sleep(1.5)
    return scored(*args, **kwargs)

lp.dataset_logps = slow
encoded = [([1 + i % 7, 2 + i % 5, 3, 4 + i % 3], 1) for i in range(6)]
out = lp.cached_dataset_logps(tiny_llama(vocab_size=64, seed=7), encoded, 0, 2, sys.argv[1], key="reference-a")
print(" ".join(f"{v:.6f}" for v in out.tolist()))
"""


def test_two_processes_on_one_reference_cache_score_it_once(tmp_path):
    """`bench sweep --jobs 2`: two runs needing the same reference log-probs; the second reads the first's file."""
    import subprocess
    import sys
    from pathlib import Path

    log, tests = tmp_path / "computed.txt", str(Path(__file__).parent)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _SCORER, str(tmp_path / "cache"), str(log), tests],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
    assert log.read_text().splitlines() == ["computed"]  # without the lock both compute
    assert outs[0][0] == outs[1][0] and outs[0][0].strip()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [f.name for f in (tmp_path / "cache").glob("*.pt")]


def test_picked_logps_entropy_gives_the_entropy_beside_the_same_log_probs_and_gradient():
    from bench.logprobs import picked_logps, picked_logps_entropy

    g = torch.Generator().manual_seed(4)
    logits = (3 * torch.randn(5, 6, 40, generator=g)).requires_grad_(True)
    labels = torch.randint(0, 40, (5, 6), generator=g)
    weights = torch.randn(5, 6, generator=g)
    logps, entropy = picked_logps_entropy(logits, labels)
    assert torch.equal(logps, picked_logps(logits, labels))
    p = torch.softmax(logits.detach().double(), -1)
    torch.testing.assert_close(entropy.double(), -(p * p.log()).sum(-1), atol=1e-5, rtol=0)
    assert not entropy.requires_grad  # a logged metric
    (got,) = torch.autograd.grad((logps * weights).sum(), logits)
    want = torch.log_softmax(logits, -1).gather(-1, labels[..., None]).squeeze(-1)
    (expected,) = torch.autograd.grad((want * weights).sum(), logits)
    torch.testing.assert_close(got, expected, atol=1e-7, rtol=0)


@pytest.mark.parametrize("shape", [(3, 7), (2, 65, 33), (130, 5), (64, 2)])
def test_row_dots_is_the_rowwise_dot_product_across_block_edges(shape):
    from bench.logprobs import ROW_DOT_ROWS, row_dots

    torch.manual_seed(0)
    a, b = torch.randn(shape), torch.randn(shape)
    got = row_dots(a, b)
    assert got.shape == shape[:-1] and ROW_DOT_ROWS == 64  # the shapes above straddle the 64-row blocks
    torch.testing.assert_close(got.double(), (a.double() * b.double()).sum(-1), atol=1e-5, rtol=0)
