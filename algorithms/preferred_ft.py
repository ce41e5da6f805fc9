"""Preferred-FT: maximum likelihood on the chosen completion of every preference pair (a DPO-paper baseline).

One example per pair, so a completion chosen in several pairs is seen that many times (with the
task's all-pairs-of-4-samples data, the best sample of a prompt counts three times, the worst never).
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.preference import fit_on_demonstrations


@dataclass
class Config:
    """Preferred-FT has no options of its own; its optimisation settings are `train.*`."""


class PreferredFT:
    name = "preferred-ft"
    description = "supervised fine-tuning on the chosen completions of the preference pairs"
    Config = Config
    train_defaults = {"lr": 1e-4, "epochs": 1.0}

    def __init__(self, config: Config | None = None):
        self.config = config or Config()

    def fit(self, ctx):
        examples = [{"prompt": p["prompt"], "completion": p["chosen"]} for p in ctx.preferences]
        return fit_on_demonstrations(ctx, examples, desc="preferred-ft")
