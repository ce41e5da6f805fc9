"""Best-of-N: sample N completions from the SFT model and answer with the one the learned reward model scores highest.

Nothing is trained beyond the reward model (shared through bench.reward's cache): the returned
Policy samples and reranks at evaluation time. It is not a model with log-probs, so
its KL to the SFT model is reported as the analytic bound log N - (N - 1) / N
(bench.kl.best_of_n_kl_bound), marked "analytic bound" by the kl evaluator. The paper uses
N = 128 for summarisation and dialogue and studies N from 4 to 128.

One run gives a frontier, not a point: the first k of each prompt's N candidates are themselves
k independent draws, so best-of-k for k = 1, 4, 16, ... below N is read off the same candidates
(`frontier_points`) at no further sampling cost; k = 1 is the starting policy's own samples.
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


FRONTIER_BASE = 4
"""Best-of-k points of a run: k = 1, 4, 16, ... (powers of this) below its n, and n itself."""


class BestOfNPolicy(Policy):
    """Samples `n` candidates per requested completion from `base` and keeps the highest-reward one."""

    def __init__(
        self, base, tokenizer, reward, n: int, fit_metrics: dict[str, dict] | None = None, _drawn: dict | None = None
    ):
        super().__init__(fit_metrics)
        # Deliberately not called `model`: evaluators read log-probs from a Policy's model, and
        # best-of-N's distribution is not the base model's.
        self.base, self.tokenizer, self.reward, self.n = base, tokenizer, reward, n
        # Candidates already drawn and scored, (prompts, generation, seed) -> (candidates, scores, per
        # completion); shared with the smaller-k policies of frontier_points.
        self._drawn = {} if _drawn is None else _drawn

    def _candidates(self, prompts: list[str], gen: Generation, seed: int) -> tuple[list[Sample], list[float], int]:
        key = (tuple(prompts), dataclasses.astuple(gen), seed)
        if key not in self._drawn:
            wide = dataclasses.replace(gen, samples_per_prompt=gen.samples_per_prompt * self.n)
            candidates = ModelPolicy(self.base, self.tokenizer).sample(prompts, wide, seed)
            scores = self.reward([s.prompt for s in candidates], [s.completion for s in candidates])
            self._drawn[key] = (candidates, [float(x) for x in scores], self.n)
        return self._drawn[key]

    def sample(self, prompts: list[str], gen: Generation, seed: int) -> list[Sample]:
        """`gen.samples_per_prompt` completions per prompt, grouped by prompt, each the best of n candidates."""
        candidates, scores, per = self._candidates(prompts, gen, seed)
        best = []
        # ModelPolicy.sample groups a prompt's candidates together, so every run of `per` shares its
        # prompt; best-of-n looks at the first n of them.
        for start in range(0, len(candidates), per):
            group = range(start, start + self.n)
            pick = candidates[max(group, key=lambda i: scores[i])]
            # A copy: evaluators write onto samples, and another k's policy may pick the same candidate.
            best.append(dataclasses.replace(pick, values=dict(pick.values)))
        return best

    def kl_bound(self) -> float:
        """The analytic bound log n - (n - 1) / n on KL(best-of-n || base), which the kl evaluator reports."""
        return best_of_n_kl_bound(self.n)

    def frontier_points(self) -> list[tuple[int, int, Policy]]:
        """(k, n, best-of-k) for k = 1, 4, 16, ... below n, each choosing among the candidates `sample` drew."""
        ks = []
        k = 1
        while k < self.n:
            ks.append(k)
            k *= FRONTIER_BASE
        return [(k, self.n, BestOfNPolicy(self.base, self.tokenizer, self.reward, k, _drawn=self._drawn)) for k in ks]


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
