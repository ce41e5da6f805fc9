"""Every registered plugin through its contract, its optional attributes included; every algorithm through a whole
run on the tiny task, with the Policy it returns checked; an algorithm's own implicit reward in pair accuracy."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from bench import contracts, registry, runner
from bench.config import apply_overrides, field_docs
from bench.contracts import OPTIONAL, Generation, PairForward, Policy, optional
from bench.data import PREFERENCE_KEYS, PROMPT_KEYS, SFT_KEYS, validate
from bench.errors import UserError
from bench.evaluators.judge import load_template
from bench.runner import RunSpec, execute
from bench.train import TrainConfig

TINY_SENTIMENT = ["task.scale=tiny"]


def _check_config(cls):
    assert dataclasses.is_dataclass(cls.Config)
    cls.Config()  # every field has a default
    docs = field_docs(cls.Config)
    undocumented = [f.name for f in dataclasses.fields(cls.Config) if not docs.get(f.name)]
    assert not undocumented, f"{cls.name}: fields without a docstring: {undocumented}"


def _check_optional(obj, kind: str) -> None:
    """Every optional attribute of `kind` reads (declared or defaulted) as what OPTIONAL says it is."""
    for attr in OPTIONAL[kind]:
        value = optional(obj, kind, attr)
        default = OPTIONAL[kind][attr].default
        if attr in ("description",):
            assert isinstance(value, str)
        elif isinstance(default, bool):
            assert isinstance(value, bool), f"{kind} {attr} must be true or false, not {value!r}"
        elif isinstance(default, dict):
            assert isinstance(value, dict), f"{kind} {attr} must be a dict, not {value!r}"
        elif callable(default):
            assert callable(value), f"{kind} {attr} must be callable"


@pytest.mark.parametrize("name", registry.names("algorithm"))
def test_algorithm_contract(name):
    cls = registry.load("algorithm", name)
    assert cls.name == name and cls.description.strip()
    _check_config(cls)
    _check_optional(cls, "algorithm")
    train_keys = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(optional(cls, "algorithm", "train_defaults")) <= train_keys, f"{name}: train_defaults name no setting"
    algorithm = cls(config=cls.Config())
    assert callable(getattr(algorithm, "fit"))
    # The implicit reward maps [N] log-probs, reference log-probs and token counts to [N] rewards.
    reward = optional(algorithm, "algorithm", "implicit_reward")
    logps, ref, n = torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -4.0]), torch.tensor([2, 4])
    assert reward(logps, ref, n).shape == (2,)


def test_optional_defaults_are_declared_once_and_copied():
    class Bare:
        pass

    assert optional(Bare, "task", "run_defaults") == {} and optional(Bare, "task", "eval_only") is False
    assert optional(Bare, "task", "generation") == Generation()
    assert optional(Bare, "algorithm", "uses_preferences") is True
    assert optional(Bare, "algorithm", "implicit_reward") is contracts.dpo_implicit_reward
    assert optional(Bare, "evaluator", "applies")(None) is True and optional(Bare, "evaluator", "Config") is None
    assert optional(Bare, "policy", "model") is None and optional(Bare, "policy", "save") is None
    optional(Bare, "policy", "fit_metrics")["x"] = 1  # a copy: the default stays empty
    assert optional(Bare, "policy", "fit_metrics") == {}
    with pytest.raises(KeyError):
        optional(Bare, "task", "not_in_the_contract")
    # Every optional attribute is documented where it is declared.
    assert all(a.doc.strip() for kind in OPTIONAL.values() for a in kind.values())


def test_pair_forward_is_what_concatenated_forward_returns():
    from tiny import tiny_gpt2

    from bench.logprobs import collate_pairs, concatenated_forward

    pairs = [
        {"chosen": ([5, 6, 7, 8], 2), "rejected": ([5, 6, 9], 2), "index": 0},
        {"chosen": ([4, 3, 2], 1), "rejected": ([4, 3, 2, 1, 1], 1), "index": 1},
    ]
    batch = collate_pairs(pairs, pad_id=0)
    out = concatenated_forward(tiny_gpt2(), batch)
    assert set(out) == set(PairForward.__annotations__)
    width = batch["input_ids"].shape[1]
    for side in ("chosen", "rejected"):
        assert out[f"{side}_logps"].shape == (2,)
        assert out[f"{side}_token_logps"].shape == out[f"{side}_mask"].shape == (2, width - 1)
        assert torch.allclose(out[f"{side}_logps"], out[f"{side}_token_logps"].sum(-1))
    assert out["chosen_mask"].sum(-1).tolist() == [2, 2] and out["rejected_mask"].sum(-1).tolist() == [1, 4]


@pytest.mark.parametrize("name", registry.names("task"))
def test_task_contract(name, task_settings, cache_dir):
    cls = registry.load("task", name)
    assert cls.name == name and cls.description.strip()
    _check_config(cls)
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    assert "model" in fields or optional(cls, "task", "eval_only"), f"{name}: every task takes task.model"
    # One knob limits the evaluation prompts: eval.max_prompts (a task sets its default in `generation`).
    assert "max_prompts" not in fields, f"{name}: use generation = Generation(max_prompts=...), not task.max_prompts"
    _check_optional(cls, "task")
    assert isinstance(optional(cls, "task", "generation"), Generation)
    if optional(cls, "task", "eval_only"):
        assert optional(cls, "task", "train_task") in registry.names("task"), f"{name}: train_task names no task"
    task = cls(apply_overrides(cls.Config(), task_settings[name], "task"), cache_dir)
    task.build()
    prompts = validate(task.eval_prompts(), PROMPT_KEYS, "eval prompts")
    assert prompts and isinstance(task.reference_key, str) and task.reference_key
    if optional(task, "task", "judge_prompt"):
        load_template(task.judge_prompt)  # names a prompt that exists
    if optional(task, "task", "gold_reward") is not None:
        scores = task.gold_reward([p["prompt"] for p in prompts[:3]], [" good", " bad", " fine"][: len(prompts[:3])])
        assert len(scores) == len(prompts[:3]) and all(0 <= s <= 1 for s in scores)
    if optional(cls, "task", "eval_only"):
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
    for key, value in optional(cls, "task", "run_defaults").items():
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
    assert optional(cls, "evaluator", "higher_is_better") in (True, False, None)
    config_cls = optional(cls, "evaluator", "Config")
    if config_cls is not None:
        _check_config(cls)
    evaluator = cls(config_cls()) if config_cls is not None else cls()
    _check_optional(evaluator, "evaluator")


def _check_policy(policy, name: str) -> None:
    """What the harness reads of a Policy, as OPTIONAL["policy"] declares it."""
    assert callable(getattr(policy, "sample", None)), f"{name}: the Policy cannot sample"
    if type(policy).__module__.startswith("bench."):  # the built-ins implement the base class; others need not
        assert isinstance(policy, Policy), f"{name}: returns a {type(policy).__name__}, not a bench.contracts.Policy"
    _check_optional(policy, "policy")
    for key, aggregate in optional(policy, "policy", "fit_metrics").items():
        assert {"mean", "se", "n"} <= set(aggregate), f"{name}: fit_metrics[{key!r}] is not an aggregate"
    model = optional(policy, "policy", "model")
    if model is None:
        assert float(optional(policy, "policy", "kl_bound")()) >= 0, f"{name}: no model and no kl_bound"
    else:
        assert isinstance(model, torch.nn.Module) and callable(optional(policy, "policy", "save"))


@pytest.mark.parametrize("name", registry.names("algorithm"))
def test_every_algorithm_runs_end_to_end(name, cache_dir, tmp_path, monkeypatch):
    trained = []
    evaluate = runner._evaluate
    monkeypatch.setattr(
        runner,
        "_evaluate",
        lambda ev, samples, ctx, **kw: trained.append(ctx.trained) or evaluate(ev, samples, ctx, **kw),
    )
    run_dir = execute(
        RunSpec(algo=name, task="sentiment", seed=0, sets=TINY_SENTIMENT),
        results=tmp_path,
        cache_dir=cache_dir,
        echo=lambda _: None,
    )
    _check_policy(trained[-1], name)
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
    from peft import AutoPeftModelForCausalLM

    from bench.tasks.sentiment import Sentiment

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


class _Untrained:
    """A fake algorithm that returns the starting policy as it is, optionally with an implicit reward of its own."""

    description = "the starting policy, untouched"
    train_defaults: dict = {}

    @dataclasses.dataclass
    class Config:
        beta: float = 2.0
        """Scale of the implicit reward."""

    def __init__(self, config=None):
        self.config = config or self.Config()

    def fit(self, ctx):
        from bench.policy import ModelPolicy

        return ModelPolicy(ctx.policy, ctx.tokenizer)


class _DefaultReward(_Untrained):
    name = "untrained"


class _SimPOReward(_Untrained):
    """SimPO's reference-free, length-normalised implicit reward beta / |y| * log pi(y|x)."""

    name = "untrained-simpo"

    def implicit_reward(self, logps, ref_logps, n_tokens):
        return self.config.beta * logps / n_tokens.clamp(min=1)


class _ShortReward(_Untrained):
    """Rewards shorter completions: which pairs it ranks correctly follows from the token counts alone."""

    name = "untrained-short"

    def implicit_reward(self, logps, ref_logps, n_tokens):
        return -n_tokens.float()


def test_pair_accuracy_ranks_by_the_algorithms_implicit_reward(cache_dir, tmp_path, monkeypatch):
    from bench.logprobs import dataset_logps, encode

    fakes = {cls.name: cls for cls in (_DefaultReward, _SimPOReward, _ShortReward)}
    load = registry.load
    monkeypatch.setattr(
        registry, "load", lambda kind, n: fakes[n] if kind == "algorithm" and n in fakes else load(kind, n)
    )
    sets = TINY_SENTIMENT + [
        "run.evaluators=pair-accuracy",
        "run.save_model=false",
        "eval.max_prompts=1",
        "eval.samples_per_prompt=1",
    ]

    def accuracy(algo: str) -> float:
        run_dir = execute(
            RunSpec(algo, "sentiment", 0, sets), results=tmp_path, cache_dir=cache_dir, echo=lambda _: None
        )
        return json.loads((run_dir / "metrics.json").read_text())["pair_accuracy"]["mean"]

    def expected(margins: list[float]) -> float:
        return sum(1.0 if m > 0 else 0.5 if m == 0 else 0.0 for m in margins) / len(margins)

    r = runner.resolve(RunSpec("untrained", "sentiment", 0, sets), cache_dir)
    r.task.build()
    pairs = runner.load_data(r, {})["test_preferences"]  # what evaluators see: identical pairs dropped
    model, tok = r.task.load_policy()
    enc = {
        side: [encode(tok, p["prompt"], p[side], r.train.max_length) for p in pairs] for side in ("chosen", "rejected")
    }
    n = {side: torch.tensor([len(ids) - k for ids, k in enc[side]]) for side in enc}
    # The evaluator's batches exactly, so its log-probs and these are the same numbers.
    logps = {side: dataset_logps(model, enc[side], tok.pad_token_id, r.generation.batch_size) for side in enc}

    # DPO's default: the untouched policy equals its reference, so every pair is a tie.
    assert accuracy("untrained") == 0.5
    assert accuracy("untrained-short") == pytest.approx(expected((n["rejected"] - n["chosen"]).tolist()))
    simpo = (logps["chosen"] / n["chosen"] - logps["rejected"] / n["rejected"]).tolist()
    assert accuracy("untrained-simpo") == pytest.approx(expected(simpo))
    assert expected(simpo) != 0.5  # the hook changed the metric, not only its spelling
