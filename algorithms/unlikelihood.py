"""Unlikelihood training on preference pairs: raise the likelihood of chosen, lower that of rejected.

    loss = -mean_t log pi(y_w,t | x, y_w,<t)  -  alpha * mean_t log(1 - pi(y_l,t | x, y_l,<t))

The DPO paper's unlikelihood baseline, with the rejected completion as the negative sequence of
Welleck et al.'s (2020) sequence-level unlikelihood loss: at every position of y_l, its token is the
negative candidate. Means run over the batch's completion tokens. Nothing ties the policy to the
reference, which is why the paper finds it degenerates on complex tasks.

alpha defaults to 1, the top of the paper's sweep (0.05, 0.1, 0.5, 1) and Welleck et al.'s choice:
the two terms get equal weight, and the unlikelihood term is self-limiting anyway, since its gradient
with respect to a token's log-prob is p / (1 - p), small for tokens the policy already finds unlikely.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.checks import non_negative
from bench.preference import fit_on_pairs, mean_token_nll

MIN_ONE_MINUS_P = 1e-5
"""1 - p is clamped here (as in Welleck et al.'s code): caps each token's term at log(1e5) = 11.5 nats
and stops the gradient p / (1 - p) from blowing up for tokens the policy is sure of."""


@dataclass
class Config:
    alpha: float = 1.0
    """Weight of the unlikelihood term on rejected tokens (the paper swept 0.05, 0.1, 0.5 and 1)."""

    def check(self, section: str = "unlikelihood") -> None:
        non_negative(self, section, "alpha", "0 is plain likelihood on the chosen completions")


def unlikelihood_loss(
    chosen_token_logps: torch.Tensor,
    chosen_mask: torch.Tensor,
    rejected_token_logps: torch.Tensor,
    rejected_mask: torch.Tensor,
    *,
    alpha: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, likelihood term, unlikelihood term) from per-token log-probs and completion masks [B, T]."""
    likelihood = mean_token_nll(chosen_token_logps, chosen_mask)
    # 1 - exp(logp) as -expm1(logp): exact even when p is within float rounding of 1.
    one_minus_p = (-torch.expm1(rejected_token_logps)).clamp(min=MIN_ONE_MINUS_P)
    mask = rejected_mask.to(one_minus_p.dtype)
    unlikelihood = -(torch.log(one_minus_p) * mask).sum() / mask.sum().clamp(min=1)
    return likelihood + alpha * unlikelihood, likelihood, unlikelihood


class Unlikelihood:
    name = "unlikelihood"
    description = "maximise log p(chosen) and log(1 - p) of each rejected token, weight alpha (no reference)"
    Config = Config
    train_defaults = {"lr": 1e-4, "epochs": 1.0}

    def __init__(self, config: Config | None = None):
        self.config = config or Config()
        self.config.check(self.name)

    def loss(self, out: dict, ref_chosen_logps=None, ref_rejected_logps=None):
        loss, likelihood, unlikelihood = unlikelihood_loss(
            out["chosen_token_logps"],
            out["chosen_mask"],
            out["rejected_token_logps"],
            out["rejected_mask"],
            alpha=self.config.alpha,
        )
        return loss, {
            "nll/chosen": likelihood.detach(),
            "unlikelihood/rejected": unlikelihood.detach(),
            "logps/chosen": out["chosen_logps"].detach().mean(),
            "logps/rejected": out["rejected_logps"].detach().mean(),
        }

    def fit(self, ctx):
        return fit_on_pairs(ctx, self.loss, needs_reference=False, desc="unlikelihood")
