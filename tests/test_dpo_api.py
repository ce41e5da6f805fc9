"""DPO's single-step Python API, and the harness path every offline algorithm shares (fit -> ModelPolicy)."""

from __future__ import annotations

import math
import types

import pytest
import torch
from tiny import tiny_gpt2, tiny_tokenizer

from bench.algorithms.dpo import DPO, dpo_loss
from bench.algorithms.sft import SFT
from bench.algorithms.unlikelihood import Unlikelihood
from bench.contracts import Context, Generation
from bench.logprobs import dataset_logps, encode
from bench.policy import ModelPolicy
from bench.preference import fit_on_pairs
from bench.train import TrainConfig

PAD = 0
KEYS = {
    "loss",
    "chosen_reward",
    "rejected_reward",
    "reward_margin",
    "reward_accuracy",
    "chosen_logps",
    "rejected_logps",
    "grad_norm",
}
# Two pairs of different lengths: prompt, chosen, rejected token ids (no id is PAD).
PAIRS = [([5, 9, 3], [7, 11, 2, 8], [12, 4]), ([6, 10], [13, 1], [3, 14, 15, 9, 2])]


def _plain_logp(model, prompt: list[int], completion: list[int]) -> float:
    """log pi(completion | prompt) of one unpadded sequence, computed the textbook way."""
    ids = prompt + completion
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
    return sum(logp[t - 1, ids[t]].item() for t in range(len(prompt), len(ids)))


def _padded(rows: list[list[int]], left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), PAD)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        cols = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, cols], mask[i, cols] = torch.tensor(r), 1
    return ids, mask


def _batch():
    prompts, chosen, rejected = zip(*PAIRS)
    return _padded(list(prompts), left=True), _padded(list(chosen), left=False), _padded(list(rejected), left=False)


def _expected_loss(policy, reference, beta: float) -> float:
    terms = dpo_loss(
        *[
            torch.tensor([_plain_logp(m, p, y) for p, c, r in PAIRS for y in [(c, r)[side]]])
            for m, side in ((policy, 0), (policy, 1), (reference, 0), (reference, 1))
        ],
        beta=beta,
    )[0]
    return terms.mean().item()


@pytest.mark.parametrize("padding", ["masks", "pad_token_id"])
def test_train_step_loss_is_dpo_loss_of_separately_computed_logps(padding):
    policy, reference = tiny_gpt2(seed=0), tiny_gpt2(seed=1)  # different weights, so the log-ratios are not all 0
    expected = _expected_loss(policy, reference, beta=0.5)
    (p, pm), (c, cm), (r, rm) = _batch()
    dpo = DPO(policy, reference, beta=0.5, learning_rate=1e-3)
    if padding == "masks":
        stats = dpo.train_step(prompt=p, chosen=c, rejected=r, prompt_mask=pm, chosen_mask=cm, rejected_mask=rm)
    else:
        stats = dpo.train_step(prompt=p, chosen=c, rejected=r, pad_token_id=PAD)
    assert set(stats) == KEYS and all(isinstance(v, float) for v in stats.values())
    assert stats["loss"] == pytest.approx(expected, rel=1e-5)
    assert stats["reward_margin"] == pytest.approx(stats["chosen_reward"] - stats["rejected_reward"], abs=1e-6)


def test_train_step_lowers_the_loss_and_leaves_the_reference_alone():
    policy, reference = tiny_gpt2(seed=0), tiny_gpt2(seed=1)
    before = {k: v.clone() for k, v in reference.state_dict().items()}
    start = {k: v.clone() for k, v in policy.state_dict().items()}
    (p, pm), (c, cm), (r, rm) = _batch()
    dpo = DPO(policy, reference, beta=0.5, learning_rate=1e-3)
    losses = [dpo.train_step(p, c, r, prompt_mask=pm, chosen_mask=cm, rejected_mask=rm)["loss"] for _ in range(6)]
    assert losses[-1] < losses[0] - 0.05
    assert all(b < a for a, b in zip(losses, losses[1:]))
    assert all(torch.equal(v, before[k]) for k, v in reference.state_dict().items())
    assert any(not torch.equal(v, start[k]) for k, v in policy.state_dict().items())


def test_single_pair_as_1d_tensors_and_default_reference():
    policy = tiny_gpt2(seed=0)
    prompt, chosen, rejected = (torch.tensor(x) for x in PAIRS[0])
    dpo = DPO(policy, beta=0.1)  # reference: a frozen copy of the policy as it is now
    first = dpo.train_step(prompt=prompt, chosen=chosen, rejected=rejected)
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)  # policy == reference: every log-ratio is 0
    assert first["chosen_reward"] == pytest.approx(0.0, abs=1e-6)
    second = dpo.train_step(prompt=prompt, chosen=chosen, rejected=rejected)
    assert second["loss"] < first["loss"] and second["reward_accuracy"] == 1.0
    assert not any(p.requires_grad for p in dpo.ref_model.parameters())


def test_train_step_rejects_mismatched_batches():
    dpo = DPO(tiny_gpt2(), beta=0.1)
    with pytest.raises(ValueError, match="rows"):
        dpo.train_step(torch.tensor([[1, 2], [3, 4]]), torch.tensor([[5, 6]]), torch.tensor([[7, 8]]))


# ---- the harness path: fit(ctx) ------------------------------------------------------------------

PREFERENCES = [
    {"prompt": "the movie was", "chosen": " great and wonderful", "rejected": " terrible and boring"},
    {"prompt": "the film", "chosen": " was lovely", "rejected": " made no sense"},
    {"prompt": "one of the", "chosen": " best films", "rejected": " worst jokes at all"},
    {"prompt": "i loved", "chosen": " every minute", "rejected": " nothing"},
]


def _ctx(tmp_path, steps: int = 3, lr: float = 1e-3, **train) -> tuple[Context, list[dict]]:
    tok = tiny_tokenizer()
    log: list[dict] = []
    ctx = Context(
        task=types.SimpleNamespace(reference_key="tiny-gpt2-seed1"),
        policy=tiny_gpt2(vocab_size=len(tok), seed=0),
        tokenizer=tok,
        reference=tiny_gpt2(vocab_size=len(tok), seed=1).requires_grad_(False),
        train=TrainConfig(
            **{
                "lr": lr,
                "batch_size": 2,
                "max_steps": steps,
                "warmup_steps": 0,
                "log_every": 1,
                "max_length": 16,
                **train,
            }
        ),
        seed=0,
        log=log.append,
        checkpoint_dir=tmp_path / "checkpoints",
        cache_dir=tmp_path / "cache",
        sft_examples=[{"prompt": p["prompt"], "completion": p["chosen"]} for p in PREFERENCES],
        preferences=PREFERENCES,
        test_preferences=[],
    )
    return ctx, log


def test_fit_on_pairs_looks_up_cached_reference_logps_by_pair(tmp_path, monkeypatch):
    from bench import preference

    ctx, _ = _ctx(tmp_path, steps=4)
    indices, seen = [], []
    forward = preference.concatenated_forward
    # The loss never sees the batch: record which pairs each forward scored.
    monkeypatch.setattr(
        preference,
        "concatenated_forward",
        lambda model, batch: (indices.append(batch["index"].tolist()), forward(model, batch))[1],
    )

    def loss_fn(out, ref_chosen, ref_rejected):
        seen.append((ref_chosen, ref_rejected))
        return -out["chosen_logps"].mean(), {}

    fit_on_pairs(ctx, loss_fn, desc="test")
    encoded = {
        side: [encode(ctx.tokenizer, p["prompt"], p[side], 16) for p in PREFERENCES] for side in ("chosen", "rejected")
    }
    ref = {side: dataset_logps(ctx.reference, enc, ctx.tokenizer.pad_token_id, 8) for side, enc in encoded.items()}
    assert len(indices) == 4 and sorted(sum(indices[:2], [])) == [0, 1, 2, 3]  # two steps of 2 make one epoch
    for index, (ref_chosen, ref_rejected) in zip(indices, seen):
        assert torch.allclose(ref_chosen, ref["chosen"][index], atol=1e-5)
        assert torch.allclose(ref_rejected, ref["rejected"][index], atol=1e-5)
    assert len(list((tmp_path / "cache" / "ref_logps").iterdir())) == 2  # chosen and rejected, stored once


def test_dpo_fit_logs_trl_metric_names_and_returns_a_model_policy(tmp_path):
    ctx, log = _ctx(tmp_path, steps=3)
    policy = DPO(config=DPO.Config(beta=0.5)).fit(ctx)
    assert isinstance(policy, ModelPolicy) and policy.model is ctx.policy and policy.tokenizer is ctx.tokenizer
    assert [row["step"] for row in log] == [1, 2, 3]
    assert {
        "loss",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/accuracies",
        "rewards/margins",
        "logps/chosen",
        "logps/rejected",
    } <= set(log[0])
    for row in log:
        assert row["rewards/margins"] == pytest.approx(row["rewards/chosen"] - row["rewards/rejected"], abs=1e-6)
    assert log[0]["loss"] != pytest.approx(math.log(2))  # policy and reference differ from the start


def test_reference_free_dpo_and_unlikelihood_never_touch_the_reference(tmp_path):
    for algorithm in (DPO(config=DPO.Config(reference_free=True)), Unlikelihood()):
        ctx, log = _ctx(tmp_path, steps=2)
        ctx.reference = None  # any use of it would fail
        algorithm.fit(ctx)
        assert log and not (tmp_path / "cache" / "ref_logps").exists()


def test_sft_fit_lowers_the_demonstration_loss(tmp_path):
    ctx, log = _ctx(tmp_path, steps=8, lr=3e-3)
    SFT().fit(ctx)
    assert log[-1]["loss"] < log[0]["loss"]


def test_model_policy_samples_every_prompt_repeatedly_and_saves(tmp_path):
    tok = tiny_tokenizer()
    policy = ModelPolicy(tiny_gpt2(vocab_size=len(tok), seed=0), tok)
    prompts = ["the movie was", "a boring script"]
    samples = policy.sample(prompts, Generation(max_new_tokens=6, samples_per_prompt=3, temperature=1.0), seed=0)
    assert [s.prompt_index for s in samples] == [0, 0, 0, 1, 1, 1]
    assert all(s.prompt == prompts[s.prompt_index] for s in samples)
    assert all(s.prompt_ids == tok(s.prompt, add_special_tokens=False)["input_ids"] for s in samples)
    assert all(0 < len(s.completion_ids) <= 6 for s in samples)
    assert all(s.completion == tok.decode(s.completion_ids, skip_special_tokens=True) for s in samples)
    again = policy.sample(prompts, Generation(max_new_tokens=6, samples_per_prompt=3, temperature=1.0), seed=0)
    assert [s.completion_ids for s in again] == [s.completion_ids for s in samples]

    policy.save(tmp_path / "model")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    assert AutoTokenizer.from_pretrained(tmp_path / "model")("the movie")["input_ids"] == tok("the movie")["input_ids"]
    ids = torch.tensor([samples[0].prompt_ids])
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, policy.model(ids).logits, atol=1e-6)


# ---- whole responses end with eos ------------------------------------------------------------------


def _encoded_in_training(tmp_path, monkeypatch, algorithm, eos_after_completion: bool, **train) -> list:
    """The examples each algorithm hands the training loop, on a task with or without eos_after_completion."""
    from bench import preference

    seen = []
    real = preference.train_loop
    monkeypatch.setattr(preference, "train_loop", lambda model, examples, *a, **kw: seen.extend(examples) or model)
    ctx, _ = _ctx(tmp_path, steps=1, **train)
    ctx.task = types.SimpleNamespace(reference_key="tiny-gpt2-seed1", eos_after_completion=eos_after_completion)
    algorithm.fit(ctx)
    monkeypatch.setattr(preference, "train_loop", real)
    return [(ids, n) for e in seen for ids, n in ([e["chosen"], e["rejected"]] if isinstance(e, dict) else [e])]


@pytest.mark.parametrize("algorithm", [SFT(), DPO()], ids=["sft", "dpo"])
def test_whole_responses_are_trained_with_eos_and_windows_without(tmp_path, monkeypatch, algorithm):
    eos = tiny_tokenizer().eos_token_id
    whole = _encoded_in_training(tmp_path, monkeypatch, algorithm, True, max_length=64)
    windows = _encoded_in_training(tmp_path, monkeypatch, algorithm, False, max_length=64)
    assert whole and all(ids[-1] == eos for ids, _ in whole)
    assert [ids[:-1] for ids, _ in whole] == [ids for ids, _ in windows]
    assert not any(eos in ids for ids, _ in windows)
    # A completion cut at train.max_length is not whole any more: no eos where it was cut.
    cut = _encoded_in_training(tmp_path, monkeypatch, algorithm, True, max_length=4)
    assert all(len(ids) == 4 and ids[-1] != eos for ids, n in cut if n < 3)


def test_sft_on_whole_responses_teaches_the_policy_to_stop(tmp_path):
    """Trained without eos, the policy never stops and every sample runs to max_new_tokens (what SmolLM2-135M did on
    tldr); trained with it, greedy samples end right after the demonstrated response."""
    lengths = {}
    for eos_after_completion in (False, True):
        ctx, _ = _ctx(tmp_path / str(eos_after_completion), steps=40, lr=1e-2)
        ctx.task = types.SimpleNamespace(reference_key="tiny", eos_after_completion=eos_after_completion)
        ctx.sft_examples = [{"prompt": "the movie was", "completion": " great"}]
        policy = SFT().fit(ctx)
        (sample,) = policy.sample(
            ["the movie was"], Generation(max_new_tokens=8, samples_per_prompt=1, temperature=0), 0
        )
        lengths[eos_after_completion] = len(sample.completion_ids)
        if eos_after_completion:
            assert sample.completion == " great" and sample.completion_ids[-1] == ctx.tokenizer.eos_token_id
    assert lengths[False] == 8 and lengths[True] < 8


def test_paper_tasks_declare_whole_responses_and_the_review_tasks_do_not():
    from bench.registry import load

    assert all(load("task", t).eos_after_completion for t in ("tldr", "hh", "truthy"))
    assert not any(getattr(load("task", t), "eos_after_completion", False) for t in ("sentiment", "imdb"))
