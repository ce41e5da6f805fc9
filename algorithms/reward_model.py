"""The Bradley-Terry reward model that PPO-RLHF and best-of-N optimise, as a run of its own.

    loss = -log sigmoid(r(x, y_chosen) - r(x, y_rejected))

r is the task's SFT model with a scalar head (see bench.reward). This run trains it (or finds it
already trained with the same settings in the cache), reports its held-out pair accuracy as
`reward_model_accuracy`, and leaves the policy unchanged: the run's policy is the SFT model.
PPO and best-of-N runs with the same seed reuse the model this run trains with its default
`train.*` settings; other settings are saved under their own hash, whose directory this run's
metrics name (pass it to `--set ppo.reward_model=DIR`).
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.policy import ModelPolicy
from bench.reward import TRAIN_DEFAULTS, learned_reward


@dataclass
class Config:
    """No options of its own: the reward model's settings are the `train.*` section (lr, epochs, batch_size ...)."""


class RewardModel:
    name = "reward-model"
    description = (
        "Bradley-Terry reward model on the preference pairs (SFT model + scalar head); reports held-out accuracy"
    )
    Config = Config
    train_defaults = TRAIN_DEFAULTS

    def __init__(self, config: Config | None = None):
        self.config = config or Config()

    def fit(self, ctx) -> ModelPolicy:
        reward = learned_reward(ctx, ctx.train, log=ctx.log)
        # The runner adds fit_metrics to metrics.json beside the evaluators' aggregates.
        accuracy = {"reward_model_accuracy": {**reward.accuracy, "path": str(reward.path)}}
        return ModelPolicy(ctx.policy, ctx.tokenizer, fit_metrics=accuracy)
