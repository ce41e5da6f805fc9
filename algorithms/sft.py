"""SFT: maximum likelihood on the task's demonstrations (prompt tokens masked out)."""

from __future__ import annotations

from dataclasses import dataclass

from bench.preference import fit_on_demonstrations


@dataclass
class Config:
    """SFT has no options of its own; its optimisation settings are `train.*`."""


class SFT:
    name = "sft"
    description = "supervised fine-tuning on the task's demonstrations (mean token negative log-likelihood)"
    Config = Config
    train_defaults = {"lr": 1e-4, "epochs": 1.0}
    uses_preferences = False  # cost accounting: SFT uses no preference labels

    def __init__(self, config: Config | None = None):
        self.config = config or Config()

    def fit(self, ctx):
        return fit_on_demonstrations(ctx, ctx.sft_examples, desc="sft")
