"""Best-of-N: the KL bound, the reranking, its report through the kl evaluator, bad n."""

from __future__ import annotations

import dataclasses
import json
import math
from types import SimpleNamespace

import pytest
from tiny import tiny_gpt2, tiny_tokenizer

from bench.algorithms.best_of_n import BestOfN, BestOfNPolicy, Config
from bench.contracts import Generation
from bench.errors import UserError
from bench.kl import best_of_n_kl_bound
from bench.policy import ModelPolicy
from bench.runner import RunSpec, execute


def test_kl_bound_is_log_n_minus_n_minus_one_over_n():
    assert best_of_n_kl_bound(1) == 0.0
    assert best_of_n_kl_bound(2) == pytest.approx(math.log(2) - 0.5)
    assert best_of_n_kl_bound(16) == pytest.approx(2.772588722 - 0.9375)
    assert best_of_n_kl_bound(128) == pytest.approx(4.852030264 - 127 / 128)
    bounds = [best_of_n_kl_bound(n) for n in (1, 4, 16, 64, 128)]
    assert bounds == sorted(bounds)
    assert BestOfNPolicy(None, None, None, 16).kl_bound() == best_of_n_kl_bound(16)


def test_each_completion_is_the_highest_scoring_of_its_n_candidates():
    tok = tiny_tokenizer()
    model = tiny_gpt2(vocab_size=len(tok), eos_token_id=tok.eos_token_id)
    prompts = ["the movie was", "a boring script"]
    gen = Generation(max_new_tokens=6, temperature=1.0, samples_per_prompt=2, batch_size=8)

    def reward(prompts, completions):  # any deterministic score will do: here, the count of letter e
        return [float(c.count("e")) for c in completions]

    picked = BestOfNPolicy(model, tok, reward, n=4).sample(prompts, gen, seed=7)
    # The same candidates, drawn directly: 2 prompts x 2 completions x 4 candidates, grouped by prompt.
    wide = ModelPolicy(model, tok).sample(
        prompts, Generation(max_new_tokens=6, samples_per_prompt=8, batch_size=8), seed=7
    )
    assert [s.prompt_index for s in picked] == [0, 0, 1, 1]
    for k, s in enumerate(picked):
        group = wide[4 * k : 4 * k + 4]
        assert s.prompt == group[0].prompt and s in group
        assert reward([s.prompt], [s.completion])[0] == max(
            reward([g.prompt for g in group], [g.completion for g in group])
        )
    assert len({s.completion for s in wide}) > 4  # the candidates differ, so the choice is not trivial


def test_smaller_n_points_choose_among_the_first_candidates_of_the_same_draw():
    tok = tiny_tokenizer()
    model = tiny_gpt2(vocab_size=len(tok), eos_token_id=tok.eos_token_id)
    prompts = ["the movie was", "a boring script"]
    gen = Generation(max_new_tokens=6, temperature=1.0, samples_per_prompt=2, batch_size=8)
    calls = []

    def reward(prompts, completions):
        calls.append(len(completions))
        return [float(c.count("e")) - 0.01 * len(c) for c in completions]

    policy = BestOfNPolicy(model, tok, reward, n=16)
    final = policy.sample(prompts, gen, seed=3)
    points = policy.frontier_points()
    assert [(k, total) for k, total, _ in points] == [(1, 16), (4, 16)]
    wide = ModelPolicy(model, tok).sample(prompts, dataclasses.replace(gen, samples_per_prompt=32), seed=3)
    for k, _, smaller in points:
        assert smaller.kl_bound() == best_of_n_kl_bound(k)
        picked = smaller.sample(prompts, gen, seed=3)
        for j, s in enumerate(picked):
            first = wide[16 * j : 16 * j + k]
            best = max(first, key=lambda c: reward([c.prompt], [c.completion])[0])
            assert (s.prompt_index, s.completion) == (best.prompt_index, best.completion)
    # best-of-1 is the first candidate itself, and the largest N keeps the draw's best.
    assert [s.completion for s in points[0][2].sample(prompts, gen, seed=3)] == [c.completion for c in wide[::16]]
    assert len(final) == 4
    # One draw of 2 x 2 x 16 candidates, scored once, whatever the number of points (the rest is this test's).
    assert calls[0] == 64 and len(wide) == 64
    assert BestOfNPolicy(model, tok, reward, n=1).frontier_points() == []
    assert [k for k, _, _ in BestOfNPolicy(model, tok, reward, n=64).frontier_points()] == [1, 4, 16]
    # A point's samples are copies: an evaluator writing onto one does not write onto the final policy's.
    points[1][2].sample(prompts, gen, seed=3)[0].values["x"] = 1.0
    assert "x" not in policy.sample(prompts, gen, seed=3)[0].values


def test_n_below_one_is_a_user_error_and_leaves_nothing(cache_dir, tmp_path):
    with pytest.raises(UserError, match="best-of-n.n=0: must be at least 1"):
        BestOfN(Config(n=0))
    with pytest.raises(UserError, match="best-of-n.n=-3: must be at least 1"):
        execute(
            RunSpec(algo="best-of-n", task="sentiment", sets=["task.scale=tiny", "best-of-n.n=-3"]),
            results=tmp_path,
            cache_dir=cache_dir,
            echo=lambda _: None,
        )
    assert not any(tmp_path.iterdir())


def test_a_run_reports_the_analytic_kl_bound_and_the_reward_model_accuracy(cache_dir, tmp_path):
    run = execute(
        RunSpec(algo="best-of-n", task="sentiment", sets=["task.scale=tiny", "best-of-n.n=4", "eval.max_prompts=6"]),
        results=tmp_path,
        cache_dir=cache_dir,
        echo=lambda _: None,
    )
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["kl"]["mean"] == pytest.approx(best_of_n_kl_bound(4))
    assert metrics["kl"]["estimator"] == "analytic bound" and "kl_mc" not in metrics
    assert 0 <= metrics["reward_model_accuracy"]["mean"] <= 1
    assert metrics["n_samples"] == 6 * 4 and metrics["gold_reward"]["n"] == 6
    # best-of-1 from the same candidates, before the final row: the frontier's low-KL end.
    rows = [json.loads(line) for line in (run / "checkpoints.jsonl").read_text().splitlines()]
    assert [(r["step"], r["total_steps"], r.get("final")) for r in rows[:1]] == [(1, 4, None)]
    assert len(rows) == 2 and rows[1]["final"]
    assert rows[0]["metrics"]["kl"]["mean"] == 0.0 and rows[0]["metrics"]["gold_reward"]["n"] == 6
    assert rows[1]["metrics"] == metrics
    cost = json.loads((run / "cost.json").read_text())
    assert cost["wall_time_s"]["checkpoints"] > 0 and "gold-reward" in cost["evaluator_time_s"]


def test_the_kl_evaluator_uses_the_bound_for_a_policy_without_a_model():
    from bench.evaluators.kl import KL

    ctx = SimpleNamespace(reference=object(), trained=BestOfNPolicy(None, None, None, 8))
    assert KL().applies(ctx)
    result = KL().evaluate([SimpleNamespace(prompt_index=i) for i in (0, 0, 1)], ctx)
    assert result.aggregates["kl"] == {"mean": best_of_n_kl_bound(8), "se": 0.0, "n": 2, "estimator": "analytic bound"}
