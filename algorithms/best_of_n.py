"""Best-of-N: sample N completions from the SFT model and answer with the one the learned reward model scores highest.

Nothing is trained beyond the reward model (shared through bench.reward's cache): the returned
Policy samples and reranks at evaluation time. It is not a model with log-probs, so
its KL to the SFT model is reported as the analytic bound log N - (N - 1) / N
(bench.kl.best_of_n_kl_bound), marked "analytic bound" by the kl evaluator. The paper uses
N = 128 for summarisation and dialogue and studies N from 4 to 128.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from bench.checks import at_least
from bench.contracts import Generation, Policy, Sample
from bench.kl import best_of_n_kl_bound
from bench.policy import ModelPolicy
from bench.reward import learned_reward


@dataclass
class Config:
    n: int = 16
    """Candidates sampled per completion; the reward model keeps the best one."""
    reward_model: str = ""
    """A saved reward model directory; empty trains one (or reuses the cached one) with the reward-model defaults."""

    def check(self, section: str = "best-of-n") -> None:
        at_least(self, section, "n", 1, "e.g. 16")


class BestOfNPolicy(Policy):
    """Samples `n` candidates per requested completion from `base` and keeps the highest-reward one."""

    def __init__(self, base, tokenizer, reward, n: int, fit_metrics: dict[str, dict] | None = None):
        super().__init__(fit_metrics)
        # Deliberately not called `model`: evaluators read log-probs from a Policy's model, and
        # best-of-N's distribution is not the base model's.
        self.base, self.tokenizer, self.reward, self.n = base, tokenizer, reward, n

    def sample(self, prompts: list[str], gen: Generation, seed: int) -> list[Sample]:
        """`gen.samples_per_prompt` completions per prompt, grouped by prompt, each the best of n candidates."""
        wide = dataclasses.replace(gen, samples_per_prompt=gen.samples_per_prompt * self.n)
        candidates = ModelPolicy(self.base, self.tokenizer).sample(prompts, wide, seed)
        scores = self.reward([s.prompt for s in candidates], [s.completion for s in candidates])
        best = []
        # ModelPolicy.sample groups a prompt's candidates together, so every run of n shares its prompt.
        for start in range(0, len(candidates), self.n):
            group = range(start, start + self.n)
            best.append(candidates[max(group, key=lambda i: scores[i])])
        return best

    def kl_bound(self) -> float:
        """The analytic bound log n - (n - 1) / n on KL(best-of-n || base), which the kl evaluator reports."""
        return best_of_n_kl_bound(self.n)


class BestOfN:
    name = "best-of-n"
    description = "best of N samples from the SFT model under the learned reward model (KL: analytic bound)"
    Config = Config

    def __init__(self, config: Config | None = None):
        self.config = config or Config()
        self.config.check(self.name)

    def fit(self, ctx) -> BestOfNPolicy:
        # Training the reward model is all the training best-of-N does, so its rows are this run's
        # training log (replayed when the model comes from the cache) and its tokens this run's cost.
        reward = learned_reward(ctx, path=self.config.reward_model, log=ctx.log)
        accuracy = {"reward_model_accuracy": {**reward.accuracy, "path": str(reward.path)}}
        return BestOfNPolicy(ctx.policy, ctx.tokenizer, reward, self.config.n, fit_metrics=accuracy)
