"""Every registered plugin through its contract; every algorithm through a whole run on the tiny task."""
from __future__ import annotations

import dataclasses
import json

import pytest

from bench import registry
from bench.config import apply_overrides, field_docs
from bench.data import PREFERENCE_KEYS, PROMPT_KEYS, SFT_KEYS, validate
from bench.runner import RunSpec, execute
from bench.train import TrainConfig

# How each task is exercised in tests (small, offline). A new task adds its line here.
TASK_TEST_SETTINGS = {"sentiment": {"scale": "tiny"}}


def _check_config(cls):
    assert dataclasses.is_dataclass(cls.Config)
    cls.Config()  # every field has a default
    docs = field_docs(cls.Config)
    undocumented = [f.name for f in dataclasses.fields(cls.Config) if not docs.get(f.name)]
    assert not undocumented, f"{cls.name}: fields without a docstring: {undocumented}"


@pytest.mark.parametrize("name", registry.names("algorithm"))
def test_algorithm_contract(name):
    cls = registry.load("algorithm", name)
    assert cls.name == name and cls.description.strip()
    _check_config(cls)
    assert set(getattr(cls, "train_defaults", {})) <= {f.name for f in dataclasses.fields(TrainConfig)}
    assert callable(getattr(cls(config=cls.Config()), "fit"))


@pytest.mark.parametrize("name", registry.names("task"))
def test_task_contract(name, cache_dir):
    cls = registry.load("task", name)
    assert cls.name == name and cls.description.strip()
    _check_config(cls)
    task = cls(apply_overrides(cls.Config(), TASK_TEST_SETTINGS[name], "task"), cache_dir)
    task.build()
    validate(task.preference_data("train"), PREFERENCE_KEYS, "train pairs")
    validate(task.preference_data("test"), PREFERENCE_KEYS, "test pairs")
    validate(task.sft_data(), SFT_KEYS, "sft")
    prompts = validate(task.eval_prompts(), PROMPT_KEYS, "eval prompts")
    assert prompts and isinstance(task.reference_key, str) and task.reference_key
    model, tok = task.load_policy()
    assert tok.pad_token_id is not None and model.config.vocab_size >= tok.pad_token_id
    if task.gold_reward is not None:
        scores = task.gold_reward([p["prompt"] for p in prompts[:3]], [" good", " bad", " fine"][: len(prompts[:3])])
        assert len(scores) == len(prompts[:3])


@pytest.mark.parametrize("name", registry.names("evaluator"))
def test_evaluator_contract(name):
    cls = registry.load("evaluator", name)
    assert cls.name == name and cls.description.strip()
    assert cls.higher_is_better in (True, False, None)
    if hasattr(cls, "Config"):
        _check_config(cls)


@pytest.mark.parametrize("name", registry.names("algorithm"))
def test_every_algorithm_runs_end_to_end(name, cache_dir, tmp_path):
    run_dir = execute(RunSpec(algo=name, task="sentiment", seed=0, sets=[f"task.{k}={v}" for k, v in TASK_TEST_SETTINGS["sentiment"].items()]),
                      results=tmp_path, cache_dir=cache_dir, echo=lambda _: None)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"gold_reward", "kl", "length"} <= set(metrics)
    assert metrics["kl"]["mean"] >= 0
    log = (run_dir / "train_log.jsonl").read_text().splitlines()
    assert log and "loss" in json.loads(log[-1])
