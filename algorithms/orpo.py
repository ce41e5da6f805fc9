"""ORPO (Hong et al., 2024): supervised fine-tuning on the chosen completion plus an odds-ratio penalty, no reference.

    loss = NLL(y_w | x)  -  lambda * log sigmoid(log odds(y_w|x) - log odds(y_l|x)),   odds(y|x) = p / (1 - p)

with p = exp(mean token log-prob of y given x), the paper's length-normalised likelihood, and
log odds = log p - log(1 - p) computed as mean - log(1 - exp(mean)) without cancellation. NLL is the
mean token negative log-likelihood of the chosen completions (prompt masked out, as in the paper and
the harness's SFT). One stage instead of SFT then preference tuning, and no reference model.
lambda defaults to 0.1, TRL's default and the paper's choice for its smaller models.

The odds-ratio term is TRL 1.16's ORPOTrainer.odds_ratio_loss (tests/test_modern_losses.py checks it
against that function). TRL's trainer takes its NLL over prompt and completion tokens; the paper's
and ours is over the completion only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.checks import non_negative
from bench.preference import fit_on_pairs, mean_token_nll, pair_metrics

LOG_HALF = -0.6931471805599453
"""log(1 - exp(x)) switches formula at x = -ln 2, where the two are equally accurate."""


@dataclass
class Config:
    lam: float = 0.1
    """Weight lambda of the odds-ratio term (TRL's `beta`; the paper: 0.1 for its smaller models, 0.25 and 0.5 too)."""

    def check(self, section: str = "orpo") -> None:
        non_negative(self, section, "lam", "0.1 as in the paper; 0 is plain SFT on the chosen completions")


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate at both ends (Maechler 2012)."""
    return torch.where(x < LOG_HALF, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def odds_ratio_term(chosen_mean_logps: torch.Tensor, rejected_mean_logps: torch.Tensor) -> tuple:
    """(log sigmoid of the log odds ratio, the log odds ratio), each [B], from mean token log-probs."""
    log_odds = (chosen_mean_logps - rejected_mean_logps) - (log1mexp(chosen_mean_logps) - log1mexp(rejected_mean_logps))
    return F.logsigmoid(log_odds), log_odds


class ORPO:
    name = "orpo"
    description = "ORPO: NLL on chosen plus lambda x log-sigmoid of the chosen/rejected odds ratio (no reference)"
    Config = Config
    train_defaults = {"lr": 1e-4, "epochs": 1.0}

    def __init__(self, config: Config | None = None):
        self.config = config or Config()
        self.config.check(self.name)

    def loss(self, out: dict, ref_chosen_logps=None, ref_rejected_logps=None):
        chosen = out["chosen_logps"] / out["chosen_mask"].sum(-1).clamp(min=1)
        rejected = out["rejected_logps"] / out["rejected_mask"].sum(-1).clamp(min=1)
        ratio, log_odds = odds_ratio_term(chosen.float(), rejected.float())
        nll = mean_token_nll(out["chosen_token_logps"], out["chosen_mask"])
        lam = self.config.lam
        return nll - lam * ratio.mean(), {
            "nll_loss": nll.detach(),
            "log_odds_ratio": ratio.detach().mean(),
            "log_odds_chosen": log_odds.detach().mean(),
            **pair_metrics(lam * chosen, lam * rejected, chosen, rejected),  # as TRL's ORPO: lambda x mean log-probs
        }

    def fit(self, ctx):
        return fit_on_pairs(ctx, self.loss, needs_reference=False, desc=self.name)

    def implicit_reward(self, logps: torch.Tensor, ref_logps: torch.Tensor, n_tokens: torch.Tensor) -> torch.Tensor:
        """The mean token log-prob, the likelihood ORPO's odds are taken of (a monotone function of the odds)."""
        return logps / n_tokens.clamp(min=1).to(logps.dtype)
