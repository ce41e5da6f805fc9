"""The tldr and cnn-dm tasks on local fixtures in the hub's schemas (tests/fixtures_tldr.py, fixtures_cnn_dm.py).

Through the task contract: rows, splits, the prompt/completion boundary, long prompts, malformed
rows, limits, caching. Through the real CLI: SFT and DPO runs judged by a scripted local
OpenAI-compatible server, the TL;DR -> CNN/DailyMail transfer (--eval-task cnn-dm), and the one-line
errors for an unreachable hub and for training on the evaluation-only task.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import fixtures_cnn_dm
import fixtures_tldr
import hub_fixtures
import pytest
from conftest import run_cli
from openai_stub import StubServer, answer, shown

from bench import hub
from bench.config import apply_overrides
from bench.errors import UserError
from bench.evaluators.judge import load_template
from bench.logprobs import encode
from bench.runner import RunSpec, resolve
from bench.tasks.cnn_dm import CNNDM, EVAL_ONLY
from bench.tasks.common import model_key
from bench.tasks.tldr import TLDR, judge_query

POSTS = fixtures_tldr.POSTS
UNREACHABLE = "http://127.0.0.1:9"  # nothing listens: bench.hub's probe is refused at once
API_KEY = "sk-test-tldr"


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> dict[str, dict[str, str]]:
    root = tmp_path_factory.mktemp("tldr-fixtures")
    return {
        "tldr": {k: str(v) for k, v in fixtures_tldr.make(root / "tldr").items()},
        "cnn-dm": {k: str(v) for k, v in fixtures_cnn_dm.make(root / "cnn-dm").items()},
    }


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tldr-cache")


def tldr_task(settings, cache, **overrides) -> TLDR:
    values = {**settings["tldr"], **{k: str(v) for k, v in overrides.items()}}
    return TLDR(apply_overrides(TLDR.Config(), values, "task"), cache)


def cnn_task(settings, cache, **overrides) -> CNNDM:
    values = {**settings["cnn-dm"], **{k: str(v) for k, v in overrides.items()}}
    return CNNDM(apply_overrides(CNNDM.Config(), values, "eval_task"), cache)


@pytest.fixture(scope="module")
def task(settings, cache) -> TLDR:
    task = tldr_task(settings, cache)
    task.build()
    return task


def n_tokens(task: TLDR, text: str) -> int:
    return len(task._tokenizer(text, add_special_tokens=False)["input_ids"])


# ---------------------------------------------------------------- tldr through its contract


def test_rows_come_from_their_splits_with_one_boundary(task):
    sft, train, test, evals = (
        task.sft_data(),
        task.preference_data("train"),
        task.preference_data("test"),
        task.eval_prompts(),
    )
    assert [r["completion"] for r in sft] == [" " + POSTS[i][3] for i in fixtures_tldr.TRAIN]
    assert [r["reference"] for r in evals] == [POSTS[i][3] for i in fixtures_tldr.TEST]
    assert [(r["chosen"], r["rejected"]) for r in train] == [
        (" " + POSTS[i][3], " " + POSTS[i][4]) for i in fixtures_tldr.TRAIN
    ]
    # The comparisons' prompt (post only) and summaries ("TL;DR: ...") meet the SFT data's format exactly.
    assert [r["prompt"] for r in train] == [r["prompt"] for r in sft]
    assert [r["prompt"] for r in test] == [r["prompt"] for r in evals]
    for i, row in zip(fixtures_tldr.TRAIN, sft):
        raw = fixtures_tldr.sft_row(i)
        assert row["prompt"] + row["completion"] == raw["prompt"] + raw["label"]
        assert row["prompt"].endswith("\nTL;DR:") and row["prompt"].startswith(f"SUBREDDIT: r/{POSTS[i][0]}\n")
    # Tokenized apart (as the harness does) or together, prompt + completion are the same tokens.
    tok = task._tokenizer
    for row in train + test:
        for side in ("chosen", "rejected"):
            ids, n_prompt = encode(tok, row["prompt"], row[side], max_length=10_000)
            assert ids == tok(row["prompt"] + row[side], add_special_tokens=False)["input_ids"]
            assert tok.decode(ids[n_prompt:]) == row[side]
    with pytest.raises(ValueError):
        task.preference_data("valid1")


def test_long_posts_are_cut_at_a_word_keeping_the_header(task, settings, cache):
    limit = fixtures_tldr.MAX_PROMPT_TOKENS
    long = fixtures_tldr.LONG_INDEX - fixtures_tldr.TEST.start
    original = fixtures_tldr.sft_row(fixtures_tldr.LONG_INDEX)["prompt"]
    cut = task.eval_prompts()[long]["prompt"]
    assert n_tokens(task, original) > limit >= n_tokens(task, cut)
    header, post = fixtures_tldr.post_text(fixtures_tldr.LONG_INDEX).split("\nPOST: ")
    assert cut.startswith(header + "\nPOST: I opened") and cut.endswith("\nTL;DR:")
    kept = cut[len(header + "\nPOST: ") : -len("\nTL;DR:")]
    assert post.startswith(kept) and post[len(kept)] == " "  # a prefix of the post, ending at a word
    next_word = post[: post.index(" ", len(kept) + 1)]
    assert n_tokens(task, f"{header}\nPOST: {next_word}\nTL;DR:") > limit  # as much of the post as fits
    assert task.preference_data("test")[long]["prompt"] == cut
    assert all(n_tokens(task, r["prompt"]) <= limit for r in task.eval_prompts() + task.sft_data())
    assert task.stats == {"truncated": 2, "dropped": 0, "identical_pairs": 0}

    dropping = tldr_task(settings, cache, long_prompts="drop")
    titles = [r["prompt"].split("\n")[1] for r in dropping.eval_prompts()]
    assert len(titles) == len(fixtures_tldr.TEST) - 1 and not any(fixtures_tldr.LONG_POST_TITLE in t for t in titles)
    assert dropping.stats["dropped"] == 2
    # The limit counts kept rows: with a row dropped, the next one takes its place.
    eleven = tldr_task(settings, cache, long_prompts="drop", max_test_pairs=long + 1)
    pairs = eleven.preference_data("test")
    assert len(pairs) == long + 1 and POSTS[fixtures_tldr.TEST[long + 1]][1] in pairs[-1]["prompt"]

    too_long = fixtures_tldr.CONTEXT + 88
    context = fixtures_tldr.CONTEXT
    with pytest.raises(UserError, match=f"max_prompt_tokens={too_long}: the model's context is {context}"):
        tldr_task(settings, cache, max_prompt_tokens=too_long).build()
    for bad in ({"long_prompts": "keep"}, {"max_prompt_tokens": 4}, {"max_test_pairs": -1}):
        with pytest.raises(UserError, match="task." + next(iter(bad))):
            tldr_task(settings, cache, **bad)


def test_limits_keep_the_first_rows(task, settings, cache):
    small = tldr_task(settings, cache, max_train_pairs=3, max_test_pairs=2, max_sft_examples=4)
    assert small.eval_prompts() == task.eval_prompts()  # every one: a run takes the first eval.max_prompts
    assert small.preference_data("train") == task.preference_data("train")[:3]
    assert small.preference_data("test") == task.preference_data("test")[:2]
    assert small.sft_data() == task.sft_data()[:4]
    assert len(task.eval_prompts()) == len(fixtures_tldr.TEST)
    assert TLDR.generation.max_prompts == 256  # the paper's 256 test prompts


def test_rows_are_loaded_once_per_instance(settings, cache, monkeypatch):
    calls = []
    real = hub.load_rows
    monkeypatch.setattr(hub, "load_rows", lambda *a, **kw: calls.append(a) or real(*a, **kw))
    fresh = tldr_task(settings, cache)
    fresh.build()
    fresh.build()
    fresh.sft_data(), fresh.eval_prompts(), fresh.preference_data("train"), fresh.preference_data("test")
    assert sorted(split for _, split in calls) == ["test", "test", "train", "train"]


def write_bad(tmp_path: Path, name: str, rows: list[dict], split: str = "train") -> str:
    return str(hub_fixtures.write_dataset(tmp_path / name, {split: rows}))


def test_malformed_rows_name_dataset_split_row_and_column(settings, cache, tmp_path):
    good = fixtures_tldr.comparison_row(0)
    cases = [
        (
            "preference_dataset",
            [good, {"prompt": good["prompt"], "chosen": good["chosen"]}],
            "row 1 .*'rejected' is missing",
        ),
        ("preference_dataset", [good, good, {**good, "chosen": "   "}], "row 2 .*'chosen' is empty"),
        ("preference_dataset", [{**good, "rejected": "TL;DR: "}], "row 0 .*'rejected' has no summary after 'TL;DR:'"),
        (
            "sft_dataset",
            [{"prompt": "SUBREDDIT: r/x\nTITLE: t\nPOST: p\nTL;DR:", "summary": "s"}],
            "row 0 .*'label' is missing",
        ),
        ("sft_dataset", [{"prompt": 3, "label": " s"}], "row 0 .*'prompt' is not text"),
    ]
    for i, (setting, rows, message) in enumerate(cases):
        path = write_bad(tmp_path, f"bad{i}", rows)
        with pytest.raises(UserError, match=message) as err:
            tldr_task(settings, cache, **{setting: path}).build()
        assert f"{path} (task.{setting}) split 'train'" in str(err.value) and "\n" not in str(err.value)
    # A pair whose two summaries are the same says nothing: skipped and counted, not an error.
    same = write_bad(tmp_path, "same", [good, {**good, "rejected": good["chosen"]}, fixtures_tldr.comparison_row(1)])
    pairs_task = tldr_task(settings, cache, preference_dataset=same, max_test_pairs=0)
    with pytest.raises(UserError, match="no split 'test'"):
        pairs_task.build()
    shutil.copy(
        Path(same) / "data" / "train-00000-of-00001.parquet", Path(same) / "data" / "test-00000-of-00001.parquet"
    )
    pairs_task.build()
    assert len(pairs_task.preference_data("train")) == 2 and pairs_task.stats["identical_pairs"] == 2


def test_reference_key_follows_the_model_files(settings, cache, tmp_path):
    assert (
        tldr_task(settings, cache, model="CarperAI/openai_summarize_tldr_sft").reference_key
        == "tldr/CarperAI/openai_summarize_tldr_sft"
    )
    copy = shutil.copytree(settings["tldr"]["model"], tmp_path / "model")
    before = tldr_task(settings, cache, model=copy).reference_key
    assert before.startswith(f"tldr/{copy}") and before == model_key("tldr", str(copy))
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "n_layer": 1}))
    assert tldr_task(settings, cache, model=copy).reference_key != before


def test_paper_settings_and_their_precedence(settings, cache):
    assert TLDR.judge_prompt == "summarization-concise" and load_template(TLDR.judge_prompt)
    assert (
        TLDR.gold_reward is None and TLDR.generation.temperature == 1.0 and 64 <= TLDR.generation.max_new_tokens <= 128
    )
    sets = [f"task.{k}={v}" for k, v in settings["tldr"].items()]
    assert resolve(RunSpec("dpo", "tldr", sets=sets), cache).algo_config.beta == 0.5
    assert resolve(RunSpec("dpo", "tldr", sets=sets + ["dpo.beta=0.2"]), cache).algo_config.beta == 0.2
    r = resolve(RunSpec("sft", "tldr", sets=sets), cache)
    assert r.train.max_length >= fixtures_tldr.MAX_PROMPT_TOKENS + TLDR.generation.max_new_tokens


# ---------------------------------------------------------------- cnn-dm through its contract


def test_cnn_dm_prompts_are_articles_in_the_tldr_format(settings, cache, tmp_path):
    task = cnn_task(settings, cache)
    rows = task.eval_prompts()
    assert len(rows) == len(fixtures_cnn_dm.ARTICLES)
    for row, (article, highlights) in zip(rows, fixtures_cnn_dm.ARTICLES):
        assert row["prompt"].endswith("\nTL;DR:") and row["reference"] == " ".join(highlights.split())
        text = row["prompt"][: -len("\nTL;DR:")]
        assert article.startswith(text) and len(text) <= fixtures_cnn_dm.MAX_ARTICLE_CHARS
    long = rows[fixtures_cnn_dm.LONG_INDEX]["prompt"][: -len("\nTL;DR:")]
    article = fixtures_cnn_dm.ARTICLES[fixtures_cnn_dm.LONG_INDEX][0]
    assert len(article) > fixtures_cnn_dm.MAX_ARTICLE_CHARS and article[len(long)] == " "
    assert len(long) > fixtures_cnn_dm.MAX_ARTICLE_CHARS - 60  # cut at the last word that fits, not earlier
    assert rows[fixtures_cnn_dm.LONG_INDEX]["id"] == fixtures_cnn_dm.LONG_ID
    assert CNNDM.generation.max_prompts == 256  # a run evaluates the first 256 articles
    whole = cnn_task(settings, cache, max_article_chars=0).eval_prompts()[fixtures_cnn_dm.LONG_INDEX]["prompt"]
    assert whole == article + "\nTL;DR:"

    assert CNNDM.eval_only and CNNDM.gold_reward is None and CNNDM.judge_prompt == "summarization-news"
    assert "news article" in load_template(CNNDM.judge_prompt).text
    for method in (task.load_policy, task.sft_data, lambda: task.preference_data("train")):
        with pytest.raises(UserError) as err:
            method()
        assert str(err.value) == EVAL_ONLY
    bad = write_bad(tmp_path, "cnn", [fixtures_cnn_dm.row(0), {"article": "text", "id": "x"}], split="test")
    with pytest.raises(UserError, match=r"cnn \(eval_task.dataset\) split 'test' row 1 .*'highlights' is missing"):
        cnn_task(settings, cache, dataset=bad).eval_prompts()


# ---------------------------------------------------------------- through the CLI


def tiny_run(settings, extra: list[str] = ()) -> list[str]:
    args = []
    for key, value in settings["tldr"].items():
        args += ["--set", f"task.{key}={value}"]
    for item in [
        "train.max_steps=2",
        "train.batch_size=4",
        "eval.samples_per_prompt=1",
        "eval.max_new_tokens=8",
        "eval.batch_size=16",
        *extra,
    ]:
        args += ["--set", item]
    return args


def judge_sets(server) -> list[str]:
    return ["judge.model=stub", f"judge.base_url={server.url}", "judge.backoff_s=0.01", "judge.bootstrap=200"]


def read_run(results: Path) -> tuple[dict, dict, list[dict]]:
    (run,) = [p for p in results.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert (run / "COMPLETE").exists()
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    return (
        json.loads((run / "config.json").read_text())["config"],
        json.loads((run / "metrics.json").read_text()),
        samples,
    )


def check_judged(metrics: dict, samples: list[dict], n: int, template: str) -> None:
    """The stub always prefers A and every pair is judged in both orders (the default): each pair is a tie."""
    win = metrics["judge_win_rate"]
    assert win["n"] == n and win["template"] == template and win["baseline"] == "reference"
    assert win["mean"] == 0.5 and all(s["judge_win"] == 0.5 for s in samples)
    assert metrics["judge_first_position_rate"]["mean"] == 1.0
    assert win["ci_low"] <= win["mean"] <= win["ci_high"] and win["invalid"] == win["failed"] == 0


def test_cli_sft_and_dpo_runs_judged_against_the_reference_summaries(settings, cache, tmp_path):
    sft = run_cli(
        ["run", "--algo", "sft", "--task", "tldr", "--results", str(tmp_path / "sft"), *tiny_run(settings)], cache
    )
    assert sft.returncode == 0, sft.stderr
    config, metrics, samples = read_run(tmp_path / "sft")
    assert config["task"]["name"] == "tldr" and config["task"]["model"] == settings["tldr"]["model"]
    assert metrics["n_prompts"] == len(fixtures_tldr.TEST) and metrics["kl"]["mean"] >= 0
    assert "12 SFT demonstrations" in sft.stderr

    with StubServer(lambda n, prompt: answer("A")) as server:
        dpo = run_cli(
            [
                "run",
                "--algo",
                "dpo",
                "--task",
                "tldr",
                "--results",
                str(tmp_path / "dpo"),
                *tiny_run(settings, judge_sets(server)),
            ],
            cache,
            env_extra={"OPENAI_API_KEY": API_KEY},
        )
        asked = [r["body"]["messages"][-1]["content"] for r in server.chat_requests]
    assert dpo.returncode == 0, dpo.stderr
    config, metrics, samples = read_run(tmp_path / "dpo")
    assert config["algo"]["beta"] == 0.5  # the task's run default: the paper's TL;DR beta
    check_judged(metrics, samples, len(fixtures_tldr.TEST), "summarization-concise")
    references = {
        judge_query(r["prompt"]): r["reference"]
        for r in TLDR(apply_overrides(TLDR.Config(), settings["tldr"], "task"), cache).eval_prompts()
    }
    assert len(asked) == 2 * len(fixtures_tldr.TEST)  # both orders
    for text in asked:
        assert "given forum post" in text
        post = text.split("Post:\n", 1)[1].split("\n\nSummary A:", 1)[0]
        assert references[post] in shown(text)  # the baseline is that post's reference summary
        assert "TL;DR" not in post  # the judge reads the post without the policy's cue


def test_cli_eval_task_cnn_dm_trains_on_tldr_and_judges_news(settings, cache, tmp_path):
    sets = [f"eval_task.{k}={v}" for k, v in settings["cnn-dm"].items()]
    with StubServer(lambda n, prompt: answer("A")) as server:
        out = run_cli(
            [
                "run",
                "--algo",
                "dpo",
                "--task",
                "tldr",
                "--eval-task",
                "cnn-dm",
                "--results",
                str(tmp_path),
                *tiny_run(settings, sets + judge_sets(server)),
            ],
            cache,
            env_extra={"OPENAI_API_KEY": API_KEY},
        )
        asked = [r["body"]["messages"][-1]["content"] for r in server.chat_requests]
    assert out.returncode == 0, out.stderr
    config, metrics, samples = read_run(tmp_path)
    assert config["eval_task"]["name"] == "cnn-dm" and config["algo"]["beta"] == 0.5
    expected = cnn_task(settings, cache).eval_prompts()
    assert [s["prompt"] for s in samples] == [r["prompt"] for r in expected]
    check_judged(metrics, samples, len(expected), "summarization-news")
    highlights = {" ".join(h.split()) for _, h in fixtures_cnn_dm.ARTICLES}
    assert len(asked) == 2 * len(expected)  # both orders
    for text in asked:
        assert "given news article" in text and highlights & set(shown(text))


def test_cli_unreachable_hub_is_one_line_and_leaves_nothing(cache, tmp_path):
    env = {"HF_ENDPOINT": UNREACHABLE, "HF_HUB_OFFLINE": "", "HF_DATASETS_OFFLINE": "", "TRANSFORMERS_OFFLINE": ""}
    out = run_cli(
        ["run", "--algo", "dpo", "--task", "tldr", "--results", str(tmp_path / "results")], cache, env_extra=env
    )
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert "unreachable" in lines[0] and "--task sentiment" in lines[0] and "HF_HUB_OFFLINE=1" in lines[0]
    assert "task.model" in lines[0] and "CarperAI/openai_summarize_tldr_sft" in lines[0]
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").rglob("*"))


def test_cli_cnn_dm_cannot_be_trained_on(settings, cache, tmp_path):
    out = run_cli(["run", "--algo", "dpo", "--task", "cnn-dm", "--results", str(tmp_path / "results")], cache)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "evaluation-only" in lines[0] and "--task tldr --eval-task cnn-dm" in lines[0], (
        out.stderr
    )
    assert not (tmp_path / "results").exists()
