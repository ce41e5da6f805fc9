"""Config resolution: --set parsing, typing, unknown keys, run ids."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from bench import config as cfg
from bench.checks import comma_list
from bench.errors import UserError
from bench.runner import RunSpec, resolve


@dataclass
class Example:
    beta: float = 0.1
    """Strength of the KL penalty."""
    steps: int = 3
    flag: bool = False
    name: str = "x"
    maybe: float | None = None


def test_overrides_are_typed():
    out = cfg.apply_overrides(
        Example(), {"beta": "0.5", "steps": "7", "flag": "yes", "name": "y", "maybe": "none"}, "algo"
    )
    assert out == Example(beta=0.5, steps=7, flag=True, name="y", maybe=None)
    assert cfg.apply_overrides(Example(), {"maybe": "2"}, "algo").maybe == 2.0


@pytest.mark.parametrize(
    "key,value,fragment",
    [
        ("beta", "abc", "expected a float"),
        ("steps", "1.5", "expected an integer"),
        ("steps", "9007199254740993", r"algo.steps=9007199254740993: out of range"),
        ("flag", "maybe", "expected true or false"),
        ("beta", "nan", "algo.beta=nan: expected a finite number"),
        ("beta", "-inf", "algo.beta=-inf: expected a finite number"),
        ("gamma", "1", "unknown key"),
    ],
)
def test_bad_overrides_name_the_problem(key, value, fragment):
    with pytest.raises(UserError, match=fragment) as exc:
        cfg.apply_overrides(Example(), {key: value}, "algo")
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("item", ["beta=1", "dpo.beta", ".beta=1", "dpo.=1"])
def test_malformed_set_items(item):
    with pytest.raises(UserError, match="SECTION.KEY=VALUE"):
        cfg.split_sets([item])


@pytest.mark.parametrize(
    "text, items", [("dpo,sft", ["dpo", "sft"]), (" dpo , sft ,", ["dpo", "sft"]), (",, ,", []), ("", []), ("a", ["a"])]
)
def test_comma_list_strips_items_and_drops_blanks(text, items):
    assert comma_list(text) == items


def test_field_docs_are_read_from_source():
    assert cfg.field_docs(Example)["beta"] == "Strength of the KL penalty."


def test_resolution_is_deterministic_and_seed_changes_the_id(tmp_path):
    a = resolve(RunSpec("dpo", "sentiment", 0, ["dpo.beta=0.5", "task.scale=tiny"]), tmp_path)
    b = resolve(RunSpec("dpo", "sentiment", 0, ["algo.beta=0.5", "task.scale=tiny"]), tmp_path)
    c = resolve(RunSpec("dpo", "sentiment", 1, ["dpo.beta=0.5", "task.scale=tiny"]), tmp_path)
    assert a.record["algo"]["beta"] == 0.5
    assert a.run_id == b.run_id != c.run_id
    assert a.name.startswith("sentiment-dpo-")


def test_options_of_a_disabled_evaluator_leave_the_record_and_the_id_alone(tmp_path):
    base = ["task.scale=tiny"]
    plain = resolve(RunSpec("dpo", "sentiment", 0, base), tmp_path)
    off = resolve(RunSpec("dpo", "sentiment", 0, [*base, "judge.both_orders=false", "fluency.batch_size=4"]), tmp_path)
    on = resolve(RunSpec("dpo", "sentiment", 0, [*base, "judge.model=oracle"]), tmp_path)
    other = resolve(RunSpec("dpo", "sentiment", 0, [*base, "judge.model=oracle", "judge.both_orders=false"]), tmp_path)
    assert "judge" not in plain.record["evaluators"] and "fluency" not in plain.record["evaluators"]
    assert "judge" not in [e.name for e, _ in plain.evaluators]
    assert plain.run_id == off.run_id
    assert on.record["evaluators"]["judge"]["model"] == "oracle" and "judge" in [e.name for e, _ in on.evaluators]
    assert len({plain.run_id, on.run_id, other.run_id}) == 3


def test_algorithm_train_defaults_apply_and_can_be_overridden(tmp_path):
    from bench import registry

    algo = registry.load("algorithm", "dpo")
    r = resolve(RunSpec("dpo", "sentiment", 0, ["task.scale=tiny"]), tmp_path)
    for key, value in getattr(algo, "train_defaults", {}).items():
        assert r.record["train"][key] == value
    r = resolve(RunSpec("dpo", "sentiment", 0, ["task.scale=tiny", "train.lr=3e-5"]), tmp_path)
    assert r.record["train"]["lr"] == 3e-5


@pytest.mark.parametrize(
    "sets,fragment",
    [
        (["nosuch.key=1"], "unknown section"),
        (["train.lr=-1"], r"train.lr=-1: must be > 0"),
        (["eval.samples_per_prompt=0"], "at least 1"),
        (["train.optimizer=sgd"], "adamw or rmsprop"),
        (["algo.beta=1", "dpo.beta=2"], "both given"),
        (["data.preferences=/no/such/file.jsonl"], "no such file"),
    ],
)
def test_resolve_rejects_bad_settings(tmp_path, sets, fragment):
    spec = RunSpec("dpo", "sentiment", 0, ["task.scale=tiny", *sets])
    with pytest.raises(UserError, match=fragment):
        resolve(spec, tmp_path)


def test_unknown_plugins(tmp_path):
    with pytest.raises(UserError, match="unknown algorithm 'nope'.*dpo"):
        resolve(RunSpec("nope", "sentiment"), tmp_path)
    with pytest.raises(UserError, match="unknown task 'nope'.*sentiment"):
        resolve(RunSpec("dpo", "nope"), tmp_path)


def test_task_max_prompts_names_eval_max_prompts(tmp_path):
    """One knob limits the evaluation prompts: task.max_prompts (or eval_task.max_prompts) says where it went."""
    with pytest.raises(UserError) as exc:
        resolve(RunSpec("dpo", "tldr", 0, ["task.max_prompts=4"]), tmp_path)
    assert (
        str(exc.value)
        == "--set task.max_prompts=4: task.max_prompts is now eval.max_prompts; use --set eval.max_prompts=4"
    )
    with pytest.raises(UserError, match=r"eval_task.max_prompts=8: .* use --set eval.max_prompts=8$"):
        resolve(RunSpec("dpo", "tldr", 0, ["run.eval_task=cnn-dm", "eval_task.max_prompts=8"]), tmp_path)
    # The task's default lives in its generation settings, where eval.max_prompts overrides it.
    assert resolve(RunSpec("dpo", "tldr", 0, []), tmp_path).generation.max_prompts == 256
    assert resolve(RunSpec("dpo", "tldr", 0, ["eval.max_prompts=4"]), tmp_path).record["eval"]["max_prompts"] == 4
