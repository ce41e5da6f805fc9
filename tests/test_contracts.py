"""Every registered plugin through its contract; every algorithm through a whole run on the tiny task."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from bench.evaluators.judge import load_template

from bench import registry
from bench.config import apply_overrides, field_docs
from bench.contracts import Generation
from bench.data import PREFERENCE_KEYS, PROMPT_KEYS, SFT_KEYS, validate
from bench.errors import UserError
from bench.runner import RunSpec, execute
from bench.train import TrainConfig

TINY_SENTIMENT = ["task.scale=tiny"]


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
def test_task_contract(name, task_settings, cache_dir):
    cls = registry.load("task", name)
    assert cls.name == name and cls.description.strip()
    _check_config(cls)
    assert {f.name for f in dataclasses.fields(cls.Config)} >= {"model", "max_prompts"} or getattr(
        cls, "eval_only", False
    ), f"{name}: every task takes task.model and task.max_prompts"
    task = cls(apply_overrides(cls.Config(), task_settings[name], "task"), cache_dir)
    task.build()
    prompts = validate(task.eval_prompts(), PROMPT_KEYS, "eval prompts")
    assert prompts and isinstance(task.reference_key, str) and task.reference_key
    if getattr(task, "judge_prompt", None):
        load_template(task.judge_prompt)  # names a prompt that exists
    if task.gold_reward is not None:
        scores = task.gold_reward([p["prompt"] for p in prompts[:3]], [" good", " bad", " fine"][: len(prompts[:3])])
        assert len(scores) == len(prompts[:3]) and all(0 <= s <= 1 for s in scores)
    if getattr(cls, "eval_only", False):
        for method in (task.load_policy, task.sft_data, lambda: task.preference_data("train")):
            with pytest.raises(UserError, match="--eval-task"):
                method()
        return
    validate(task.preference_data("train"), PREFERENCE_KEYS, "train pairs")
    validate(task.preference_data("test"), PREFERENCE_KEYS, "test pairs")
    validate(task.sft_data(), SFT_KEYS, "sft")
    model, tok = task.load_policy()
    assert tok.pad_token_id is not None and tok.eos_token_id is not None and model.config.vocab_size >= tok.pad_token_id
    assert not model.training
    for key, value in (getattr(cls, "run_defaults", None) or {}).items():
        section, _, field = key.partition(".")
        owner = (
            TrainConfig
            if section == "train"
            else Generation
            if section == "eval"
            else registry.load("algorithm", section).Config
        )
        assert field in {f.name for f in dataclasses.fields(owner)}, f"{name}: run_defaults key {key} names no setting"


@pytest.mark.parametrize("name", registry.names("evaluator"))
def test_evaluator_contract(name):
    cls = registry.load("evaluator", name)
    assert cls.name == name and cls.description.strip()
    assert cls.higher_is_better in (True, False, None)
    if hasattr(cls, "Config"):
        _check_config(cls)


@pytest.mark.parametrize("name", registry.names("algorithm"))
def test_every_algorithm_runs_end_to_end(name, cache_dir, tmp_path):
    run_dir = execute(
        RunSpec(algo=name, task="sentiment", seed=0, sets=TINY_SENTIMENT),
        results=tmp_path,
        cache_dir=cache_dir,
        echo=lambda _: None,
    )
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"gold_reward", "kl", "length"} <= set(metrics)
    assert metrics["kl"]["mean"] >= 0
    log = (run_dir / "train_log.jsonl").read_text().splitlines()
    assert log and "loss" in json.loads(log[-1])


@pytest.mark.parametrize("name", [n for n in registry.names("algorithm") if n != "best-of-n"])
def test_every_trained_algorithm_with_lora(name, cache_dir, tmp_path):
    """--set train.lora_r=N: only the adapter trains; the base weights stay those of the reference."""
    sets = TINY_SENTIMENT + [
        "train.lora_r=4",
        "train.max_steps=3",
        "train.batch_size=4",
        "eval.samples_per_prompt=1",
        "eval.max_prompts=4",
        "run.evaluators=kl",
    ]
    run_dir = execute(
        RunSpec(algo=name, task="sentiment", seed=0, sets=sets),
        results=tmp_path,
        cache_dir=cache_dir,
        echo=lambda _: None,
    )
    config = json.loads((run_dir / "config.json").read_text())["config"]
    assert config["train"]["lora_r"] == 4
    if name == "reward-model":
        return  # returns the untouched starting policy; its own model is the reward model
    from bench.tasks.sentiment import Sentiment
    from peft import AutoPeftModelForCausalLM

    assert (run_dir / "model" / "adapter_config.json").exists() and not (
        run_dir / "model" / "model.safetensors"
    ).exists()
    trained = AutoPeftModelForCausalLM.from_pretrained(run_dir / "model")
    base, _ = Sentiment(apply_overrides(Sentiment.Config(), {"scale": "tiny"}, "task"), cache_dir).load_policy()
    lora = {k: v for k, v in trained.state_dict().items() if "lora_B" in k}
    assert lora and any(v.abs().sum() > 0 for v in lora.values()), "the adapter did not train"
    frozen = {
        k.replace("base_model.model.", "").replace(".base_layer", ""): v
        for k, v in trained.state_dict().items()
        if "lora_" not in k
    }
    for key, value in base.state_dict().items():
        if key in frozen:
            assert torch.equal(frozen[key], value), f"base weight {key} changed under LoRA"
