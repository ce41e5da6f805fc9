"""Online DPO (Guo et al., 2024): the DPO loss on pairs sampled from the current policy and labelled by the reward.

Every update samples k completions (default 2, as in the paper and TRL) for each of its prompts from
the policy as it is now, scores them with the learned reward model or the gold reward, and takes
the highest-scoring one as chosen and the lowest as rejected; then

    loss = -log sigmoid(beta * [(log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x))])

(algorithms/dpo.py's dpo_loss, also its ipo form) over those pairs, in minibatches of
train.batch_size pairs. Unlike offline DPO the pairs follow the policy, so the labels stay on its
distribution. The rollout is bench.online's; this module is the pairing and the loss. Defaults:
k 2, beta 0.1 (TRL's), 16 prompts per update for 2 epochs over the training prompts.

The loss is TRL 1.16's OnlineDPOTrainer.training_step's (sigmoid and ipo on summed log-probs), which
is dpo_loss, checked against TRL's DPOTrainer in tests/test_losses.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.algorithms.dpo import dpo_loss
from bench.checks import one_of, positive
from bench.logprobs import token_logps
from bench.online import GroupOnline, OnlineConfig, Rollout, minibatch
from bench.preference import pair_metrics

LOSS_TYPES = ("sigmoid", "ipo")


@dataclass
class Config(OnlineConfig):
    k: int = 2
    """Completions sampled per prompt; the best and the worst by reward make its pair."""
    beta: float = 0.1
    """Strength of the pull toward the reference, as in DPO (TRL's 0.1)."""
    loss_type: str = "sigmoid"
    """sigmoid (DPO) or ipo."""

    def check(self, section: str = "online-dpo") -> None:
        super().check(section)
        positive(self, section, "beta", "e.g. 0.1")
        one_of(self, section, "loss_type", LOSS_TYPES)


def best_and_worst(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row indices [P] of each group's highest- and lowest-scoring completion (groups of k consecutive rows;
    on a tie the first of them is chosen and the next one rejected)."""
    grouped = scores.view(-1, k)
    base = torch.arange(grouped.shape[0], device=scores.device) * k
    chosen = grouped.argmax(-1)
    # The lowest other than the chosen one: with all scores equal, a different row still makes the pair.
    others = grouped.masked_fill(torch.nn.functional.one_hot(chosen, k).bool(), float("inf"))
    return base + chosen, base + others.argmin(-1)


class OnlineDPO(GroupOnline):
    name = "online-dpo"
    description = "online DPO: the DPO loss on the best and worst of k samples from the current policy, by reward"
    Config = Config
    # Two passes over the training prompts: one pair per prompt per pass (about 1,400 pairs on the default task).
    # At 0.4 passes (288 pairs, as many episodes as ppo) it did not beat SFT; at 2 it reached 0.687 gold reward.
    train_defaults = {**GroupOnline.train_defaults, "epochs": 2.0}

    def examples_per_update(self) -> int:
        return self.config.prompts_per_update  # one pair per prompt

    def update(self, r: Rollout, loop, seed: int) -> dict:
        chosen, rejected = best_and_worst(r.scores, self.config.k)
        rows = {**r.batch, "ref_logps": (r.ref_logps * r.mask).sum(-1)}

        def pairs(idx: list[int]) -> dict:
            return minibatch(rows, chosen[idx].tolist() + rejected[idx].tolist())

        metrics = loop.minibatch_epochs(
            list(range(len(chosen))), pairs, self.loss, epochs=self.config.epochs, seed=seed
        )
        return {**metrics, "objective/score_margin": (r.scores[chosen] - r.scores[rejected]).mean().item()}

    def loss(self, model, batch):
        c = self.config
        logps, mask = token_logps(model, batch, c.temperature)
        sequence = (logps * mask).sum(-1)
        n = sequence.shape[0] // 2
        losses, chosen_rewards, rejected_rewards = dpo_loss(
            sequence[:n],
            sequence[n:],
            batch["ref_logps"][:n],
            batch["ref_logps"][n:],
            beta=c.beta,
            loss_type=c.loss_type,
        )
        return losses.mean(), pair_metrics(chosen_rewards, rejected_rewards, sequence[:n], sequence[n:])
