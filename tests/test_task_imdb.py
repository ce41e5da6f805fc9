"""The imdb task on local fixtures in the hub's schema (tests/fixtures_imdb.py).

Through the task: the build (splits, prompts cut at word boundaries of the model's tokenizer, the
fine-tuned policy, preference pairs labelled by the gold reward), the gold reward read by label
name, an SFT checkpoint used as it is, malformed rows. Through the real CLI: DPO and SFT runs judged
against the reviews' real continuations by a scripted local server, and
the one-line error for the default hub ids when the hub is unreachable.
"""

from __future__ import annotations

import json
from pathlib import Path

import fixtures_imdb
import hub_fixtures
import pytest
import torch
from conftest import run_cli
from openai_stub import StubServer, answer

from bench import hub
from bench.config import apply_overrides
from bench.errors import UserError
from bench.logprobs import encode
from bench.tasks.imdb import IMDb
from bench.tasks.review_prefix import clean_review, preference_pairs

UNREACHABLE = "http://127.0.0.1:9"  # nothing listens: bench.hub's probe is refused at once
OFFLINE_ENV = {"HF_ENDPOINT": UNREACHABLE, "HF_HUB_OFFLINE": "", "HF_DATASETS_OFFLINE": "", "TRANSFORMERS_OFFLINE": ""}


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> dict[str, str]:
    return {k: str(v) for k, v in fixtures_imdb.make(tmp_path_factory.mktemp("imdb-fixtures")).items()}


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("imdb-cache")


def imdb_task(settings, cache, **overrides) -> IMDb:
    values = {**settings, **{k: str(v) for k, v in overrides.items()}}
    return IMDb(apply_overrides(IMDb.Config(), values, "task"), cache)


@pytest.fixture(scope="module")
def task(settings, cache) -> IMDb:
    task = imdb_task(settings, cache)
    task.build()
    return task


def test_build_prompts_policy_and_pairs(task, settings, cache):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rows = fixtures_imdb.reviews()
    train = {clean_review(r["text"]) for r in rows["train"]}
    test = {clean_review(r["text"]) for r in rows["test"]} - train
    log = task.build_log()
    assert log["splits"] == {
        "preference": 8,
        "lm": fixtures_imdb.TRAIN - 8,
        "eval": 6,
        "test_preference": 4,
        "lm_valid": 4,
    }
    assert len(test) == fixtures_imdb.TEST

    tok = task.tokenizer()
    assert (
        tok.get_vocab() == AutoTokenizer.from_pretrained(settings["model"]).get_vocab()
    )  # the model's own, not trained
    evals, sft = task.eval_prompts(), task.sft_data()
    assert len(evals) == 6 and len(sft) == fixtures_imdb.TRAIN - 8
    for row, reviews in [(r, test) for r in evals] + [
        ({"prompt": r["prompt"], "reference": r["completion"]}, train) for r in sft
    ]:
        text = row["prompt"] + row["reference"]
        assert any(review.startswith(text) for review in reviews), text  # evaluation from test, SFT from train reviews
        assert "<br" not in text
        ids, n_prompt = encode(tok, row["prompt"], row["reference"], max_length=10_000)
        assert ids == tok(text, add_special_tokens=False)["input_ids"]  # tokenizes alone as joined
        assert 2 <= n_prompt <= 8 and len(ids) - n_prompt <= 16

    groups = [json.loads(line) for line in (task.artifact_dir / "preference_samples.jsonl").read_text().splitlines()]
    assert [g["split"] for g in groups] == ["preference"] * 8 + ["test_preference"] * 4
    for split, name, reviews in (("train", "preference", train), ("test", "test_preference", test)):
        pairs = task.preference_data(split)
        expected = [
            p
            for g in groups
            if g["split"] == name
            for p in preference_pairs(g["prompt"], g["completions"], g["rewards"])
        ]
        assert pairs == expected and pairs
        assert all(any(review.startswith(p["prompt"]) for review in reviews) for p in pairs)
        chosen = task.gold_reward([p["prompt"] for p in pairs], [p["chosen"] for p in pairs])
        rejected = task.gold_reward([p["prompt"] for p in pairs], [p["rejected"] for p in pairs])
        assert all(c > r for c, r in zip(chosen, rejected))

    # The starting policy is the fixture model fine-tuned (same shape, other weights), saved as safetensors.
    start = AutoModelForCausalLM.from_pretrained(settings["model"])
    policy, _ = task.load_policy()
    assert (task.artifact_dir / "policy" / "model.safetensors").exists() and not policy.training
    assert log["policy"]["train_log"] and policy.config.n_embd == start.config.n_embd
    assert not torch.equal(policy.transformer.wte.weight, start.transformer.wte.weight)

    # The build's identity: its seed and the model's files.
    assert imdb_task(settings, cache, seed=1).key != task.key
    assert imdb_task(settings, cache, model="gpt2-large").key != task.key


def test_gold_reward_is_p_positive_found_by_label_name(task, settings, cache, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    prompts, completions = ["This film was", "The acting is"], [" wonderful and moving.", " dull, a waste of time."]
    model = AutoModelForSequenceClassification.from_pretrained(settings["gold_model"])
    tok = AutoTokenizer.from_pretrained(settings["gold_model"])
    with torch.no_grad():
        logits = model(**tok([p + c for p, c in zip(prompts, completions)], padding=True, return_tensors="pt")).logits
    by_hand = torch.softmax(logits, -1)[:, 1].tolist()  # POSITIVE is label 1 of the fixture
    assert task.gold_reward(prompts, completions) == pytest.approx(by_hand, abs=1e-6)
    # The same weights with the label names swapped: POSITIVE is now output 0.
    reversed_dir = hub_fixtures.tiny_classifier(
        tmp_path / "reversed", fixtures_imdb.texts(fixtures_imdb.reviews()), labels=("POSITIVE", "NEGATIVE")
    )
    swapped = imdb_task(settings, cache, gold_model=reversed_dir)
    assert swapped.gold_reward(prompts, completions) == pytest.approx([1 - p for p in by_hand], abs=1e-6)
    with pytest.raises(UserError, match="has labels NEGATIVE, POSITIVE, none named 'positive'"):
        imdb_task(settings, cache, gold_label="positive").gold_reward(prompts, completions)
    assert task.gold_reward([], []) == []


def test_sft_model_is_used_as_it_is(task, settings, cache):
    from transformers import AutoModelForCausalLM

    as_is = imdb_task(settings, cache, sft_model=settings["model"], lm_steps=1)
    assert as_is.key == imdb_task(settings, cache, sft_model=settings["model"], lm_steps=7).key != task.key
    as_is.build()
    policy, _ = as_is.load_policy()
    start = AutoModelForCausalLM.from_pretrained(settings["model"])
    assert not (as_is.artifact_dir / "policy").exists() and "train_log" not in as_is.build_log()["policy"]
    assert all(torch.equal(a, b) for a, b in zip(policy.state_dict().values(), start.state_dict().values()))


def test_malformed_rows_are_one_line_errors(settings, cache, tmp_path):
    good = {"text": "A fine film with a great cast.", "label": 1}
    cases = [
        ([good, {"label": 0}], "row 1 .*'text' is missing"),
        ([good, good, {"text": "Bad.", "label": 3}], "row 2 .*'label' is 3; it must be 0 .* or 1"),
        ([good, {"text": None, "label": 0}], "row 1 .*'text' is missing \\(null\\)"),
        ([good, {"text": "Fine.", "label": None}], "row 1 .*'label' is None"),
    ]
    for i, (rows, message) in enumerate(cases):
        path = hub_fixtures.write_dataset(tmp_path / f"bad{i}", {"train": rows, "test": [good]})
        with pytest.raises(UserError, match=message) as err:
            imdb_task(settings, cache, dataset=path).build()
        assert f"{path} (task.dataset) split 'train'" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UserError, match="has 1 distinct reviews but the task takes"):
        imdb_task(
            settings, cache, dataset=hub_fixtures.write_dataset(tmp_path / "small", {"train": [good], "test": [good]})
        ).build()


def test_unreachable_hub_names_each_default_id(settings, cache, tmp_path, monkeypatch):
    for key, value in OFFLINE_ENV.items():
        monkeypatch.setenv(key, value)
    hub.hub_reachable.cache_clear()
    try:
        for local, missing in ((["dataset"], "task.model"), (["dataset", "model"], "task.gold_model")):
            with pytest.raises(UserError, match=f"\\({missing}\\): the Hugging Face hub is unreachable") as err:
                IMDb(
                    apply_overrides(IMDb.Config(), {k: settings[k] for k in (*local, *fixtures_imdb.SETTINGS)}, "task"),
                    tmp_path,
                ).build()
            assert getattr(IMDb.Config(), missing.split(".")[1]) in str(err.value)
    finally:
        hub.hub_reachable.cache_clear()


def test_cli_unreachable_hub_is_one_line(cache, tmp_path):
    out = run_cli(
        ["run", "--algo", "dpo", "--task", "imdb", "--results", str(tmp_path / "results")], cache, env_extra=OFFLINE_ENV
    )
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert (
        "unreachable" in lines[0] and "'stanfordnlp/imdb' (task.dataset)" in lines[0] and "--task sentiment" in lines[0]
    )


@pytest.mark.parametrize("algo", ["dpo", "sft"])
def test_cli_run_end_to_end(algo, task, settings, cache, tmp_path):
    args = ["run", "--algo", algo, "--task", "imdb", "--results", str(tmp_path)]
    for item in [
        *(f"task.{k}={v}" for k, v in settings.items()),
        "train.max_steps=2",
        "train.batch_size=4",
        "eval.samples_per_prompt=1",
        "eval.max_new_tokens=8",
        "eval.max_prompts=4",
    ]:
        args += ["--set", item]
    # The judge (a scripted local server that always answers "A") against each review's real continuation.
    with StubServer(lambda n, prompt: answer("A")) as server:
        judge = ["judge.model=stub", f"judge.base_url={server.url}", "judge.backoff_s=0.01", "judge.bootstrap=200"]
        out = run_cli(
            args + [a for item in judge for a in ("--set", item)], cache, env_extra={"OPENAI_API_KEY": "sk-test-imdb"}
        )
        asked = [r["body"]["messages"][-1]["content"] for r in server.chat_requests]
    assert out.returncode == 0, out.stderr
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    config = json.loads((run / "config.json").read_text())["config"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert config["task"]["name"] == "imdb" and config["task"]["model"] == settings["model"]
    assert metrics["n_prompts"] == 4 and 0 <= metrics["gold_reward"]["mean"] <= 1 and metrics["kl"]["mean"] >= 0
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert [s["prompt"] for s in samples] == [r["prompt"] for r in task.eval_prompts()[:4]]
    assert "imdb: data:" not in out.stderr  # the module's build was reused, not rebuilt
    win = metrics["judge_win_rate"]
    assert win["n"] == 4 and win["baseline"] == "reference" and win["template"] == "continuation-positive"
    assert win["mean"] == 0.5  # an always-A judge in both orders (the default) ties every pair
    references = {r["prompt"]: r["reference"] for r in task.eval_prompts()[:4]}
    assert len(asked) <= 8 and all(any(ref.strip() in text for ref in references.values()) for text in asked)
