"""The three plugin contracts (task, algorithm, evaluator) and the objects the harness hands them.

Plugins implement these shapes; nothing here needs subclassing. A plugin is a class with the
attributes and methods below, registered under an entry point (`bench.tasks`,
`bench.algorithms`, `bench.evaluators`).

Task (constructed as `Task(config, cache_dir)`):
    name, description, Config (dataclass of options, `--set task.KEY=VALUE`)
    generation: Generation             defaults for evaluation sampling
    build() -> None                    build and cache artifacts (idempotent)
    load_policy() -> (model, tokenizer) a fresh copy of the starting (SFT) policy
    reference_key: str                 identifies the starting policy's weights (for caches)
    sft_data() -> [{"prompt", "completion"}]
    preference_data(split) -> [{"prompt", "chosen", "rejected"}]   split: "train" or "test"
    eval_prompts() -> [{"prompt", "reference"?, "query"?}]   query: what a judge reads instead of the prompt
    gold_reward: callable(prompts, completions) -> list[float], or None
    judge_prompt: str or None

Algorithm (constructed as `Algorithm(config=Config(...))`):
    name, description, Config (dataclass, `--set algo.KEY=VALUE` or `--set <name>.KEY=VALUE`)
    train_defaults: dict               overrides of TrainConfig defaults for this algorithm
    uses_preferences: bool             optional (default True): whether it consumes preference labels (cost)
    fit(ctx: Context) -> Policy

Evaluator (constructed as `Evaluator(config)`):
    name, description, Config, higher_is_better: bool
    applies(ctx) -> bool               e.g. gold reward only where the task has one
    preflight() -> None                optional: check settings and services before training starts
    evaluate(samples: list[Sample], ctx: Context) -> Evaluation
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from bench.checks import at_least, between, non_negative


@dataclass
class Generation:
    """How evaluation completions are sampled (`--set eval.KEY=VALUE` overrides a task's defaults)."""

    max_new_tokens: int = 48
    """Completion length limit in tokens."""
    temperature: float = 1.0
    """Sampling temperature; 0 means greedy."""
    top_p: float = 1.0
    """Nucleus sampling mass; 1 disables it."""
    samples_per_prompt: int = 4
    """Completions per evaluation prompt (their mean is one observation per prompt)."""
    max_prompts: int = 0
    """Use only the first N evaluation prompts; 0 uses all."""
    batch_size: int = 64
    """Prompts per sampling batch."""

    def check(self, section: str = "eval") -> None:
        """One line naming the first setting out of range (bench.config.apply_overrides calls it for every run).

        Whether max_new_tokens fits the policy's context is checked once the model is loaded, by
        bench.runner.check_context.
        """
        at_least(self, section, "max_new_tokens", 1)
        non_negative(self, section, "temperature", "0 is greedy")
        between(self, section, "top_p", 0, 1, "(]", "1 disables nucleus sampling")
        at_least(self, section, "samples_per_prompt", 1)
        non_negative(self, section, "max_prompts", "0 uses all")
        at_least(self, section, "batch_size", 1)


@dataclass
class Sample:
    """One evaluation completion with its token ids, so evaluators score exactly what was sampled."""

    prompt_index: int
    prompt: str
    completion: str
    prompt_ids: list[int]
    completion_ids: list[int]
    values: dict[str, float] = field(default_factory=dict)


@dataclass
class Evaluation:
    """An evaluator's output: per-sample values (keyed by metric) and aggregate metrics.

    Each aggregate is {"mean", "se", "n"} (n = independent units, usually prompts) plus any
    extra keys such as {"estimator": "analytic bound"}.
    """

    per_sample: dict[str, list[float]] = field(default_factory=dict)
    aggregates: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class Context:
    """What the harness gives an algorithm's fit() and an evaluator's evaluate()."""

    task: Any
    policy: Any
    """The model to train (a fresh copy of the task's starting policy)."""
    tokenizer: Any
    reference: Any
    """Frozen reference model (the starting policy), in eval mode with gradients off."""
    train: Any
    """Resolved bench.train.TrainConfig."""
    seed: int
    log: Callable[[dict], None]
    """Writes one row to train_log.jsonl."""
    checkpoint_dir: Path
    cache_dir: Path
    sft_examples: list[dict]
    preferences: list[dict]
    """Training pairs (validated)."""
    test_preferences: list[dict]
    """Held-out pairs (validated)."""
    eval_prompts: list[dict] = field(default_factory=list)
    """The evaluation prompt rows the policy is sampled on ({"prompt", "reference"?}), after eval.max_prompts."""
    reward: Callable[[list[str], list[str]], list[float]] | None = None
    """Gold reward where the task has one; learned rewards come with later algorithms."""
    trained: Any = None
    """The Policy that fit() returned (set before evaluators run)."""
    generation: Generation | None = None
    on_step: Callable[[int, int, Any], None] | None = None
    """Pass to bench.train.train_loop(on_step=...): the harness evaluates intermediate checkpoints."""
    eval_task: Any = None
    """The task whose prompts are evaluated when it is not `task` (--eval-task): judges take its prompt and rows."""
