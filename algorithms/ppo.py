"""PPO-RLHF (Ziegler et al. 2019; Stiennon et al. 2020), the DPO paper's main baseline, and PPO on the gold reward.

`ppo` maximises the learned reward model's score (bench.reward), `ppo-gt` the task's gold
reward; everything else is one algorithm. Each update:

1. rollout   sample one completion for each of `rollout_batch_size` training prompts from the
             policy (bench.sampling.sample, KV cache);
2. score     the reward rates the full completion; the score is whitened with the first
             rollout's statistics (`whiten_rewards`);
3. rewards   per token r_t = -kl_coef * (log pi(y_t) - log pi_ref(y_t)), plus the score on the
             last token: the RLHF objective E[r] - kl_coef * KL(pi || pi_ref), per token;
4. GAE       advantages from a value head on the policy's last hidden state, A_t by GAE(gamma,
             lam), returns = A + V; advantages whitened over the rollout;
5. optimise  clipped policy loss + vf_coef * clipped value loss, `ppo_epochs` passes over the
             rollout in minibatches of train.batch_size (bench.train.Loop.minibatch_epochs, the
             run's one optimizer and Adam state throughout);
6. control   kl_coef *= 1 + clip(KL / target_kl - 1, -0.2, 0.2) * rollout_batch_size / kl_horizon
             (Ziegler et al.'s adaptive controller).

A run makes train.max_steps updates, or else train.epochs passes over the training prompts (those
of the preference pairs); train.batch_size is the minibatch and train.lr the learning rate of
policy and value head. The training log uses TRL's names: objective/kl (the rollout's sequence
KL, summed sampled log-ratios), objective/scores (raw reward), objective/rlhf_reward (the
per-sequence sum of the rewards PPO maximises), objective/kl_coef, policy/entropy,
policy/clipfrac, policy/approxkl, loss/policy, loss/value, val/clipfrac.

This module is the step (`PPOStep`) and its math; the shared loop (bench.train.train_online) owns
the update count, log windows and on_step, and every `train.checkpoint_every` updates checkpoints
the whole state (weights, value head, Adam, and the step's kl_coef and score statistics); the
same command resumes from it and ends exactly where an uninterrupted run ends.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from bench import seeds
from bench.checks import at_least, between, non_negative, positive
from bench.errors import UserError
from bench.logprobs import (
    MAX_LOGITS,
    chunk_logits,
    chunked_logps_entropy,
    output_vocab,
    pad_id,
    picked_logps_entropy,
    split_head,
    token_logps,
)
from bench.online import minibatch, rollout_prompts, sample_and_score
from bench.policy import ModelPolicy
from bench.reward import disable_dropout, learned_reward
from bench.train import example_order, train_online


@dataclass
class Config:
    target_kl: float = 6.0
    """KL(pi || pi_ref) per completion, in nats, that the adaptive controller steers toward (the paper sweeps 3, 6,
    9, 12)."""
    init_kl_coef: float = 0.1
    """Starting weight of the per-token KL penalty."""
    adaptive_kl: bool = True
    """Adapt the KL weight toward target_kl; false keeps init_kl_coef throughout."""
    kl_horizon: int = 256
    """Controller horizon in episodes: an update moves kl_coef by at most a factor 1 +- 0.2 * rollout_batch_size /
    kl_horizon (Ziegler et al. use 10000 over far longer runs; a few thousand episodes here need a faster
    controller)."""
    rollout_batch_size: int = 64
    """Prompts per rollout, one completion each (TRL's batch_size); minibatches are train.batch_size."""
    ppo_epochs: int = 4
    """Optimisation passes over each rollout."""
    cliprange: float = 0.2
    """Clip range of the policy ratio pi / pi_old."""
    cliprange_value: float = 0.2
    """Clip range of the value prediction around its rollout-time value."""
    vf_coef: float = 0.1
    """Weight of the value loss in the total loss."""
    gamma: float = 1.0
    """Discount factor."""
    lam: float = 0.95
    """GAE lambda."""
    whiten_rewards: bool = True
    """Whiten scores with the mean and std of the first rollout's (the SFT policy's), kept fixed, so kl_coef keeps one
    scale."""
    temperature: float = 1.0
    """Sampling temperature of the rollouts (log-probs use the same one)."""
    max_new_tokens: int = 0
    """Completion length of the rollouts; 0 uses the task's evaluation length."""
    reward_model: str = ""
    """ppo only: a saved reward model directory; empty trains one (or reuses the cached one) with the reward-model
    defaults."""

    def check(self, section: str = "ppo") -> None:
        """One line naming the first option out of range (apply_overrides and the constructor call it)."""
        positive(self, section, "target_kl", "nats per completion; the paper sweeps 3 to 12")
        non_negative(self, section, "init_kl_coef")
        at_least(self, section, "kl_horizon", 1)
        at_least(self, section, "rollout_batch_size", 1)
        at_least(self, section, "ppo_epochs", 1)
        positive(self, section, "cliprange", "e.g. 0.2")
        positive(self, section, "cliprange_value", "e.g. 0.2")
        non_negative(self, section, "vf_coef")
        between(self, section, "gamma", 0, 1, "(]")
        between(self, section, "lam", 0, 1)
        positive(self, section, "temperature", "rollouts cannot be greedy: their log-probs divide by it")
        non_negative(self, section, "max_new_tokens", "0 uses eval.max_new_tokens")


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


def whiten(values: torch.Tensor, mask: torch.Tensor | None = None, shift_mean: bool = True) -> torch.Tensor:
    """(values - mean) / std over the entries where mask is 1 (unbiased variance); shift_mean=False keeps the mean."""
    mask = torch.ones_like(values) if mask is None else mask.to(values.dtype)
    mean = masked_mean(values, mask)
    n = mask.sum()
    var = (((values - mean) ** 2) * mask).sum() / (n - 1).clamp(min=1)
    out = (values - mean) * torch.rsqrt(var + 1e-8)
    return out if shift_mean else out + mean


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float):
    """Generalized advantage estimates and returns, both [B, T], for per-token rewards and values [B, T].

    Entries where mask is 0 count as reward 0 and value 0, so the value after a completion's last
    token is 0 (the episode ends there).
    """
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        next_value = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
    return advantages * mask, (advantages + values) * mask


class AdaptiveKLController:
    """Ziegler et al. (2019): kl_coef *= 1 + clip(kl / target - 1, -0.2, 0.2) * n_episodes / horizon."""

    def __init__(self, kl_coef: float, target: float, horizon: int):
        self.value, self.target, self.horizon = kl_coef, target, horizon

    def update(self, kl: float, n_episodes: int) -> float:
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_episodes / self.horizon
        return self.value


class PolicyWithValue(torch.nn.Module):
    """The policy and a scalar value head on its last hidden state: log-probs, entropies and values from one forward."""

    def __init__(self, policy, temperature: float):
        super().__init__()
        self.policy = policy
        self.value_head = torch.nn.Linear(policy.config.hidden_size, 1)
        self.temperature = temperature

    def forward(self, batch: dict):
        """Per-token log-prob of the realised next token, entropy and value, each [B, T-1] (column t predicts t+1).

        A batch whose [B, T, V] logits fit bench.logprobs.MAX_LOGITS is scored whole. A larger one runs the output
        projection on a bounded number of positions at a time (bench.logprobs.chunked_map), so no [B, T, V] logits
        tensor exists for models that `split_head` splits; others fall back to their full logits.
        """
        fits = batch["input_ids"].numel() * output_vocab(self.policy) <= MAX_LOGITS
        split = split_head(self.policy)
        if split is None:
            out = self.policy(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                use_cache=False,
                output_hidden_states=True,
            )
            hidden, states, head = out.hidden_states[-1][:, :-1], out.logits[:, :-1], None
        else:  # the head on exactly the positions that predict a token (slicing its input, not its output)
            backbone, head = split
            hidden = backbone(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
            ).last_hidden_state[:, :-1]
            states = hidden
        values = self.value_head(hidden.float()).squeeze(-1)
        labels = batch["input_ids"][:, 1:]
        if fits:
            logits = chunk_logits(head or (lambda x: x), states, self.temperature)
            logps, entropy = picked_logps_entropy(logits, labels)
            return logps, entropy, values
        B, T = states.shape[:2]
        logps, entropy = chunked_logps_entropy(states.reshape(B * T, -1), head, labels.reshape(B * T), self.temperature)
        return logps.view(B, T), entropy.view(B, T), values


class PPO:
    name = "ppo"
    description = (
        "PPO-RLHF on the learned reward model: per-token KL penalty, adaptive KL controller, GAE, clipped losses"
    )
    Config = Config
    # About 47 updates of 64 episodes on the default sentiment task (a few minutes on 2 CPU cores). TRL's
    # GPT-2 sentiment recipe uses lr 1.41e-5; these small models learn at a larger one.
    train_defaults = {
        "lr": 1e-4,
        "batch_size": 32,
        "epochs": 1.5,
        "warmup_steps": 0,
        "log_every": 1,
        "checkpoint_every": 10,
    }

    def __init__(self, config: Config | None = None):
        self.config = config or Config()
        self.config.check(self.name)

    def reward(self, ctx):
        """The score of full completions: the learned reward model, trained on first use and cached."""
        return learned_reward(ctx, path=self.config.reward_model)

    def fit(self, ctx) -> ModelPolicy:
        c, tok = self.config, ctx.tokenizer
        if ctx.train.warmup_steps:
            raise UserError(
                f"{self.name}: train.warmup_steps={ctx.train.warmup_steps} is not used (PPO keeps its learning rate "
                "constant); leave it at 0"
            )
        if ctx.train.batch_size > c.rollout_batch_size:
            raise UserError(
                f"{self.name}: train.batch_size ({ctx.train.batch_size}) is the minibatch and cannot exceed "
                f"rollout_batch_size ({c.rollout_batch_size})"
            )
        prompts, prompt_ids, max_new_tokens = rollout_prompts(ctx, self.name, c.max_new_tokens)
        reward = self.reward(ctx)
        updates = ctx.train.max_steps or math.ceil(ctx.train.epochs * len(prompts) / c.rollout_batch_size)

        policy = ctx.policy
        disable_dropout(policy)  # else pi / pi_old would differ from 1 before any update
        torch.manual_seed(ctx.seed)
        model = PolicyWithValue(policy, c.temperature).to(next(policy.parameters()).device)
        # The harness evaluates the policy itself, not its value-head wrapper.
        on_step = None if ctx.on_step is None else lambda update, total, model: ctx.on_step(update, total, model.policy)
        # The trained wrapper: the same one, or under FSDP2 a plain copy of the sharded one (bench.fsdp).
        policy = train_online(
            model,
            PPOStep(self, ctx, reward, prompts, prompt_ids, max_new_tokens),
            ctx.train,
            updates=updates,
            seed=ctx.seed,
            log=ctx.log,
            checkpoint_dir=ctx.checkpoint_dir,
            desc=self.name,
            on_step=on_step,
        ).policy
        policy.eval()
        fit_metrics = None
        if hasattr(reward, "accuracy"):  # the learned reward model's held-out accuracy (the gold reward has none)
            fit_metrics = {"reward_model_accuracy": {**reward.accuracy, "path": str(reward.path)}}
        return ModelPolicy(policy, tok, fit_metrics)

    def _loss(self, model, batch):
        """Clipped surrogate policy loss + vf_coef * clipped value loss, over the minibatch's completion tokens."""
        c = self.config
        logps, entropy, values = model(batch)
        mask, advantages = batch["mask"], batch["advantages"]
        log_ratio = logps - batch["old_logps"]
        ratio = torch.exp(log_ratio)
        pg_losses = -advantages * ratio
        pg_losses_clipped = -advantages * ratio.clamp(1 - c.cliprange, 1 + c.cliprange)
        policy_loss = masked_mean(torch.max(pg_losses, pg_losses_clipped), mask)
        old_values, returns = batch["old_values"], batch["returns"]
        values_clipped = old_values + (values - old_values).clamp(-c.cliprange_value, c.cliprange_value)
        vf_losses, vf_losses_clipped = (values - returns) ** 2, (values_clipped - returns) ** 2
        value_loss = 0.5 * masked_mean(torch.max(vf_losses, vf_losses_clipped), mask)
        with torch.no_grad():
            metrics = {
                "loss/policy": policy_loss,
                "loss/value": value_loss,
                "policy/entropy": masked_mean(entropy, mask),
                "policy/clipfrac": masked_mean((pg_losses_clipped > pg_losses).float(), mask),
                "policy/approxkl": 0.5 * masked_mean(log_ratio**2, mask),
                "val/clipfrac": masked_mean((vf_losses_clipped > vf_losses).float(), mask),
            }
        return policy_loss + c.vf_coef * value_loss, metrics


class PPOGT(PPO):
    name = "ppo-gt"
    description = (
        "PPO on the task's gold reward (an oracle upper reference for PPO-RLHF; tasks with a gold reward only)"
    )
    uses_preferences = False  # cost accounting: the gold reward replaces the preference labels

    def reward(self, ctx):
        if ctx.reward is None:
            raise UserError(
                f"ppo-gt needs a gold reward and the task {ctx.task.name!r} has none; use --algo ppo (learned "
                "reward model)"
            )
        if self.config.reward_model:
            raise UserError("ppo-gt scores with the task's gold reward; drop ppo-gt.reward_model (or use --algo ppo)")
        return ctx.reward


class PPOStep:
    """One PPO update for bench.train.train_online: rollout, score, rewards, GAE, minibatch epochs, KL control.

    Its extra state, checkpointed with the loop's, is the KL weight and the score statistics.
    """

    def __init__(self, algo: PPO, ctx, reward, prompts: list[str], prompt_ids, max_new_tokens: int):
        self.config, self.ctx, self.reward, self.prompts, self.loss = algo.config, ctx, reward, prompts, algo._loss
        self.prompt_ids, self.max_new_tokens = prompt_ids, max_new_tokens
        self.pad = pad_id(ctx.tokenizer)
        self.kl_ctl = AdaptiveKLController(self.config.init_kl_coef, self.config.target_kl, self.config.kl_horizon)
        self.score_mean: float | None = None
        self.score_std: float | None = None

    def state_dict(self) -> dict:
        return {"kl_coef": self.kl_ctl.value, "score_mean": self.score_mean, "score_std": self.score_std}

    def load_state_dict(self, state: dict) -> None:
        self.kl_ctl.value, self.score_mean, self.score_std = state["kl_coef"], state["score_mean"], state["score_std"]

    def __call__(self, update: int, loop) -> dict:
        c, ctx, model = self.config, self.ctx, loop.model
        device = next(ctx.policy.parameters()).device
        # 1. Rollout: the same prompts and draws for a given (seed, update), so a resumed run repeats them.
        rows = example_order(len(self.prompts), ctx.seed, update * c.rollout_batch_size, c.rollout_batch_size)
        # 2. Score the full completions.
        seed = seeds.stream(ctx.seed, update)
        completions, scores, batch = sample_and_score(ctx, self, rows, c.temperature, seed, device)
        if self.score_mean is None:
            std = scores.std().item() if len(scores) > 1 else 0.0
            self.score_mean, self.score_std = scores.mean().item(), std if std > 1e-6 else 1.0
        whitened = (scores - self.score_mean) / self.score_std if c.whiten_rewards else scores

        mask = batch["completion_mask"][:, 1:].float()
        with torch.no_grad():
            old_logps, _, old_values = model(batch)
            ref_logps, _ = token_logps(ctx.reference, batch, c.temperature)
        # 3. Per-token rewards: the KL penalty everywhere, the score on each completion's last token.
        kl = (old_logps - ref_logps) * mask
        rewards = -self.kl_ctl.value * kl
        last = (mask * torch.arange(mask.shape[1], device=mask.device)).argmax(-1)
        rewards[torch.arange(len(rows)), last] += whitened.to(rewards.device)
        # 4. Advantages and value targets.
        advantages, returns = gae(rewards, old_values, mask, c.gamma, c.lam)
        advantages = whiten(advantages, mask) * mask
        rollout = {
            **batch,
            "old_logps": old_logps,
            "old_values": old_values * mask,
            "advantages": advantages,
            "returns": returns,
            "mask": mask,
        }

        # 5. Optimise: ppo_epochs over the rollout in minibatches, on the run's one optimizer.
        metrics = loop.minibatch_epochs(
            list(range(len(rows))),
            lambda idx: minibatch(rollout, idx),
            self.loss,
            epochs=c.ppo_epochs,
            seed=seeds.stream(ctx.seed, update),
        )

        # 6. Steer the KL weight toward the target.
        sequence_kl = kl.sum(-1).mean().item()
        kl_coef = self.kl_ctl.value
        if c.adaptive_kl:
            self.kl_ctl.update(sequence_kl, len(rows))
        return {
            **metrics,
            "objective/kl": sequence_kl,
            "objective/scores": scores.mean().item(),
            "objective/rlhf_reward": rewards.sum(-1).mean().item(),
            "objective/kl_coef": kl_coef,
            "objective/entropy": -(old_logps * mask).sum(-1).mean().item(),
            "sampled_tokens": sum(len(y) for y in completions),
            "reward_calls": len(rows),
            "episodes": len(rows),
        }
