"""What the group-sampling online algorithms (RLOO, GRPO, online DPO) share: rollouts of k completions per prompt.

Every update of such an algorithm samples `k` completions for each of `prompts_per_update` training
prompts from the current policy (bench.sampling.sample, seeded by run seed and update, so a resumed
run repeats its draws), scores each completion with the learned reward model or the task's gold
reward (`reward=model|gold`, as ppo and ppo-gt), and scores their tokens under the policy as it is
(no gradient: the "old" log-probs a clipped ratio compares with) and under the reference. That is a
`Rollout`. The algorithm's own module is its update, `update(rollout, loop, seed) -> metrics`,
usually a loss over minibatches through `loop.minibatch_epochs`; `GroupOnline.fit` is the rest
(checks, reward, prompts, update count) and runs bench.train.train_online, the loop every trained
algorithm shares (checkpoints, resume, log windows, the harness's intermediate evaluations).
The training log counts `sampled_tokens` and `reward_calls`, which the run's cost.json sums.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from bench import seeds
from bench.checks import at_least, non_negative, one_of, positive
from bench.errors import UserError
from bench.logprobs import collate, context_length, pad_id, token_logps
from bench.policy import ModelPolicy
from bench.reward import disable_dropout, learned_reward
from bench.sampling import sample
from bench.train import example_order, train_online

REWARDS = ("model", "gold")


@dataclass
class OnlineConfig:
    """Options every group-sampling online algorithm has (its own Config adds the algorithm's)."""

    reward: str = "model"
    """What scores the samples: model (the learned reward model, as ppo) or gold (the task's gold reward, as ppo-gt)."""
    reward_model: str = ""
    """reward=model only: a saved reward model directory; empty trains one (or reuses the cached one)."""
    k: int = 4
    """Completions sampled per prompt: the group each completion is compared within."""
    prompts_per_update: int = 16
    """Training prompts per update, k completions each."""
    epochs: int = 1
    """Passes over each rollout in minibatches of train.batch_size completions (TRL's num_iterations)."""
    temperature: float = 1.0
    """Sampling temperature of the rollouts (log-probs use the same one)."""
    max_new_tokens: int = 0
    """Completion length of the rollouts; 0 uses the task's evaluation length."""

    def check(self, section: str) -> None:
        one_of(self, section, "reward", REWARDS)
        at_least(self, section, "k", 2, "each completion is compared with the others of its prompt")
        at_least(self, section, "prompts_per_update", 1)
        at_least(self, section, "epochs", 1)
        positive(self, section, "temperature", "rollouts cannot be greedy: their log-probs divide by it")
        non_negative(self, section, "max_new_tokens", "0 uses eval.max_new_tokens")


@dataclass
class Rollout:
    """One update's samples: k consecutive completions per prompt, N = prompts x k rows."""

    prompts: list[int]
    """Index of each completion's prompt in the algorithm's prompt list."""
    completions: list[list[int]]
    """The sampled token ids (up to and with eos)."""
    scores: torch.Tensor
    """[N] the reward of each completion (float32, on the policy's device)."""
    batch: dict
    """collate of prompt + completion (input_ids, attention_mask, completion_mask [N, T]) on the policy's device."""
    mask: torch.Tensor
    """[N, T-1] 1.0 where column t scores a completion token (as token_logps' columns)."""
    old_logps: torch.Tensor
    """[N, T-1] each completion token's log-prob under the policy that sampled it; 0 off the completion."""
    ref_logps: torch.Tensor
    """[N, T-1] the same under the reference."""
    k: int


def training_prompts(ctx) -> list[str]:
    """The distinct prompts of the preference pairs (or, without pairs, of the SFT demonstrations), in order."""
    rows = ctx.preferences or ctx.sft_examples
    return list(dict.fromkeys(row["prompt"] for row in rows))


def rollout_prompts(ctx, name: str, max_new_tokens: int) -> tuple[list[str], list[list[int]], int]:
    """(training prompts, their token ids, new tokens per rollout sample), checked to fit the policy's context.

    max_new_tokens is the algorithm's own option (`name.max_new_tokens`); 0 takes eval.max_new_tokens. Past the
    context a model indexes beyond its position table, so a prompt that leaves too little room is one line here,
    before any reward model is trained, naming the setting to lower.
    """
    prompts = training_prompts(ctx)
    ids = [ctx.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    new = max_new_tokens or ctx.generation.max_new_tokens
    setting = f"{name}.max_new_tokens" if max_new_tokens else "eval.max_new_tokens"
    context, longest = context_length(ctx.policy), max(map(len, ids), default=0)
    if context is not None and longest >= context:
        raise UserError(
            f"{name}: a training prompt is {longest} tokens long and the policy's context {context} tokens; "
            "shorten the prompts of the preference data (data.preferences) so a completion fits after them"
        )
    if context is not None and longest + new > context:
        raise UserError(
            f"--set {setting}={new}: the longest training prompt ({longest} tokens) leaves {context - longest} of "
            f"the policy's {context}-token context for {name}'s samples; use at most {context - longest}"
        )
    return prompts, ids, new


def sample_and_score(ctx, step, rows: list[int], temperature: float, seed: int, device) -> tuple:
    """One rollout's samples: a completion of each of the prompts `rows` (indices, repeats allowed) from the current
    policy, their rewards, and the collated prompt + completion batch on `device`.

    step holds the prompts, their token ids (`rollout_prompts`), max_new_tokens, the pad id and the reward function;
    the draws depend on `seed` only, so a resumed run samples what the uninterrupted one did.
    Returns (completions, scores [len(rows)] float32 on the CPU, batch).
    """
    tok = ctx.tokenizer
    queries = [step.prompt_ids[i] for i in rows]
    completions = sample(
        ctx.policy,
        queries,
        max_new_tokens=step.max_new_tokens,
        temperature=temperature,
        eos_token_id=tok.eos_token_id,
        pad_token_id=step.pad,
        seed=seed,
        batch_size=len(queries),
    )
    texts = tok.batch_decode(completions, skip_special_tokens=True)
    scores = torch.tensor(step.reward([step.prompts[i] for i in rows], texts), dtype=torch.float32)
    encoded = [(q + y, len(q)) for q, y in zip(queries, completions)]
    batch = {k: v.to(device) for k, v in collate(encoded, step.pad).items()}
    return completions, scores, batch


def rollout_reward(ctx, config: OnlineConfig, name: str):
    """(reward function, its fit_metrics): the learned reward model or the task's gold reward."""
    if config.reward == "gold":
        if ctx.reward is None:
            raise UserError(
                f"{name}.reward=gold needs a gold reward and the task {ctx.task.name!r} has none; "
                f"use {name}.reward=model"
            )
        if config.reward_model:
            raise UserError(f"{name}.reward=gold scores with the task's gold reward; drop {name}.reward_model")
        return ctx.reward, None
    reward = learned_reward(ctx, path=config.reward_model)
    return reward, {"reward_model_accuracy": {**reward.accuracy, "path": str(reward.path)}}


def minibatch(rollout: dict, idx: list[int]) -> dict:
    """Rows `idx` of a rollout dict, cut to their longest sequence (right padding beyond it is never computed).

    [N, T] tensors keep `width` columns and [N, T-1] ones `width - 1`; [N] tensors are indexed only.
    """
    input_ids = rollout["input_ids"]
    idx_t = torch.tensor(idx, device=input_ids.device)
    width = int(rollout["attention_mask"][idx_t].sum(-1).max())
    out = {}
    for key, v in rollout.items():
        v = v[idx_t]
        if v.dim() > 1:
            v = v[:, :width] if v.shape[1] == input_ids.shape[1] else v[:, : width - 1]
        out[key] = v
    return out


class GroupOnline:
    """The fit of a group-sampling online algorithm. A subclass sets name, description and Config (an
    OnlineConfig) and defines `update(rollout, loop, seed) -> metrics`."""

    train_defaults = {"lr": 1e-4, "batch_size": 16, "warmup_steps": 0, "log_every": 1, "checkpoint_every": 10}
    uses_preferences = True  # the default reward=model learns from them; an instance says for its own config

    def __init__(self, config=None):
        self.config = config or self.Config()
        self.config.check(self.name)
        self.uses_preferences = self.config.reward == "model"  # with reward=gold no label is used

    def update(self, rollout: Rollout, loop, seed: int) -> dict:
        raise NotImplementedError

    def examples_per_update(self) -> int:
        """What the update's minibatches are drawn from: the rollout's completions (online DPO: its pairs)."""
        return self.config.k * self.config.prompts_per_update

    def fit(self, ctx) -> ModelPolicy:
        c = self.config
        if ctx.train.batch_size > self.examples_per_update():
            raise UserError(
                f"{self.name}: train.batch_size ({ctx.train.batch_size}) is the minibatch and cannot exceed the "
                f"{self.examples_per_update()} examples of one update (raise {self.name}.prompts_per_update)"
            )
        prompts, prompt_ids, max_new_tokens = rollout_prompts(ctx, self.name, c.max_new_tokens)
        if not prompts:
            raise UserError(f"{self.name}: the task has no training prompts (no preference pairs, no demonstrations)")
        reward, fit_metrics = rollout_reward(ctx, c, self.name)
        updates = ctx.train.max_steps or math.ceil(ctx.train.epochs * len(prompts) / c.prompts_per_update)
        disable_dropout(ctx.policy)  # log-probs must be the same function of the weights in rollout and update
        torch.manual_seed(ctx.seed)
        model = train_online(
            ctx.policy,
            _Step(self, ctx, reward, prompts, prompt_ids, max_new_tokens),
            ctx.train,
            updates=updates,
            seed=ctx.seed,
            log=ctx.log,
            checkpoint_dir=ctx.checkpoint_dir,
            desc=self.name,
            on_step=ctx.on_step,
        )
        return ModelPolicy(model, ctx.tokenizer, fit_metrics)


class _Step:
    """bench.train.train_online's step: the rollout, then the algorithm's update."""

    def __init__(self, algo: GroupOnline, ctx, reward, prompts: list[str], prompt_ids, max_new_tokens: int):
        self.algo, self.ctx, self.reward, self.prompts = algo, ctx, reward, prompts
        self.prompt_ids, self.max_new_tokens = prompt_ids, max_new_tokens
        self.pad = pad_id(ctx.tokenizer)

    def rollout(self, update: int, loop) -> Rollout:
        c, ctx = self.algo.config, self.ctx
        start = update * c.prompts_per_update
        picked = example_order(len(self.prompts), ctx.seed, start, c.prompts_per_update)
        rows = [i for i in picked for _ in range(c.k)]
        completions, scores, batch = sample_and_score(
            ctx, self, rows, c.temperature, seeds.stream(ctx.seed, update), loop.device
        )
        with torch.no_grad():
            old_logps, mask = token_logps(loop.model, batch, c.temperature)
            ref_logps, _ = token_logps(ctx.reference, batch, c.temperature)
        return Rollout(rows, completions, scores.to(loop.device), batch, mask.float(), old_logps, ref_logps, c.k)

    def __call__(self, update: int, loop) -> dict:
        r = self.rollout(update, loop)
        metrics = self.algo.update(r, loop, seeds.stream(self.ctx.seed, update))
        sequence_kl = ((r.old_logps - r.ref_logps) * r.mask).sum(-1)
        return {
            **metrics,
            "objective/scores": r.scores.mean().item(),
            "objective/kl": sequence_kl.mean().item(),
            "objective/entropy": -(r.old_logps * r.mask).sum(-1).mean().item(),
            "sampled_tokens": sum(len(y) for y in r.completions),
            "reward_calls": len(r.completions),
            "episodes": len(r.completions),
        }
