"""GRPO (Shao et al., 2024): group-normalised advantages, token-level clipped surrogate, KL to the reference in loss.

    A_i = (R_i - mean_group R) / (std_group R + 1e-4)          (scale_rewards=none: no division, Dr. GRPO)
    per token:  -min(rho_t A_i, clip(rho_t, 1 - eps, 1 + eps) A_i) + beta * k3_t,   rho_t = pi(y_t) / pi_old(y_t)
    k3_t = pi_ref(y_t) / pi(y_t) - log(pi_ref(y_t) / pi(y_t)) - 1       (Schulman's unbiased, non-negative estimate)

R_i is the reward of completion i alone (the KL is in the loss, not the reward); the group is the k
completions of one prompt. Tokens are averaged per completion and then over completions
(loss_type=grpo, the paper's), over all tokens of the minibatch (bnpo), or summed and divided by
completions x max_new_tokens (dr_grpo, Liu et al. 2025, which with scale_rewards=none removes both
length and difficulty biases). No value model. The rollout is bench.online's; this module is the
advantage and the loss. Defaults: k 4, beta 0.04 (DeepSeekMath's; TRL now defaults to 0), eps 0.2.

The advantage and the loss are TRL 1.16's GRPOTrainer (_generate_and_score_completions with
multi_objective_aggregation="sum_then_normalize", _compute_loss with importance_sampling_level="token");
tests/test_online_losses.py runs TRL's _compute_loss on the same tensors for each loss_type.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.checks import non_negative, one_of, positive
from bench.logprobs import token_logps
from bench.online import GroupOnline, OnlineConfig, Rollout, minibatch

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo")
SCALES = ("group", "batch", "none")


@dataclass
class Config(OnlineConfig):
    beta: float = 0.04
    """Weight of the k3 KL estimate in the loss (DeepSeekMath's 0.04; 0 drops it)."""
    epsilon: float = 0.2
    """Clip range of the token ratio pi / pi_old."""
    loss_type: str = "grpo"
    """How token losses are averaged: grpo (per completion, then over completions), bnpo (over tokens), dr_grpo."""
    scale_rewards: str = "group"
    """Divide advantages by the group's reward std (group), the rollout's (batch), or not at all (none: Dr. GRPO)."""

    def check(self, section: str = "grpo") -> None:
        super().check(section)
        non_negative(self, section, "beta", "0 drops the KL term")
        positive(self, section, "epsilon", "e.g. 0.2")
        one_of(self, section, "loss_type", LOSS_TYPES)
        one_of(self, section, "scale_rewards", SCALES)


def grpo_advantages(rewards: torch.Tensor, k: int, scale: str = "group") -> torch.Tensor:
    """[N] rewards minus their group's mean, divided by the group's (or the rollout's) std + 1e-4 unless scale=none."""
    grouped = rewards.view(-1, k)
    advantages = (grouped - grouped.mean(-1, keepdim=True)).flatten()
    if scale == "group":
        advantages = advantages / (grouped.std(-1).repeat_interleave(k) + 1e-4)
    elif scale == "batch":
        advantages = advantages / (rewards.std() + 1e-4)
    return advantages


def grpo_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    beta: float,
    epsilon: float,
    loss_type: str = "grpo",
    max_new_tokens: int = 0,
) -> tuple[torch.Tensor, dict]:
    """(loss, metrics) from per-token log-probs now, at sampling and under the reference [n, T], advantages [n] and
    the completion mask [n, T]; max_new_tokens is dr_grpo's constant."""
    a = advantages.unsqueeze(1)
    ratio = torch.exp(logps - old_logps)
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + epsilon)
    per_token = -torch.min(ratio * a, clipped * a)
    metrics = {}
    if beta:
        k3 = torch.exp(ref_logps - logps) - (ref_logps - logps) - 1
        per_token = per_token + beta * k3
        metrics["kl"] = ((k3 * mask).sum() / mask.sum().clamp(min=1)).detach()
    if loss_type == "grpo":
        loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()
    elif loss_type == "bnpo":
        loss = (per_token * mask).sum() / mask.sum().clamp(min=1)
    else:
        loss = (per_token * mask).sum() / (per_token.size(0) * max_new_tokens)
    region = ((ratio < 1 - epsilon) & (a < 0)) | ((ratio > 1 + epsilon) & (a > 0))
    metrics["clip_ratio/region_mean"] = ((region.float() * mask).sum() / mask.sum().clamp(min=1)).detach()
    return loss, metrics


class GRPO(GroupOnline):
    name = "grpo"
    description = "GRPO: group-normalised advantages, token-level clipped surrogate, k3 KL to the reference in the loss"
    Config = Config
    train_defaults = {**GroupOnline.train_defaults, "epochs": 0.4}

    def update(self, r: Rollout, loop, seed: int) -> dict:
        c = self.config
        advantages = grpo_advantages(r.scores, c.k, c.scale_rewards)
        rows = {**r.batch, "old_logps": r.old_logps, "ref_logps": r.ref_logps, "advantages": advantages}
        metrics = loop.minibatch_epochs(
            list(range(len(advantages))), lambda idx: minibatch(rows, idx), self.loss, epochs=c.epochs, seed=seed
        )
        return {**metrics, "advantages/std": advantages.std().item()}

    def fit(self, ctx):
        self._max_new_tokens = self.config.max_new_tokens or ctx.generation.max_new_tokens  # dr_grpo's constant
        return super().fit(ctx)

    def loss(self, model, batch):
        c = self.config
        logps, mask = token_logps(model, batch, c.temperature)
        return grpo_loss(
            logps,
            batch["old_logps"],
            batch["ref_logps"],
            batch["advantages"],
            mask.to(logps.dtype),
            beta=c.beta,
            epsilon=c.epsilon,
            loss_type=c.loss_type,
            max_new_tokens=self._max_new_tokens,
        )
