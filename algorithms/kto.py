"""KTO (Ethayarajh et al., 2024): a prospect-theoretic loss on completions marked desirable or undesirable.

    r(x, y) = log pi(y|x) - log pi_ref(y|x)                  z0 = max(0, batch mean of r(x, y'))
    desirable y:    loss = lambda_D * (1 - sigmoid(beta * (r(x, y) - z0)))
    undesirable y:  loss = lambda_U * (1 - sigmoid(beta * (z0 - r(x, y))))

and the batch loss is the mean over its completions. The reference point z0 estimates
KL(pi || pi_ref) from completions y' that do not belong to their prompts: here each pair's prompt
with the next pair's chosen completion (bench.preference.fit_on_pairs(mismatched=True)), scored
without gradient, as in the paper and TRL. Its log-probs under the reference are cached like the
pairs'. KTO needs no pairs, only a label per completion; this task's data are pairs, so each one
gives a desirable (chosen) and an undesirable (rejected) completion, balanced, where the paper
recommends lambda_D * n_D / (lambda_U * n_U) in [1, 4/3]: hence the defaults lambda_D = lambda_U = 1.
beta defaults to 0.1, the paper's and TRL's.

The loss is TRL 1.16's KTOTrainer._compute_loss with loss_type="kto" (written inline there; the test
in tests/test_modern_losses.py runs that method on the same log-probs and compares).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.checks import non_negative, positive, require
from bench.preference import fit_on_pairs


@dataclass
class Config:
    beta: float = 0.1
    """Scale of the reward in the value function (the paper's and TRL's 0.1)."""
    desirable_weight: float = 1.0
    """lambda_D, the weight of desirable completions' losses."""
    undesirable_weight: float = 1.0
    """lambda_U, the weight of undesirable completions' losses."""

    def check(self, section: str = "kto") -> None:
        positive(self, section, "beta", "the paper's 0.1")
        non_negative(self, section, "desirable_weight", "1 as in the paper for balanced data")
        non_negative(self, section, "undesirable_weight", "1 as in the paper for balanced data")
        require(
            self.desirable_weight + self.undesirable_weight > 0,
            section,
            "undesirable_weight",
            self.undesirable_weight,
            "and desirable_weight are both 0: nothing would be learned",
        )


def kto_loss(
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    mismatched_logratios: torch.Tensor,
    *,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean loss over the 2B completions, z0) from the log-ratios log pi - log pi_ref of the desirable [B],
    undesirable [B] and mismatched [M] completions."""
    z0 = mismatched_logratios.mean().detach().clamp(min=0)
    desirable = 1 - F.sigmoid(beta * (chosen_logratios - z0))
    undesirable = 1 - F.sigmoid(beta * (z0 - rejected_logratios))
    return torch.cat((desirable_weight * desirable, undesirable_weight * undesirable)).mean(), z0


class KTO:
    name = "kto"
    description = "KTO: value of each completion's implicit reward against a KL reference point, weighted by label"
    Config = Config
    train_defaults = {"lr": 1e-4, "epochs": 1.0}

    def __init__(self, config: Config | None = None):
        self.config = config or Config()
        self.config.check(self.name)

    def loss(self, out: dict, ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor):
        c = self.config
        chosen = out["chosen_logps"] - ref_chosen_logps
        rejected = out["rejected_logps"] - ref_rejected_logps
        mismatched = out["mismatched_logps"] - out["ref_mismatched_logps"]
        loss, z0 = kto_loss(
            chosen,
            rejected,
            mismatched,
            beta=c.beta,
            desirable_weight=c.desirable_weight,
            undesirable_weight=c.undesirable_weight,
        )
        chosen_rewards, rejected_rewards = c.beta * chosen.detach(), c.beta * rejected.detach()
        return loss, {
            "kl": z0,
            "rewards/chosen": chosen_rewards.mean(),
            "rewards/rejected": rejected_rewards.mean(),
            "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
            "logps/chosen": out["chosen_logps"].detach().mean(),
            "logps/rejected": out["rejected_logps"].detach().mean(),
        }

    def fit(self, ctx):
        return fit_on_pairs(ctx, self.loss, mismatched=True, desc=self.name)
