"""The plugin contracts (task, algorithm, evaluator), the Policy an algorithm returns, and what the harness hands them.

A plugin is a class with the attributes and methods below, registered under an entry point
(`bench.tasks`, `bench.algorithms`, `bench.evaluators`) whose name equals the class's `name`
(bench.registry refuses a mismatch: run records are named by `name`). Nothing needs subclassing.
Each `Config` is a dataclass whose every field has a default and a docstring under it: `--set
SECTION.KEY=VALUE` reaches the field, and the docstring is its help text in `bench list -v`.

Task (constructed as `Task(config, cache_dir)`):
    name, description, Config (dataclass of options, `--set task.KEY=VALUE`)
    build() -> None                    build and cache artifacts (idempotent)
    load_policy() -> (model, tokenizer) a fresh copy of the starting (SFT) policy
    reference_key: str                 identifies the starting policy's weights (for caches)
    sft_data() -> [{"prompt", "completion"}]
    preference_data(split) -> [{"prompt", "chosen", "rejected"}]   split: "train" or "test"
    eval_prompts() -> [{"prompt", "reference"?, "query"?}]   all of them: eval.max_prompts limits them
                                                              (query: what a judge reads instead of the prompt)
    optional: OPTIONAL["task"] (generation, gold_reward, judge_prompt, run_defaults, eval_only, train_task, config,
              eos_after_completion)

Algorithm (constructed as `Algorithm(config=Config(...))`):
    name, description, Config (dataclass, `--set algo.KEY=VALUE` or `--set <name>.KEY=VALUE`)
    fit(ctx: Context) -> Policy
    optional: OPTIONAL["algorithm"] (train_defaults, uses_preferences, implicit_reward)

Evaluator (constructed as `Evaluator(config)`, or `Evaluator()` when it has no Config):
    name, description
    evaluate(samples: list[Sample], ctx: Context) -> Evaluation
    optional: OPTIONAL["evaluator"] (Config, higher_is_better, enabled, applies, preflight, at_checkpoints)

Policy (what fit returns; see `Policy`):
    sample(prompts, generation, seed) -> list[Sample]
    optional: OPTIONAL["policy"] (model, save, kl_bound, fit_metrics, frontier_points)

The harness reads every optional attribute through `optional(obj, kind, name)`, which returns
the default written in OPTIONAL when the plugin leaves the attribute out (or sets it to None).

Helpers a plugin may call, importable from here: `fit_on_pairs(ctx, loss)` trains ctx.policy
on ctx.preferences with a pairwise loss (`PairLoss`, which receives a `PairForward`) and
returns a Policy; an online algorithm hands its step (rollout -> score -> update) to
`bench.train.train_online`; `fit_on_demonstrations(ctx, examples)` is maximum likelihood on
{"prompt", "completion"} rows; `UserError` is the error a user can fix: the CLI prints its
message as one line and exits with status 2, with no traceback and nothing half-written.
"""

from __future__ import annotations

import abc
import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypedDict

from bench.checks import at_least, between, non_negative
from bench.errors import UserError

if TYPE_CHECKING:
    import torch

    from bench.preference import fit_on_demonstrations, fit_on_pairs

__all__ = [
    "OPTIONAL",
    "Attribute",
    "Context",
    "Evaluation",
    "Generation",
    "ImplicitReward",
    "PairForward",
    "PairLoss",
    "Policy",
    "Sample",
    "UserError",
    "dpo_implicit_reward",
    "fit_on_demonstrations",
    "fit_on_pairs",
    "optional",
]


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


class Policy(abc.ABC):
    """What an algorithm's fit(ctx) returns: it samples evaluation completions.

    Subclassing is a convenience, not a requirement: any object with `sample` is a Policy, and
    the harness reads the optional attributes below through `optional(policy, "policy", NAME)`:
        model        the torch model whose log-probs evaluators score (KL, pair accuracy); absent
                     for a Policy that is not a model (best-of-N), which must then not have one
        save(path)   writes the policy under the run directory (run.save_model); absent: nothing saved
        kl_bound()   an analytic KL to the reference, reported where there is no model to score
        fit_metrics  aggregates measured while fitting, {"mean", "se", "n", ...} each (e.g. a reward
                     model's held-out accuracy); the runner adds them to metrics.json
    """

    def __init__(self, fit_metrics: dict[str, dict] | None = None):
        self.fit_metrics: dict[str, dict] = dict(fit_metrics or {})

    @abc.abstractmethod
    def sample(self, prompts: list[str], generation: Generation, seed: int) -> list[Sample]:
        """`generation.samples_per_prompt` completions of every prompt, grouped by prompt, in prompt order."""


class PairForward(TypedDict):
    """What a pairwise loss receives from one concatenated chosen+rejected forward pass (B pairs).

    The chosen and rejected rows share one padded width T (prompt + completion tokens of the
    longest row); column t of a per-token tensor scores token t+1 given tokens <= t.
    """

    chosen_logps: torch.Tensor
    """[B] log pi(chosen | prompt): the sum of the completion's token log-probs (prompt masked out)."""
    rejected_logps: torch.Tensor
    """[B] the same for the rejected completion."""
    chosen_token_logps: torch.Tensor
    """[B, T-1] log-prob of each realised next token of the chosen row; 0 off the completion."""
    chosen_mask: torch.Tensor
    """[B, T-1] 1 where that token belongs to the chosen completion, 0 on prompt and padding (long)."""
    rejected_token_logps: torch.Tensor
    """[B, T-1] the same for the rejected row."""
    rejected_mask: torch.Tensor
    """[B, T-1] the same for the rejected row."""


PairLoss = Callable[
    ["PairForward", "torch.Tensor | None", "torch.Tensor | None"], "tuple[torch.Tensor, dict[str, Any]]"
]
"""`loss(out, ref_chosen_logps, ref_rejected_logps) -> (loss, metrics)`, what fit_on_pairs trains with.

`out` is a PairForward of the policy; the reference log-probs are [B] tensors of the frozen
reference (computed once per data set and cached), or None with `fit_on_pairs(...,
needs_reference=False)`. `loss` is the scalar to minimise; `metrics` (tensors or floats, TRL's
names such as "rewards/margins") are averaged over each log window into train_log.jsonl.
"""

ImplicitReward = Callable[["torch.Tensor", "torch.Tensor", "torch.Tensor"], "torch.Tensor"]
"""`implicit_reward(logps, ref_logps, n_tokens) -> rewards`, each [N]: how an algorithm's policy scores completions.

logps are log pi(y|x) of the trained policy and ref_logps those of the reference (sums over
completion tokens), n_tokens the completions' token counts. Pair accuracy counts the held-out
pairs whose chosen completion gets the higher reward.
"""


def dpo_implicit_reward(logps: torch.Tensor, ref_logps: torch.Tensor, n_tokens: torch.Tensor) -> torch.Tensor:
    """DPO's implicit reward log pi(y|x) - log pi_ref(y|x), the default ImplicitReward (beta is taken as 1:
    a positive scale changes no ranking)."""
    return logps - ref_logps


def _applies_always(ctx: Context) -> bool:
    return True


def _no_preflight() -> None:
    return None


def _enabled_always() -> bool:
    return True


@dataclass(frozen=True)
class Attribute:
    """An optional attribute of a plugin or Policy: what the harness uses when it is absent or None, and its meaning."""

    default: Any
    doc: str


OPTIONAL: dict[str, dict[str, Attribute]] = {
    "task": {
        "description": Attribute("", "one line for `bench list`; empty: the first line of the class docstring"),
        "generation": Attribute(
            Generation(), "Generation: the task's defaults for evaluation sampling (eval.*), e.g. max_prompts=256"
        ),
        "gold_reward": Attribute(
            None, "callable(prompts, completions) -> list[float], the ground-truth reward; None: the task has none"
        ),
        "judge_prompt": Attribute(None, "name of the judge prompt (bench/judge_prompts) for its completions"),
        "run_defaults": Attribute(
            {}, '{"SECTION.KEY": value}: defaults of runs on the task, below --set (sections train, eval, <algorithm>)'
        ),
        "eval_only": Attribute(False, "True: the task only evaluates (--eval-task); training on it is an error"),
        "train_task": Attribute(None, "for an eval_only task: the task to train on, named in that error"),
        "config": Attribute(None, "the Config the task runs with, recorded in config.json; None: the one it was given"),
        "eos_after_completion": Attribute(
            False,
            "True: each completion is a whole response (a summary, an answer), so training and pair accuracy append "
            "the tokenizer's eos to it and the policy learns to stop; False: text cut mid-stream (review windows)",
        ),
    },
    "algorithm": {
        "description": Attribute("", "one line for `bench list`; empty: the first line of the class docstring"),
        "train_defaults": Attribute(
            {}, "{TrainConfig field: value}: this algorithm's train.* defaults, e.g. {'lr': 1e-4}; --set overrides them"
        ),
        "uses_preferences": Attribute(
            True,
            "whether it learns from preference labels (counted as the run's cost); the runner reads it from the "
            "configured instance, which may set its own (an online method on the gold reward uses none)",
        ),
        "implicit_reward": Attribute(
            dpo_implicit_reward, "method (logps, ref_logps, n_tokens) -> rewards [N] that pair accuracy ranks pairs by"
        ),
    },
    "evaluator": {
        "description": Attribute("", "one line for `bench list`; empty: the first line of the class docstring"),
        "Config": Attribute(None, "dataclass of options (`--set NAME.KEY=VALUE`); None: no options"),
        "higher_is_better": Attribute(None, "direction of its metrics, recorded beside them; None: neither"),
        "enabled": Attribute(
            _enabled_always,
            "method () -> bool: whether its options turn it on at all (a judge with no model: False); a disabled "
            "evaluator never runs and its options stay out of the run's record and id",
        ),
        "applies": Attribute(_applies_always, "method (ctx) -> bool: whether it runs on this run (default: always)"),
        "preflight": Attribute(_no_preflight, "method () -> None: check settings and services before training starts"),
        "at_checkpoints": Attribute(True, "False: evaluate the final policy only (e.g. a paid judge)"),
    },
    "policy": {
        "model": Attribute(None, "the torch model evaluators score log-probs of; None: not a model (best-of-N)"),
        "save": Attribute(None, "method (path) -> None writing the policy under the run (run.save_model)"),
        "kl_bound": Attribute(None, "method () -> float: an analytic KL to the reference, for a Policy with no model"),
        "fit_metrics": Attribute({}, "{metric: aggregate} measured while fitting, added to metrics.json"),
        "frontier_points": Attribute(
            None,
            "method () -> [(step, total_steps, Policy)]: more policies the final one's samples give, evaluated as "
            "frontier points after it (best-of-N's smaller N)",
        ),
    },
}
"""Every optional attribute the harness reads, by kind, with its default: the one place they are written."""


def optional(obj: Any, kind: str, name: str) -> Any:
    """`obj.name`, or the default OPTIONAL[kind][name] declares when obj leaves it out or sets it to None.

    Defaults are copies, so a caller may change what it gets. Reading a name OPTIONAL does not
    declare is a KeyError: the harness reads nothing the contract does not list.
    """
    attribute = OPTIONAL[kind][name]
    value = getattr(obj, name, None)
    if value is not None:
        return value
    return attribute.default if callable(attribute.default) else copy.deepcopy(attribute.default)


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
    trained: Policy | Any = None
    """The Policy that fit() returned (set before evaluators run)."""
    generation: Generation | None = None
    on_step: Callable[[int, int, Any], None] | None = None
    """Pass to bench.train.train_loop or train_online (on_step=...): the harness evaluates intermediate checkpoints."""
    eval_task: Any = None
    """The task whose prompts are evaluated when it is not `task` (--eval-task): judges take its prompt and rows."""
    implicit_reward: ImplicitReward = dpo_implicit_reward
    """The run's algorithm's implicit reward (OPTIONAL["algorithm"]["implicit_reward"]), ranked by pair accuracy."""


def __getattr__(name: str) -> Any:
    # The fitting helpers need torch and the training loop, which import this module: load them on first use.
    if name in ("fit_on_pairs", "fit_on_demonstrations"):
        from bench import preference

        return getattr(preference, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
