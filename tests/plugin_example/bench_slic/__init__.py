"""SLiC-HF (Zhao et al., 2023): a hinge on the log-likelihood margin plus an SFT term on chosen.

    loss = max(0, delta - log pi(y_w|x) + log pi(y_l|x)) - lambda * log pi(y_w|x) / |y_w|

Everything else (batching, log-probs, the training loop, sampling, evaluation, records) comes
from the harness.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.preference import fit_on_pairs


@dataclass
class Config:
    delta: float = 1.0
    """Margin the chosen log-likelihood must exceed the rejected one by."""
    sft_weight: float = 0.1
    """Weight of the per-token negative log-likelihood of the chosen completion."""
    poison_loss: bool = False
    """Test hook: makes the loss NaN so the harness's failure path can be exercised."""


class SLiC:
    name = "slic"
    description = "SLiC-HF: hinge on the sequence log-likelihood margin plus SFT on chosen"
    Config = Config
    train_defaults = {"lr": 1e-4}

    def __init__(self, config: Config | None = None):
        self.config = config or Config()

    def loss(self, out, ref_chosen, ref_rejected):
        c = self.config
        margin = out["chosen_logps"] - out["rejected_logps"]
        nll = -out["chosen_logps"] / out["chosen_mask"].sum(-1).clamp(min=1)
        loss = (torch.relu(c.delta - margin) + c.sft_weight * nll).mean()
        if c.poison_loss:
            loss = loss * float("nan")
        return loss, {
            "logps/chosen": out["chosen_logps"].mean().detach(),
            "logps/rejected": out["rejected_logps"].mean().detach(),
            "rewards/margins": margin.mean().detach(),
        }

    def fit(self, ctx):
        return fit_on_pairs(ctx, self.loss, needs_reference=False, desc="slic")
