"""Held-out sentiment: two lexicon scorers that share no training data or features with the gold reward.

The sentiment tasks' gold reward is a classifier (TF-IDF + logistic regression trained on IMDb
windows for `sentiment`, a RoBERTa model for `imdb`); a policy optimised against it can raise it
with text the classifier likes rather than with sentiment (plot-summary phrasing, for instance).
Two hand-built lexicons, each shipped inside its wheel (no downloads) and fitted to no review data
of these tasks, score the completion instead, so whether a gain in gold reward shows up here says
whether it transfers:

- VADER (`vaderSentiment`): rated words plus rules for negation, degree words, capitals and "but";
  its compound score c is in [-1, 1].
- Pattern's adjective lexicon as TextBlob ships it (`textblob`): polarity p in [-1, 1], the mean of
  the rated words' polarities with negation and intensifiers applied.

`heldout_sentiment` of one completion is their weighted mean w_v c + w_t p (weights summing to 1)
mapped to [0, 1] as (x + 1) / 2: 1 is most positive, 0.5 neutral (also an empty completion), 0 most
negative. TextBlob's polarity spreads about half as wide as VADER's compound (standard deviations 0.26
and 0.59 over the 6,449 40-word windows of the default `sentiment` build's held-out gold-test reviews),
so it weighs twice as much (LEXICONS: 1/3 and 2/3) and each lexicon moves the score about equally.

Why two: the lexicons' errors are only partly shared (correlation 0.55 on those windows), so their mean
separates positive from negative windows better than either does alone: standardised mean difference
0.65, against 0.56 for VADER and 0.57 for TextBlob (0.65 for weights anywhere from 1:2 to 1:3). A
sharper scorer needs fewer samples to see the same shift. `--set heldout-sentiment.lexicons=vader`
scores with VADER alone, which reproduces the held-out scores of records made before TextBlob was added.

Only the completion is scored (the string the gold reward is given as the completion, without the
prompt): the prompt is the task's, the completion is what the policy wrote. The aggregate is the mean
over prompts of each prompt's mean, with its SE (n = prompts), as for the gold reward.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from bench.checks import comma_list, require
from bench.contracts import Evaluation
from bench.stats import by_prompt

SENTIMENT_TASKS = "sentiment,imdb"

LEXICONS = {"vader": 1.0, "textblob": 2.0}
"""Each lexicon's weight before normalisation over the chosen ones: the inverse of its spread, rounded (above)."""


@dataclass
class Config:
    """Where the held-out sentiment scorer runs and with what (`--set heldout-sentiment.KEY=VALUE`)."""

    tasks: str = SENTIMENT_TASKS
    """Comma-separated tasks whose completions should be positive (the scorer runs on their evaluation prompts only)."""
    lexicons: str = "vader,textblob"
    """Comma-separated lexicons whose weighted mean is the score: vader, textblob."""

    def check(self, section: str = "heldout-sentiment") -> None:
        """One line unless the names are known lexicons, each once (and at least one)."""
        chosen = comma_list(self.lexicons)
        ok = bool(chosen) and all(n in LEXICONS for n in chosen) and len(set(chosen)) == len(chosen)
        require(ok, section, "lexicons", self.lexicons, f"name one or more of {', '.join(LEXICONS)}, comma-separated")


@functools.lru_cache(maxsize=1)
def _vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer().polarity_scores


@functools.lru_cache(maxsize=1)
def _textblob():
    from textblob.en.sentiments import PatternAnalyzer

    return PatternAnalyzer().analyze


def lexicon_polarity(name: str, texts: list[str]) -> list[float]:
    """One lexicon's polarity of each text, in [-1, 1]: VADER's compound or TextBlob's polarity."""
    if name == "vader":
        score = _vader()
        return [float(score(t)["compound"]) for t in texts]
    analyze = _textblob()
    return [float(analyze(t).polarity) for t in texts]


def lexicon_scores(texts: list[str], lexicons: str = Config.lexicons) -> list[float]:
    """The held-out score of each text in [0, 1]: (weighted mean of the lexicons' polarities + 1) / 2."""
    chosen = comma_list(lexicons)
    total = sum(LEXICONS[n] for n in chosen)
    mixed = [0.0] * len(texts)
    for name in chosen:
        w = LEXICONS[name] / total
        mixed = [m + w * p for m, p in zip(mixed, lexicon_polarity(name, texts))]
    return [(m + 1.0) / 2.0 for m in mixed]


class HeldoutSentiment:
    name = "heldout-sentiment"
    description = (
        "positive sentiment of the completions under two lexicons independent of the gold reward "
        "(VADER, TextBlob), in [0, 1]"
    )
    higher_is_better = True
    Config = Config

    def __init__(self, config: Config | None = None):
        self.config = config or Config()

    def applies(self, ctx) -> bool:
        task = ctx.eval_task if ctx.eval_task is not None else ctx.task
        return getattr(task, "name", None) in comma_list(self.config.tasks)

    def evaluate(self, samples, ctx) -> Evaluation:
        scores = lexicon_scores([s.completion for s in samples], self.config.lexicons)
        agg = by_prompt(scores, [s.prompt_index for s in samples])
        return Evaluation(per_sample={"heldout_sentiment": scores}, aggregates={"heldout_sentiment": agg})
