"""The hh and truthy tasks: hand-written dialogues, local fixtures in the hub's schemas (tests/fixtures_hh.py,
fixtures_truthy.py) and the real CLI.

Parsing and normalisation (single-turn boundary, skipped pairs, prompt formats), the held-out
split of truthy, malformed rows, the cached preferred-FT build of hh; through the CLI, SFT and
DPO runs on each fixture judged by a scripted local OpenAI-compatible server, and the one-line
error for an unreachable hub.
"""

from __future__ import annotations

import json
from pathlib import Path

import fixtures_hh
import fixtures_truthy
import hub_fixtures
import pytest
import torch
from conftest import run_cli
from openai_stub import StubServer, answer, shown
from test_task_tldr import API_KEY, UNREACHABLE, check_judged, judge_sets, read_run

from bench import preference
from bench.config import apply_overrides
from bench.errors import UserError
from bench.logprobs import encode
from bench.runner import RunSpec, resolve
from bench.tasks.common import model_key
from bench.tasks.hh import HH, single_turn_pair, split_dialogue, user_query
from bench.tasks.truthy import Truthy, format_dialogue, held_out


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> dict[str, dict[str, str]]:
    root = tmp_path_factory.mktemp("hh-truthy-fixtures")
    return {
        "hh": {k: str(v) for k, v in fixtures_hh.make(root / "hh").items()},
        "truthy": {k: str(v) for k, v in fixtures_truthy.make(root / "truthy").items()},
    }


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hh-truthy-cache")


def make_task(cls, settings, cache, **overrides):
    values = {**settings[cls.name], **{k: str(v) for k, v in overrides.items()}}
    return cls(apply_overrides(cls.Config(), values, "task"), cache)


def write_bad(tmp_path: Path, name: str, rows: list[dict]) -> str:
    return str(hub_fixtures.write_dataset(tmp_path / name, {"train": rows, "test": rows}))


# ---------------------------------------------------------------- hh: parsing by hand


def test_single_turn_dialogues_split_after_the_assistant_marker():
    text = "\n\nHuman: What is 2 + 2?\n\nAssistant: It is 4. The Assistant: label inside a line stays."
    assert split_dialogue(text) == (
        "\n\nHuman: What is 2 + 2?\n\nAssistant:",
        " It is 4. The Assistant: label inside a line stays.",
    )
    assert "".join(split_dialogue(text)) == text
    assert user_query(split_dialogue(text)[0]) == "What is 2 + 2?"  # what the judge reads
    # Leading white space is brought to the dataset's "\n\nHuman:" opening.
    assert split_dialogue("Human: Hi\n\nAssistant: Hello") == ("\n\nHuman: Hi\n\nAssistant:", " Hello")
    assert split_dialogue(" \nHuman: Hi\n\nAssistant:") == ("\n\nHuman: Hi\n\nAssistant:", "")
    for not_single in (
        "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: And?\n\nAssistant: Bye",  # two turns
        "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: One more question",  # a dangling Human turn
        "\n\nHuman: Hi there",  # no Assistant turn
        "\n\nAssistant: I start\n\nHuman: Odd",  # Assistant first
        "Just some text",
    ):
        assert split_dialogue(not_single) is None, not_single


def test_pairs_are_skipped_for_each_reason():
    q = "\n\nHuman: Name a fruit.\n\nAssistant:"
    assert single_turn_pair(q + " An apple.", q + " A car.") == (
        {"prompt": q, "chosen": " An apple.", "rejected": " A car."},
        None,
    )
    assert single_turn_pair(q + " An apple.", "\n\nHuman: Name a colour.\n\nAssistant: Red.") == (
        None,
        "prompt_mismatch",
    )
    assert single_turn_pair(q + " An apple.", q + "  An apple. ") == (None, "identical_pairs")
    assert single_turn_pair(q + " An apple.", q + " \n") == (None, "empty_response")
    assert single_turn_pair(q + " An apple.", q + " A car.\n\nHuman: Sure?\n\nAssistant: Yes.") == (None, "multi_turn")
    assert single_turn_pair(q + " An apple.\n\nHuman: More?\n\nAssistant: Pear.", q + " A car.") == (None, "multi_turn")


# ---------------------------------------------------------------- hh on its fixture


@pytest.fixture(scope="module")
def hh(settings, cache) -> HH:
    task = make_task(HH, settings, cache)
    task.build()
    return task


def test_hh_keeps_single_turn_pairs_and_counts_the_rest(hh, settings, cache):
    qa = fixtures_hh.QA
    train, test, evals = hh.preference_data("train"), hh.preference_data("test"), hh.eval_prompts()
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in train] == [
        (f"\n\nHuman: {qa[i][0]}\n\nAssistant:", f" {qa[i][1]}", f" {qa[i][2]}") for i in fixtures_hh.TRAIN
    ]
    assert hh.sft_data() == [{"prompt": r["prompt"], "completion": r["chosen"]} for r in train]
    assert [r["reference"] for r in evals] == [qa[i][1] for i in fixtures_hh.TEST]  # long question dropped
    assert [r["prompt"] for r in test] == [r["prompt"] for r in evals]
    rows_train, rows_test = fixtures_hh.rows_train(), fixtures_hh.rows_test()
    assert hh.stats == {
        "rows_train": len(rows_train),
        "rows_test": len(rows_test),
        **fixtures_hh.TRAIN_SKIPS,
        "multi_turn": fixtures_hh.TRAIN_SKIPS["multi_turn"] + 1,
        "long_prompts": 1,
    }
    tok = hh._tokenizer
    for row in train + test:
        assert row["prompt"] + row["chosen"] in {r["chosen"] for r in rows_train + rows_test}
        ids, n_prompt = encode(tok, row["prompt"], row["chosen"], max_length=10_000)
        assert ids == tok(row["prompt"] + row["chosen"], add_special_tokens=False)["input_ids"]
        assert len(ids[:n_prompt]) <= fixtures_hh.MAX_PROMPT_TOKENS
    # Limits keep the first usable pairs, reading past skipped rows.
    small = make_task(HH, settings, cache, max_test_pairs=2, max_train_pairs=4)
    assert small.eval_prompts() == evals and small.preference_data("test") == test[:2]
    assert small.preference_data("train") == train[:4]
    assert HH.generation.max_prompts == 256 and HH.judge_prompt == "dialogue" and HH.gold_reward is None
    assert HH.generation.samples_per_prompt == 1 and HH.generation.max_new_tokens == 128


def test_hh_preferred_ft_is_built_once_and_keys_the_reference(settings, tmp_path, monkeypatch):
    calls = []
    real = preference.train_on_demonstrations
    monkeypatch.setattr(
        preference, "train_on_demonstrations", lambda *a, **kw: calls.append(len(a[2])) or real(*a, **kw)
    )
    first = make_task(HH, settings, tmp_path)
    first.build()
    assert calls == [len(fixtures_hh.TRAIN)]  # trained once, on the chosen responses of the train pairs
    log = json.loads((first.artifact_dir / "build_log.json").read_text())
    assert first.artifact_dir.parent == tmp_path / "hh" and [r["step"] for r in log["train_log"]][-1] == 3
    tuned, _ = first.load_policy()
    base, _ = make_task(HH, settings, tmp_path, reference="base").load_policy()
    assert not tuned.training
    assert any(not torch.equal(a, b) for a, b in zip(tuned.state_dict().values(), base.state_dict().values()))

    second = make_task(HH, settings, tmp_path)
    second.build()
    again, _ = second.load_policy()
    assert calls == [len(fixtures_hh.TRAIN)]  # the cached policy is reused, not retrained
    assert second.reference_key == first.reference_key
    assert all(torch.equal(a, b) for a, b in zip(tuned.state_dict().values(), again.state_dict().values()))

    as_is = make_task(HH, settings, tmp_path, reference="base")
    assert as_is.reference_key == model_key("hh", settings["hh"]["model"]) != first.reference_key
    assert first.reference_key.startswith(as_is.reference_key + "+preferred-ft@")
    longer = make_task(HH, settings, tmp_path, sft_steps=4)
    assert longer.reference_key != first.reference_key
    fewer = make_task(HH, settings, tmp_path, max_train_pairs=5)
    assert fewer.reference_key != first.reference_key  # other demonstrations, another policy
    assert calls == [len(fixtures_hh.TRAIN)]  # computing keys trains nothing
    for bad in ({"reference": "sft"}, {"max_test_pairs": -1}, {"max_prompt_tokens": 4}, {"sft_steps": -1}):
        with pytest.raises(UserError, match="task." + next(iter(bad))):
            make_task(HH, settings, tmp_path, **bad)


def test_hh_malformed_rows_name_dataset_split_and_row(settings, cache, tmp_path):
    good = fixtures_hh.rows_train()[0]
    cases = [
        ([good, {"chosen": good["chosen"]}], "row 1 .*'rejected' is missing"),
        ([good, good, {**good, "chosen": None}], "row 2 .*'chosen' is missing \\(null\\)"),
        ([{**good, "rejected": "   "}], "row 0 .*'rejected' is empty"),
    ]
    for i, (rows, message) in enumerate(cases):
        path = write_bad(tmp_path, f"bad{i}", rows)
        with pytest.raises(UserError, match=message) as err:
            make_task(HH, settings, cache, dataset=path).build()
        assert f"task hh: {path} (task.dataset) split 'train'" in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------- truthy


@pytest.fixture(scope="module")
def truthy(settings, cache) -> Truthy:
    task = make_task(Truthy, settings, cache)
    task.build()
    return task


def question(prompt: str) -> str:
    """The question inside an "Instruct: [system\\n\\n]question\\nOutput:" prompt."""
    return prompt[len("Instruct: ") : -len("\nOutput:")].split("\n\n")[-1]


def test_truthy_held_out_split_is_deterministic_and_disjoint(truthy, settings, cache, tmp_path):
    train, test = truthy.preference_data("train"), truthy.preference_data("test")
    train_q, test_q = {question(r["prompt"]) for r in train}, {question(r["prompt"]) for r in test}
    assert train_q and test_q and not train_q & test_q
    rows = fixtures_truthy.rows()
    assert train_q | test_q == {r["prompt"] for r in rows}
    assert len(train) + len(test) == len(rows) - 1 and truthy.stats["identical_pairs"] == 1
    # The repeated question (two ids) sits on one side with both its rows.
    repeated = fixtures_truthy.QA[0][1]
    assert sum(question(r["prompt"]) == repeated for r in (test if repeated in test_q else train)) == 2
    assert [r["prompt"] for r in truthy.eval_prompts()] == [r["prompt"] for r in test]
    assert [r["reference"] for r in truthy.eval_prompts()] == [r["chosen"].strip() for r in test]
    # The same split from another instance and from the rows in reverse order; another seed moves it.
    assert make_task(Truthy, settings, cache).preference_data("test") == test
    reversed_rows = str(hub_fixtures.write_dataset(tmp_path / "reversed", {"train": rows[::-1]}))
    flipped = make_task(Truthy, settings, cache, dataset=reversed_rows)
    assert {question(r["prompt"]) for r in flipped.preference_data("test")} == test_q
    assert {
        question(r["prompt"]) for r in make_task(Truthy, settings, cache, split_seed=1).preference_data("test")
    } != test_q
    # Over many prompts the held-out share is test_fraction; a larger fraction only adds prompts.
    prompts = [f"question number {i}?" for i in range(4000)]
    tenth = {p for p in prompts if held_out(p, 0.1, 0)}
    assert 0.085 < len(tenth) / len(prompts) < 0.115
    assert tenth < {p for p in prompts if held_out(p, 0.2, 0)}
    limited = make_task(Truthy, settings, cache, max_test_pairs=3, max_train_pairs=5)
    assert limited.eval_prompts() == truthy.eval_prompts() and limited.preference_data("test") == test[:3]
    assert limited.preference_data("train") == train[:5] and limited.sft_data() == truthy.sft_data()[:5]


def test_truthy_prompt_formats(truthy, settings):
    from transformers import AutoTokenizer

    system, prompt, good, bad = fixtures_truthy.QA[0]
    row = next(r for r in truthy.preference_data("train") + truthy.preference_data("test") if prompt in r["prompt"])
    assert row["prompt"] == f"Instruct: {system}\n\n{prompt}\nOutput:" and row["rejected"] == " " + bad
    tok = AutoTokenizer.from_pretrained(settings["truthy"]["model"])
    assert format_dialogue(tok, "", " Is it? ", " Yes. ") == ("Instruct: Is it?\nOutput:", " Yes.")
    # With a chat template: the template's own rendering, the answer as is.
    tok.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    assert format_dialogue(tok, "Be brief.", "Is it?", " Yes. ") == (
        "<system>Be brief.</system><user>Is it?</user><assistant>",
        "Yes.",
    )
    assert format_dialogue(tok, "", "Is it?", "Yes.")[0] == "<user>Is it?</user><assistant>"
    # A template without a system role: the system text opens the question.
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}"
        "{% endif %}[{{ m['content'] }}]{% endfor %}{% if add_generation_prompt %}>{% endif %}"
    )
    assert format_dialogue(tok, "Be brief.", "Is it?", "Yes.") == ("[Be brief.\n\nIs it?]>", "Yes.")


def test_truthy_malformed_rows_and_settings(settings, cache, tmp_path):
    good = fixtures_truthy.row(0)
    cases = [
        ([good, {k: v for k, v in good.items() if k != "prompt"}], "row 1 .*'prompt' is missing"),
        ([good, {**good, "chosen": ""}], "row 1 .*'chosen' is empty"),
        ([{**good, "system": 3}], "row 0 .*'system' is not text"),
    ]  # one row: a Parquet column has one type
    for i, (rows, message) in enumerate(cases):
        path = write_bad(tmp_path, f"bad{i}", rows)
        with pytest.raises(UserError, match=message) as err:
            make_task(Truthy, settings, cache, dataset=path).build()
        assert f"task truthy: {path} (task.dataset) split 'train'" in str(err.value) and "\n" not in str(err.value)
    one = write_bad(tmp_path, "one", [good])
    with pytest.raises(UserError, match="no usable (train|test) pairs"):
        make_task(Truthy, settings, cache, dataset=one).build()
    for bad in ({"test_fraction": 0}, {"test_fraction": 1.5}, {"max_train_pairs": -2}):
        with pytest.raises(UserError, match="task." + next(iter(bad))):
            make_task(Truthy, settings, cache, **bad)


def test_run_defaults_are_the_recipes_and_yield_to_the_user(settings, cache):
    hh_sets = [f"task.{k}={v}" for k, v in settings["hh"].items()]
    r = resolve(RunSpec("dpo", "hh", sets=hh_sets), cache)
    assert (
        r.algo_config.beta == 0.1 and r.train.max_length >= HH.Config().max_prompt_tokens + HH.generation.max_new_tokens
    )
    sets = [f"task.{k}={v}" for k, v in settings["truthy"].items()]
    r = resolve(RunSpec("dpo", "truthy", sets=sets), cache)
    assert (r.algo_config.beta, r.train.lr, r.train.batch_size, r.train.lora_r) == (0.2, 5e-7, 4, 16)
    assert r.train.max_length >= Truthy.Config().max_prompt_tokens + Truthy.generation.max_new_tokens
    r = resolve(RunSpec("dpo", "truthy", sets=sets + ["dpo.beta=0.3", "train.lora_r=0"]), cache)
    assert (r.algo_config.beta, r.train.lora_r) == (0.3, 0)


# ---------------------------------------------------------------- through the CLI


def tiny_run(settings, task: str, results: Path, extra: list[str] = ()) -> list[str]:
    args = ["run", "--algo", "dpo", "--task", task, "--results", str(results)]
    for key, value in settings[task].items():
        args += ["--set", f"task.{key}={value}"]
    for item in ["train.max_steps=2", "train.batch_size=4", "eval.max_new_tokens=8", *extra]:
        args += ["--set", item]
    return args


@pytest.mark.parametrize("task", ["hh", "truthy"])
def test_cli_sft_and_dpo_runs_judged_against_the_chosen_responses(task, settings, cache, tmp_path):
    sft = tiny_run(settings, task, tmp_path / "sft")
    sft[sft.index("dpo")] = "sft"
    fresh = tmp_path / "cache"  # hh: the first run builds the preferred-FT policy, the second finds it
    out = run_cli(sft, fresh)
    assert out.returncode == 0, out.stderr
    config, metrics, samples = read_run(tmp_path / "sft")
    cls = HH if task == "hh" else Truthy
    expected = make_task(cls, settings, cache).eval_prompts()
    assert config["task"]["name"] == task and [s["prompt"] for s in samples] == [r["prompt"] for r in expected]
    # >= 0 up to float32 rounding: truthy's two steps at lr 5e-7 leave the policy within noise of the reference.
    assert metrics["n_prompts"] == len(expected) and metrics["kl"]["mean"] >= -1e-5

    with StubServer(lambda n, prompt: answer("A", "More helpful")) as server:
        dpo = run_cli(
            tiny_run(settings, task, tmp_path / "dpo", judge_sets(server)), fresh, env_extra={"OPENAI_API_KEY": API_KEY}
        )
        asked = [r["body"]["messages"][-1]["content"] for r in server.chat_requests]
    assert dpo.returncode == 0, dpo.stderr
    config, metrics, samples = read_run(tmp_path / "dpo")
    check_judged(metrics, samples, len(expected), "dialogue")
    # The judge reads the user's question alone: no "Human:"/"Assistant:" markers, no chat template.
    references = {r["query"]: r["reference"] for r in expected}
    assert len(asked) == 2 * len(expected)  # both orders
    for text in asked:
        assert "more helpful" in text
        query = text.split("Query: ", 1)[1].split("\n\nResponse A:", 1)[0]
        assert references[query] in shown(text)  # the baseline is that prompt's chosen response
        assert "Human:" not in query and "Assistant:" not in query and "Instruct:" not in query
    if task == "hh":
        assert config["algo"]["beta"] == 0.1 and config["train"]["max_length"] == 512
        # The first run fine-tuned the starting policy; the second found it cached.
        assert "preferred-FT of" in out.stderr and "preferred-FT of" not in dpo.stderr
    else:
        assert config["algo"]["beta"] == 0.2 and config["train"]["lora_r"] == 16 and config["train"]["lr"] == 5e-7
        (run,) = [p for p in (tmp_path / "dpo").iterdir() if p.is_dir() and not p.name.startswith(".")]
        assert (run / "model" / "adapter_config.json").exists()


@pytest.mark.parametrize("task,model", [("hh", "EleutherAI/pythia-2.8b"), ("truthy", "microsoft/phi-2")])
def test_cli_unreachable_hub_is_one_line(task, model, cache, tmp_path):
    env = {"HF_ENDPOINT": UNREACHABLE, "HF_HUB_OFFLINE": "", "HF_DATASETS_OFFLINE": "", "TRANSFORMERS_OFFLINE": ""}
    out = run_cli(
        ["run", "--algo", "dpo", "--task", task, "--results", str(tmp_path / "results")], cache, env_extra=env
    )
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert (
        "unreachable" in lines[0] and "task.model" in lines[0] and model in lines[0] and "HF_HUB_OFFLINE=1" in lines[0]
    )
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").rglob("*"))
