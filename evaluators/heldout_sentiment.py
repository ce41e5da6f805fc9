"""Held-out sentiment: a lexicon scorer that shares no training data or features with the gold reward.

The sentiment tasks' gold reward is a classifier (TF-IDF + logistic regression trained on IMDb
windows for `sentiment`, a RoBERTa model for `imdb`); a policy optimised against it can raise it
with text the classifier likes rather than with sentiment (plot-summary phrasing, for instance).
VADER (the `vaderSentiment` package: a hand-built lexicon and rules, shipped inside its wheel,
no downloads) was fitted to no review data of these tasks, so whether a gain in gold reward shows
up here says whether it transfers.

`heldout_sentiment` of one completion is VADER's compound score c in [-1, 1] mapped to [0, 1] as
(c + 1) / 2: 1 is most positive, 0.5 neutral (also an empty completion), 0 most negative. Only the
completion is scored (the string the gold reward is given as the completion, without the prompt):
the prompt is the task's, the completion is what the policy wrote. The aggregate is the mean over
prompts of each prompt's mean, with its SE (n = prompts), as for the gold reward.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from bench.contracts import Evaluation
from bench.stats import by_prompt

SENTIMENT_TASKS = "sentiment,imdb"


@dataclass
class Config:
    """Where the held-out sentiment scorer runs (`--set heldout-sentiment.KEY=VALUE`)."""

    tasks: str = SENTIMENT_TASKS
    """Comma-separated tasks whose completions should be positive (the scorer runs on their evaluation prompts only)."""


@functools.lru_cache(maxsize=1)
def _analyzer():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def lexicon_scores(texts: list[str]) -> list[float]:
    """(VADER compound + 1) / 2 of each text, in [0, 1]."""
    analyzer = _analyzer()
    return [(float(analyzer.polarity_scores(text)["compound"]) + 1.0) / 2.0 for text in texts]


class HeldoutSentiment:
    name = "heldout-sentiment"
    description = (
        "positive sentiment of the completions under VADER, a lexicon independent of the gold reward, in [0, 1]"
    )
    higher_is_better = True
    Config = Config

    def __init__(self, config: Config | None = None):
        self.config = config or Config()

    def applies(self, ctx) -> bool:
        task = ctx.eval_task if ctx.eval_task is not None else ctx.task
        wanted = {t.strip() for t in self.config.tasks.split(",") if t.strip()}
        return getattr(task, "name", None) in wanted

    def evaluate(self, samples, ctx) -> Evaluation:
        scores = lexicon_scores([s.completion for s in samples])
        agg = by_prompt(scores, [s.prompt_index for s in samples])
        return Evaluation(per_sample={"heldout_sentiment": scores}, aggregates={"heldout_sentiment": agg})
