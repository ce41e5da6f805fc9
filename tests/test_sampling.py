"""bench.sampling.sample: greedy parity with transformers' generate, seeds, eos, top-p, and the sampled distribution."""

from __future__ import annotations

import random

import pytest
import torch
from scipy.stats import chisquare
from tiny import tiny_gpt2, tiny_llama

from bench.sampling import sample

VOCAB = 64
EOS = VOCAB - 1
PAD = 0
MODELS = {"gpt2": tiny_gpt2, "llama": tiny_llama}


def _prompts(n: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(1, EOS) for _ in range(rng.randint(1, 9))] for _ in range(n)]


def _until_eos(tokens: list[int], eos: int) -> list[int]:
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens


@pytest.mark.parametrize("arch", MODELS)
def test_greedy_equals_generate_on_unpadded_prompts(arch):
    """Left padding, positions and the cache are right if every padded row decodes as its prompt alone does."""
    model = MODELS[arch](vocab_size=VOCAB, seed=1)
    prompts = _prompts(10)
    ours = sample(
        model, prompts, max_new_tokens=12, temperature=0, eos_token_id=EOS, pad_token_id=PAD, seed=0, batch_size=4
    )
    for prompt, completion in zip(prompts, ours):
        reference = model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            do_sample=False,
            max_new_tokens=12,
            eos_token_id=EOS,
            pad_token_id=PAD,
        )
        assert completion == reference[0, len(prompt) :].tolist()


def test_greedy_ignores_batch_size():
    model = tiny_llama(vocab_size=VOCAB, seed=2)
    prompts = _prompts(9, seed=3)
    kwargs = dict(max_new_tokens=10, temperature=0, eos_token_id=EOS, pad_token_id=PAD, seed=0)
    assert sample(model, prompts, batch_size=1, **kwargs) == sample(model, prompts, batch_size=9, **kwargs)


def test_eos_stops_only_its_row():
    model = tiny_gpt2(vocab_size=VOCAB, seed=3)
    prompts = _prompts(8, seed=4)
    kwargs = dict(max_new_tokens=10, temperature=0, pad_token_id=PAD, seed=0, batch_size=8)
    free = sample(model, prompts, eos_token_id=None, **kwargs)
    assert all(len(c) == 10 for c in free)
    eos = free[0][2]  # a token greedy decoding emits early in at least one row
    stopped = sample(model, prompts, eos_token_id=eos, **kwargs)
    assert stopped[0] == free[0][: free[0].index(eos) + 1]
    # Rows that keep going after others left the batch continue exactly as without eos.
    assert stopped == [_until_eos(c, eos) for c in free]
    assert any(len(c) == 10 for c in stopped)


def test_same_seed_same_samples_and_other_seed_differs():
    model = tiny_gpt2(vocab_size=VOCAB, seed=4)
    prompts = _prompts(12, seed=5)
    kwargs = dict(max_new_tokens=8, temperature=1.0, eos_token_id=EOS, pad_token_id=PAD, batch_size=5)
    first = sample(model, prompts, seed=7, **kwargs)
    assert sample(model, prompts, seed=7, **kwargs) == first
    assert sample(model, prompts, seed=8, **kwargs) != first


def test_tiny_top_p_is_greedy():
    model = tiny_llama(vocab_size=VOCAB, seed=5)
    prompts = _prompts(6, seed=6)
    kwargs = dict(max_new_tokens=8, eos_token_id=EOS, pad_token_id=PAD, batch_size=3)
    greedy = sample(model, prompts, temperature=0, seed=0, **kwargs)
    assert sample(model, prompts, temperature=1.0, top_p=1e-6, seed=11, **kwargs) == greedy


def test_restores_training_mode():
    model = tiny_gpt2(vocab_size=VOCAB, seed=6)
    model.train()
    sample(model, [[1, 2]], max_new_tokens=2, eos_token_id=None, pad_token_id=PAD, seed=0)
    assert model.training


def _first_token_probs(model, prompt, temperature):
    with torch.no_grad():
        logits = model(torch.tensor([prompt])).logits[0, -1]
    return torch.softmax(logits.double() / temperature, -1)


@pytest.mark.parametrize("temperature", [0.7, 1.5])
def test_one_step_frequencies_match_softmax(temperature):
    vocab, n = 16, 20_000
    model = tiny_gpt2(vocab_size=vocab, seed=7, init_std=0.1)
    prompt = [3, 5, 2]
    probs = _first_token_probs(model, prompt, temperature)
    tokens = sample(
        model,
        [prompt] * n,
        max_new_tokens=1,
        temperature=temperature,
        eos_token_id=None,
        pad_token_id=PAD,
        seed=1,
        batch_size=5000,
    )
    counts = torch.bincount(torch.tensor([t[0] for t in tokens]), minlength=vocab).double()
    assert (n * probs).min() > 5  # chi-square needs enough expected counts per cell
    assert chisquare(counts.numpy(), (n * probs).numpy()).pvalue > 1e-3


def test_one_step_top_p_frequencies_match_nucleus():
    vocab, n, top_p = 16, 20_000, 0.6
    model = tiny_gpt2(vocab_size=vocab, seed=8, init_std=0.1)
    prompt = [4, 1]
    probs = _first_token_probs(model, prompt, 1.0)
    ranked = probs.argsort(descending=True)
    size = int((probs[ranked].cumsum(0) < top_p).sum()) + 1  # smallest top set with mass >= top_p
    nucleus = ranked[:size]
    assert 1 < size < vocab
    tokens = sample(
        model, [prompt] * n, max_new_tokens=1, top_p=top_p, eos_token_id=None, pad_token_id=PAD, seed=2, batch_size=5000
    )
    counts = torch.bincount(torch.tensor([t[0] for t in tokens]), minlength=vocab).double()
    outside = torch.ones(vocab, dtype=torch.bool)
    outside[nucleus] = False
    assert counts[outside].sum() == 0
    expected = n * probs[nucleus] / probs[nucleus].sum()
    assert chisquare(counts[nucleus].numpy(), expected.numpy()).pvalue > 1e-3


def test_rejects_empty_prompt():
    with pytest.raises(ValueError):
        sample(tiny_gpt2(vocab_size=VOCAB), [[1], []], max_new_tokens=2, eos_token_id=None, pad_token_id=PAD, seed=0)


def _with_and_without(monkeypatch, name: str, model, prompts, args) -> tuple[list, list]:
    """Samples with bench.sampling's `name` in use (checked: it applied to every batch), then with it off."""
    from bench import sampling

    made = []
    real = getattr(sampling, name)
    monkeypatch.setattr(sampling, name, lambda *a: made.append(real(*a)) or made[-1])
    ours = sample(model, prompts, **args)
    assert made and all(x is not None for x in made)
    monkeypatch.setattr(sampling, name, lambda *a: None)
    return ours, sample(model, prompts, **args)


@pytest.mark.parametrize("arch", MODELS)
def test_the_preallocated_cache_samples_what_transformers_cache_does(arch, monkeypatch):
    """The same draws, bit for bit, from padded prompts of several lengths whose rows stop at eos at different steps."""
    model = MODELS[arch](vocab_size=VOCAB, seed=3)
    prompts = _prompts(24, seed=5)
    args = dict(max_new_tokens=20, temperature=1.3, eos_token_id=5, pad_token_id=PAD, seed=7, batch_size=8)
    ours, theirs = _with_and_without(monkeypatch, "preallocated_cache", model, prompts, args)  # vs DynamicCache
    assert ours == theirs
    lengths = {len(c) for c in ours}
    assert len(lengths) > 2 and max(lengths) == 20  # rows stopped at eos at several steps, others ran to the end


def test_models_with_a_sliding_window_keep_their_own_cache():
    from bench.sampling import preallocated_cache

    model = tiny_llama(vocab_size=VOCAB, seed=3)
    assert preallocated_cache(model, 16) is not None
    model.config.sliding_window = 8
    assert preallocated_cache(model, 16) is None
    model.config.sliding_window, model.config.model_type = None, "gemma3"
    assert preallocated_cache(model, 16) is None


@pytest.mark.parametrize("activation", ["gelu_new", "gelu_pytorch_tanh"])
@pytest.mark.parametrize("same_length", [False, True])
def test_the_gpt2_decode_step_samples_what_the_model_forward_does(activation, same_length, monkeypatch):
    """Bit for bit, with padded rows (a boolean mask) and without (no mask), rows leaving at eos, both activations."""
    from bench import sampling

    model = tiny_gpt2(vocab_size=VOCAB, seed=4)
    model.config.activation_function = activation
    for block in model.transformer.h:
        from transformers.activations import ACT2FN

        block.mlp.act = ACT2FN[activation]
    prompts = [p[:1] * 4 for p in _prompts(16, seed=6)] if same_length else _prompts(16, seed=6)
    args = dict(max_new_tokens=24, temperature=1.2, eos_token_id=5, pad_token_id=PAD, seed=3, batch_size=8)
    real = sampling.gpt2_decode_step
    ours, theirs = _with_and_without(monkeypatch, "gpt2_decode_step", model, prompts, args)
    assert ours == theirs
    assert len({len(c) for c in ours}) > 1  # some rows stopped at eos

    # The logits themselves, step by step, against the model's forward on the same cache contents.
    prompt = torch.tensor([[3, 4, 6], [PAD, 7, 8]])
    mask = torch.tensor([[1, 1, 1], [0, 1, 1]])
    position = (mask.cumsum(-1) - 1).clamp(min=0)
    caches = [sampling.preallocated_cache(model, 8) for _ in range(2)]
    with torch.inference_mode():
        for cache in caches:
            model(input_ids=prompt, attention_mask=mask, position_ids=position, use_cache=True, cache=cache)
        step = real(model, caches[0])
        tokens, position = torch.tensor([9, 10]), position[:, -1:] + 1
        for _ in range(4):
            mask = torch.cat([mask, mask.new_ones((2, 1))], dim=1)
            fast = step(tokens, mask, position)
            out = model(input_ids=tokens[:, None], attention_mask=mask, position_ids=position, cache=caches[1])
            assert torch.equal(fast, out.logits[:, -1])
            tokens, position = fast.argmax(-1), position + 1


def test_the_gpt2_decode_step_leaves_other_models_to_their_forward():
    from peft import LoraConfig, get_peft_model

    from bench.sampling import gpt2_decode_step, preallocated_cache

    def filled(model, own_cache=False):  # a cache after the prompt's forward, as sample() has it
        cache = None if own_cache else preallocated_cache(model, 8)
        with torch.inference_mode():
            return model(input_ids=torch.tensor([[3, 4]]), use_cache=True, cache=cache).past_key_values

    model = tiny_gpt2(vocab_size=VOCAB, seed=4)
    assert gpt2_decode_step(model, filled(model)) is not None
    assert gpt2_decode_step(model, filled(model, own_cache=True)) is None  # transformers' DynamicCache
    llama = tiny_llama(vocab_size=VOCAB, seed=4)
    assert gpt2_decode_step(llama, filled(llama)) is None
    adapted = get_peft_model(tiny_gpt2(vocab_size=VOCAB, seed=4), LoraConfig(r=2, target_modules=["c_attn"]))
    assert gpt2_decode_step(adapted, filled(adapted)) is None
    model.config._attn_implementation = "eager"
    assert gpt2_decode_step(model, filled(model)) is None
    model.config._attn_implementation = "sdpa"
    model.train()
    assert gpt2_decode_step(model, filled(model)) is None
