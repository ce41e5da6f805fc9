"""The learned reward model: its loss against TRL's, padding-invariant scoring, learning, caching, bad checkpoints."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest
import torch
from tiny import tiny_gpt2, tiny_tokenizer

from bench import reward as rm
from bench.errors import UserError
from bench.runner import RunSpec, execute

TINY = ["task.scale=tiny"]


def test_bradley_terry_loss_equals_trl_reward_trainer_loss(tmp_path):
    """TRL 1.16's RewardTrainer.compute_loss (its own code, on a real trainer) on the same scores."""
    from datasets import Dataset
    from transformers import GPT2Config, GPT2ForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    tok = tiny_tokenizer()
    model = GPT2ForSequenceClassification(
        GPT2Config(
            vocab_size=len(tok),
            n_embd=16,
            n_layer=1,
            n_head=2,
            num_labels=1,
            pad_token_id=tok.pad_token_id,
            bos_token_id=0,
            eos_token_id=0,
        )
    )
    pairs = Dataset.from_list([{"prompt": "the movie", "chosen": " was great", "rejected": " was bad"}] * 2)
    args = RewardConfig(output_dir=str(tmp_path), report_to=[], bf16=False, use_cpu=True, save_strategy="no")
    trainer = RewardTrainer(model=model, args=args, train_dataset=pairs, processing_class=tok)

    g = torch.Generator().manual_seed(0)
    chosen, rejected = 3 * torch.randn(16, generator=g), 3 * torch.randn(16, generator=g)

    class Scores(torch.nn.Module):  # TRL stacks chosen rows, then rejected rows, as bench.logprobs.collate_pairs does
        def forward(self, **inputs):
            return types.SimpleNamespace(logits=torch.cat([chosen, rejected])[:, None])

    inputs = {"input_ids": torch.zeros(32, 4, dtype=torch.long), "attention_mask": torch.ones(32, 4, dtype=torch.long)}
    expected = trainer.compute_loss(Scores(), inputs)
    torch.testing.assert_close(rm.bradley_terry_loss(chosen, rejected), expected, rtol=1e-6, atol=1e-7)


def _pairs(n: int) -> list[dict]:
    good, bad = ["great", "wonderful", "lovely", "brilliant"], ["terrible", "boring", "bad", "flat"]
    return [
        {
            "prompt": "the movie was",
            "chosen": f" {good[i % 4]} and {good[(i + 1) % 4]}",
            "rejected": f" {bad[i % 4]} and {bad[(i + 1) % 4]}",
        }
        for i in range(n)
    ]


def test_scores_do_not_depend_on_padding_or_batching():
    tok = tiny_tokenizer()
    model = rm.from_policy(tiny_gpt2(vocab_size=len(tok), eos_token_id=tok.eos_token_id), tok, seed=0).eval()
    prompts = ["the movie", "a boring script with", "i"]
    completions = [" was great", " flat characters and bad jokes all along", " loved it"]
    batched = rm.score(model, tok, prompts, completions, max_length=64, batch_size=3)
    alone = [rm.score(model, tok, [p], [c], max_length=64)[0] for p, c in zip(prompts, completions)]
    torch.testing.assert_close(torch.tensor(batched), torch.tensor(alone), rtol=1e-5, atol=1e-5)
    assert len(set(batched)) == 3  # the head reads each row's own last token


def test_training_fits_the_pairs_through_the_shared_loop():
    from bench.train import TrainConfig

    tok = tiny_tokenizer()
    policy = tiny_gpt2(vocab_size=len(tok), eos_token_id=tok.eos_token_id)
    pairs = _pairs(24)
    untrained = rm.pair_accuracy(rm.from_policy(policy, tok, seed=0), tok, pairs, max_length=32)["mean"]
    cfg = TrainConfig(lr=1e-3, batch_size=8, max_steps=30, warmup_steps=0, max_length=32, log_every=10)
    rows = []
    model = rm.train(policy, tok, pairs, cfg, seed=0, log=rows.append)
    assert [r["step"] for r in rows] == [10, 20, 30] and rows[-1]["loss"] < rows[0]["loss"] / 10
    assert {"accuracy", "margin", "mean_reward", "loss"} <= set(rows[0])
    assert untrained < 0.9 and rm.pair_accuracy(model, tok, pairs, max_length=32)["mean"] == 1.0


def test_reward_model_run_reports_accuracy_and_later_runs_reuse_the_cached_model(cache_dir, tmp_path, monkeypatch):
    run = execute(
        RunSpec(algo="reward-model", task="sentiment", sets=TINY),
        results=tmp_path,
        cache_dir=cache_dir,
        echo=lambda _: None,
    )
    metrics = json.loads((run / "metrics.json").read_text())
    accuracy = metrics["reward_model_accuracy"]
    assert 0 <= accuracy["mean"] <= 1 and accuracy["n"] > 0
    saved = accuracy["path"]
    assert Path(saved).parent.resolve() == (cache_dir / "reward_models").resolve()
    assert "loss" in json.loads((run / "train_log.jsonl").read_text().splitlines()[-1])

    # best-of-n with the same seed finds the model by its hash and trains nothing.
    def no_training(*args, **kwargs):
        raise AssertionError("the reward model was trained again")

    monkeypatch.setattr(rm, "train", no_training)
    run = execute(
        RunSpec(algo="best-of-n", task="sentiment", sets=TINY + ["best-of-n.n=2", "eval.max_prompts=4"]),
        results=tmp_path,
        cache_dir=cache_dir,
        echo=lambda _: None,
    )
    again = json.loads((run / "metrics.json").read_text())["reward_model_accuracy"]
    assert again["path"] == saved and again["mean"] == accuracy["mean"]

    from transformers import AutoModelForSequenceClassification  # plain Hugging Face format

    assert AutoModelForSequenceClassification.from_pretrained(saved).config.num_labels == 1


def test_a_checkpoint_for_another_tokenizer_is_a_user_error_and_leaves_nothing(cache_dir, tmp_path):
    tok = tiny_tokenizer()
    foreign = rm.from_policy(tiny_gpt2(vocab_size=len(tok), eos_token_id=tok.eos_token_id), tok, seed=0)
    foreign.save_pretrained(tmp_path / "foreign")
    with pytest.raises(UserError, match="does not match this task's tokenizer: its vocabulary has 320 ids"):
        rm.load(tmp_path / "foreign", tok, vocab_size=512)
    results = tmp_path / "results"
    for algo in ("ppo", "best-of-n"):
        with pytest.raises(UserError, match="does not match this task's tokenizer"):
            execute(
                RunSpec(algo=algo, task="sentiment", sets=TINY + [f"{algo}.reward_model={tmp_path / 'foreign'}"]),
                results=results,
                cache_dir=cache_dir,
                echo=lambda _: None,
            )
    assert not results.exists() or not any(results.iterdir())
