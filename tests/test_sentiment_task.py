"""The embedded sentiment task, built at tiny scale: splits, prompts, preference pairs, gold reward, caching."""
from __future__ import annotations

import itertools
import json
import time
from collections import Counter
from pathlib import Path

import pytest

from bench.tasks import sentiment
from bench.tasks.sentiment import Config, Sentiment


@pytest.fixture(scope="module")
def task(cache_dir: Path) -> Sentiment:
    """The tiny build of the session's cache (conftest builds it once)."""
    task = Sentiment(Config(scale="tiny"), cache_dir)
    task.build()
    return task


@pytest.fixture(scope="module")
def tokenizer(task):
    return task.tokenizer()


def n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_splits_are_disjoint_deterministic_and_sized(task):
    splits = task.splits()
    assert set(splits) == set(sentiment.SPLITS)
    for a, b in itertools.combinations(splits, 2):
        assert not set(splits[a]) & set(splits[b]), (a, b)
    cfg = task.config
    assert len(splits["eval"]) == cfg.n_eval_prompts and len(splits["lm"]) == cfg.n_lm_reviews
    reviews = sentiment.load_reviews()
    # The same seed gives the same splits; another seed gives others.
    assert sentiment.split_reviews(len(reviews), cfg) == splits
    other = sentiment.split_reviews(len(reviews), sentiment.resolve(Config(scale="tiny", seed=1)))
    assert other["eval"] != splits["eval"]
    # Disjoint as texts too: the corpus has no duplicate left.
    assert len({text for text, _ in reviews}) == len(reviews)
    texts = {name: {reviews[i][0] for i in idx} for name, idx in splits.items()}
    assert not texts["lm"] & texts["eval"] and not texts["gold"] & texts["gold_test"]
    assert not any("<br />" in reviews[i][0] for idx in splits.values() for i in idx)


def test_eval_prompts_are_prefixes_of_their_reviews(task, tokenizer):
    reviews = sentiment.load_reviews()
    rows = task.eval_prompts()
    assert len(rows) == task.config.n_eval_prompts
    for row, i in zip(rows, task.splits()["eval"]):
        # A reference cut after 48 tokens may end inside a multi-byte character.
        assert reviews[i][0].startswith((row["prompt"] + row["reference"]).rstrip("\ufffd"))


def test_prompts_have_2_to_8_tokens_and_tokenize_alone_as_in_context(task, tokenizer):
    sft = task.sft_data()
    pairs = task.preference_data("train") + task.preference_data("test")
    prompts = [r["prompt"] for r in task.eval_prompts() + sft + pairs]
    lengths = Counter(n_tokens(tokenizer, p) for p in prompts)
    assert min(lengths) >= 2 and max(lengths) <= 8
    assert len(lengths) >= 4  # lengths are drawn, not fixed
    for row in sft:
        alone = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"] + \
            tokenizer(row["completion"], add_special_tokens=False)["input_ids"]
        assert alone == tokenizer(row["prompt"] + row["completion"], add_special_tokens=False)["input_ids"]
        assert n_tokens(tokenizer, row["completion"]) <= task.config.max_new_tokens


def test_prompts_end_between_words(task):
    rows = [r for r in task.eval_prompts() if r["reference"]]
    for row in rows:
        last, first = row["prompt"][-1], row["reference"][0]
        assert not (last.isalpha() and first.isalpha()) and not (last.isdigit() and first.isdigit()), row


def test_choose_prefix_draws_only_word_boundaries():
    import random

    word_ids = [0, 1, 1, 2, 3, 3, 3, 4, 5, 5]  # token -> word, as the pre-tokenizer splits them
    rng = random.Random(0)
    drawn = {sentiment.choose_prefix(word_ids, rng, 2, 8) for _ in range(200)}
    assert drawn == {3, 4, 7, 8}
    assert sentiment.choose_prefix([0, 0, 0, 0, 1], rng, 2, 3) is None
    assert sentiment.choose_prefix([0, 1, 2], rng, 2, 8) == 2  # one token must be left to continue


def test_preference_pairs_follow_the_gold_reward(task):
    for split in ("train", "test"):
        pairs = task.preference_data(split)
        assert pairs
        chosen = task.gold_reward([p["prompt"] for p in pairs], [p["chosen"] for p in pairs])
        rejected = task.gold_reward([p["prompt"] for p in pairs], [p["rejected"] for p in pairs])
        assert all(c > r for c, r in zip(chosen, rejected))
    with pytest.raises(ValueError):
        task.preference_data("validation")


def test_at_most_six_pairs_per_prefix_from_four_samples(task):
    groups = [json.loads(line) for line in (task.artifact_dir / "preference_samples.jsonl").read_text().splitlines()]
    cfg = task.config
    assert len(groups) == cfg.n_preference_prefixes + cfg.n_test_preference_prefixes
    expected = {"preference": [], "test_preference": []}
    for g in groups:
        assert len(g["completions"]) == 4
        assert g["rewards"] == pytest.approx(task.gold_reward([g["prompt"]] * 4, g["completions"]))
        pairs = sentiment.preference_pairs(g["prompt"], g["completions"], g["rewards"])
        assert len(pairs) <= 6
        distinct = len(set(r for c, r in zip(g["completions"], g["rewards"]) if c.strip()))
        assert len(pairs) >= distinct * (distinct - 1) // 2
        expected[g["split"]].extend(pairs)
    assert task.preference_data("train") == expected["preference"]
    assert task.preference_data("test") == expected["test_preference"]
    train_prompts = {p["prompt"] for p in task.preference_data("train")}
    test_prompts = {p["prompt"] for p in task.preference_data("test")}
    assert len(train_prompts) > 1 and len(test_prompts) > 1


def test_preference_pairs_drop_ties_and_empty_completions():
    pairs = sentiment.preference_pairs("p", ["a", "b", " ", "c"], [0.2, 0.9, 0.95, 0.2])
    assert {(p["chosen"], p["rejected"]) for p in pairs} == {("b", "a"), ("b", "c")}


def test_gold_reward_is_a_probability_that_knows_praise_from_scorn(task):
    scores = task.gold_reward(["This movie was", "This movie was"],
                              [" wonderful, a brilliant and moving film with excellent acting. I loved it.",
                               " awful, a boring waste of time with terrible acting. I hated it."])
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert scores[0] > 0.5 > scores[1]
    assert task.gold_reward([], []) == []
    with pytest.raises(ValueError):
        task.gold_reward(["a"], [])


def test_build_log_reports_stages_and_quality(task):
    log = task.build_log()
    assert set(log["stage_seconds"]) == {"data", "tokenizer", "prompts", "gold reward", "policy", "preferences"}
    assert 0.5 < log["gold_reward"]["accuracy_full_review"] <= 1
    assert 1 < log["policy"]["valid_perplexity"] < task.config.vocab_size
    assert log["policy"]["train_tokens"] > 0
    assert log["config"] == json.loads(json.dumps(sentiment.dataclasses.asdict(task.config)))


def test_second_build_is_a_cache_hit(task, monkeypatch):
    stamp = (task.artifact_dir / "policy").stat().st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("the cached build was rebuilt")

    monkeypatch.setattr(sentiment, "train_policy", fail)
    monkeypatch.setattr(sentiment, "_build", fail)
    again = Sentiment(Config(scale="tiny"), task.artifact_dir.parent.parent)
    t0 = time.perf_counter()
    again.build()
    assert time.perf_counter() - t0 < 1.0
    assert again.artifact_dir == task.artifact_dir and again.reference_key == task.reference_key
    assert (task.artifact_dir / "policy").stat().st_mtime_ns == stamp


def test_artifact_dir_follows_the_resolved_config(task, tmp_path):
    cache = task.artifact_dir.parent.parent
    # Spelling out a preset value is the same build; changing anything is another.
    assert Sentiment(Config(scale="tiny", n_eval_prompts=task.config.n_eval_prompts), cache).artifact_dir == task.artifact_dir
    keys = {Sentiment(Config(scale="tiny", **change), cache).reference_key
            for change in ({}, {"seed": 1}, {"n_eval_prompts": 17}, {"lm_lr": 1e-3})}
    assert len(keys) == 4
    assert Sentiment(Config(), cache).config.n_preference_prefixes == 2000
    assert Sentiment(Config(), tmp_path).reference_key != task.reference_key


def test_bad_settings_are_user_errors(tmp_path):
    from bench.errors import UserError

    for bad in (Config(scale="huge"), Config(scale="tiny", n_embd=30, n_head=4), Config(scale="tiny", samples_per_prefix=1)):
        with pytest.raises(UserError):
            Sentiment(bad, tmp_path)
    with pytest.raises(UserError, match="reviews"):
        sentiment.split_reviews(100, sentiment.resolve(Config(scale="tiny")))


def test_interrupted_build_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sentiment, "train_tokenizer", interrupt)
    task = Sentiment(Config(scale="tiny", seed=7), tmp_path)
    with pytest.raises(KeyboardInterrupt):
        task.build()
    assert not task.artifact_dir.exists()
    assert list((tmp_path / "sentiment").iterdir()) == []


def test_load_policy_gives_independent_copies_in_eval_mode(task):
    import torch

    (a, tokenizer), (b, _) = task.load_policy(), task.load_policy()
    assert not a.training and not b.training
    assert tokenizer.eos_token_id == tokenizer.pad_token_id == a.config.eos_token_id
    assert len(tokenizer) == a.config.vocab_size
    with torch.no_grad():
        a.transformer.wte.weight.add_(1.0)
    assert not torch.equal(a.transformer.wte.weight, b.transformer.wte.weight)
    ids = tokenizer("This movie", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        c, _ = task.load_policy()
        assert torch.equal(b(ids).logits, c(ids).logits)
