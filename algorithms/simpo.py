"""SimPO (Meng et al., 2024): DPO without a reference model, on length-normalised log-probs, with a target margin.

    loss = -log sigmoid(beta / |y_w| * log pi(y_w|x) - beta / |y_l| * log pi(y_l|x) - gamma)

|y| is the completion's token count, so beta / |y| * log pi(y|x) is beta times the mean token
log-prob: the implicit reward, which does not grow with length the way DPO's sum does. gamma is
the margin the chosen reward must clear, set as gamma_beta_ratio * beta. No reference model is
loaded or scored while training; pair accuracy ranks held-out pairs by the same reward.
Defaults are the paper's: beta 2.0 and gamma / beta 0.5 (its sweeps: beta 2-10, ratio 0.3-1.6).

The loss is TRL 1.16's CPOTrainer.cpo_loss with loss_type="simpo", cpo_alpha=0 (no NLL term),
label_smoothing=0, alpha=0 and simpo_gamma = gamma_beta_ratio * beta, on average_log_prob
log-probs (tests/test_modern_losses.py checks it against that function).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.checks import non_negative, positive
from bench.preference import fit_on_pairs, pair_metrics


@dataclass
class Config:
    beta: float = 2.0
    """Scale of the length-normalised reward (the paper: 2.0; swept 2 to 10)."""
    gamma_beta_ratio: float = 0.5
    """The target margin gamma as a share of beta (the paper: 0.5; swept 0.3 to 1.6); 0 drops the margin."""

    def check(self, section: str = "simpo") -> None:
        positive(self, section, "beta", "the paper's 2.0")
        non_negative(self, section, "gamma_beta_ratio", "the paper's 0.5; 0 drops the margin")


def simpo_loss(
    chosen_mean_logps: torch.Tensor, rejected_mean_logps: torch.Tensor, *, beta: float, gamma: float
) -> torch.Tensor:
    """Per-pair losses [B] from mean token log-probs of the chosen and rejected completions."""
    return -F.logsigmoid(beta * (chosen_mean_logps - rejected_mean_logps) - gamma)


class SimPO:
    name = "simpo"
    description = "SimPO: reference-free logistic loss on length-normalised log-prob margins minus a target margin"
    Config = Config
    train_defaults = {"lr": 1e-4, "epochs": 1.0}

    def __init__(self, config: Config | None = None):
        self.config = config or Config()
        self.config.check(self.name)

    def loss(self, out: dict, ref_chosen_logps=None, ref_rejected_logps=None):
        c = self.config
        chosen = out["chosen_logps"] / out["chosen_mask"].sum(-1).clamp(min=1)
        rejected = out["rejected_logps"] / out["rejected_mask"].sum(-1).clamp(min=1)
        losses = simpo_loss(chosen, rejected, beta=c.beta, gamma=c.gamma_beta_ratio * c.beta)
        # As TRL's CPO: rewards are beta x the mean token log-probs, and logps/* those means.
        return losses.mean(), pair_metrics(c.beta * chosen, c.beta * rejected, chosen, rejected)

    def fit(self, ctx):
        return fit_on_pairs(ctx, self.loss, needs_reference=False, desc=self.name)

    def implicit_reward(self, logps: torch.Tensor, ref_logps: torch.Tensor, n_tokens: torch.Tensor) -> torch.Tensor:
        """beta * mean token log-prob: SimPO's reward, with no reference term."""
        return self.config.beta * logps / n_tokens.clamp(min=1).to(logps.dtype)
