"""RLOO (Ahmadian et al., 2024): REINFORCE with a leave-one-out baseline over k samples per prompt.

    R_i = score(x, y_i) - beta * sum_t [log pi(y_i,t) - log pi_ref(y_i,t)]     (KL in the reward)
    A_i = R_i - mean_{j != i} R_j                                                (the other k - 1 of its prompt)
    loss = -mean_i min(rho_i A_i, clip(rho_i, 1 - eps, 1 + eps) A_i),   rho_i = pi(y_i|x) / pi_old(y_i|x)

over sequences: the whole completion is one action, as in the paper. With one pass over each
rollout (epochs=1) in one minibatch rho = 1 and this is plain REINFORCE with the baseline; more
passes or minibatches are kept near the sampling policy by the clip, as in TRL. No value model.
The rollout (k samples per prompt, scored by the reward model or the gold reward) is
bench.online's; this module is the advantage and the loss. Defaults: k 4, beta 0.05 (TRL's),
eps 0.2; 16 prompts per update for 0.4 epochs over the training prompts: about as many episodes
as ppo's default run.

The advantage and loss are TRL 1.16's RLOOTrainer (_generate_and_score_completions' leave-one-out
baseline, _compute_loss); tests/test_online_losses.py runs TRL's _compute_loss on the same tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.checks import non_negative, positive
from bench.logprobs import token_logps
from bench.online import GroupOnline, OnlineConfig, Rollout, minibatch


@dataclass
class Config(OnlineConfig):
    beta: float = 0.05
    """Weight of the sequence KL to the reference, subtracted from the reward (TRL's default 0.05)."""
    epsilon: float = 0.2
    """Clip range of the sequence ratio pi / pi_old."""
    normalize_advantages: bool = False
    """Whiten the advantages over the rollout (TRL's option; off as in TRL and the paper)."""

    def check(self, section: str = "rloo") -> None:
        super().check(section)
        non_negative(self, section, "beta", "0 drops the KL penalty")
        positive(self, section, "epsilon", "e.g. 0.2")


def rloo_advantages(rewards: torch.Tensor, k: int, normalize: bool = False) -> torch.Tensor:
    """[N] advantages: each reward minus the mean of the other k - 1 of its group (groups of k consecutive rows)."""
    grouped = rewards.view(-1, k)
    baselines = (grouped.sum(-1, keepdim=True) - grouped) / (k - 1)
    advantages = (grouped - baselines).flatten()
    if normalize:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-4)
    return advantages


def rloo_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, epsilon: float) -> tuple:
    """(loss, share of sequences clipped) from sequence log-probs now and at sampling, and advantages, each [n]."""
    ratio = torch.exp(logps - old_logps)
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + epsilon)
    loss = -torch.min(ratio * advantages, clipped * advantages).mean()
    region = ((ratio < 1 - epsilon) & (advantages < 0)) | ((ratio > 1 + epsilon) & (advantages > 0))
    return loss, region.float().mean()


class RLOO(GroupOnline):
    name = "rloo"
    description = (
        "RLOO: REINFORCE with a leave-one-out baseline over k samples per prompt, KL to the reference in the reward"
    )
    Config = Config
    train_defaults = {**GroupOnline.train_defaults, "epochs": 0.4}

    def update(self, r: Rollout, loop, seed: int) -> dict:
        c = self.config
        kl = ((r.old_logps - r.ref_logps) * r.mask).sum(-1)
        rewards = r.scores - c.beta * kl
        advantages = rloo_advantages(rewards, c.k, c.normalize_advantages)
        rows = {**r.batch, "old_logps": (r.old_logps * r.mask).sum(-1), "advantages": advantages}
        metrics = loop.minibatch_epochs(
            list(range(len(advantages))), lambda idx: minibatch(rows, idx), self.loss, epochs=c.epochs, seed=seed
        )
        return {**metrics, "objective/rlhf_reward": rewards.mean().item(), "advantages/std": advantages.std().item()}

    def loss(self, model, batch):
        logps, mask = token_logps(model, batch, self.config.temperature)
        loss, clipped = rloo_loss((logps * mask).sum(-1), batch["old_logps"], batch["advantages"], self.config.epsilon)
        return loss, {"clip_ratio/region_mean": clipped.detach()}
