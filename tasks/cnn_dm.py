"""The DPO paper's out-of-distribution test: summarise CNN/DailyMail news with a policy trained on Reddit TL;DR.

Evaluation only: the run trains on tldr and takes its evaluation prompts, generation defaults and
judge prompt from here (`bench run --algo dpo --task tldr --eval-task cnn-dm`). Each prompt is
the article in the TL;DR format ("<article>\\nTL;DR:"), so a TL;DR-trained policy writes a
summary after it; the reference the judge compares with is the article's highlights (its
bullet sentences joined into one paragraph). Data: cnn_dailymail 3.0.0 (columns article,
highlights, id), test split, from the hub or a local copy in that schema.

Articles are longer than Reddit posts (about 4,000 characters on average); each is cut at a
word boundary to `max_article_chars` so the prompt stays near the lengths the policy was
trained on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from bench import hub
from bench.checks import non_negative
from bench.errors import UserError
from bench.tasks.common import checked_rows, model_key, text_field
from bench.tasks.tldr import MARKER, TLDR, judge_query

TASK = "cnn-dm"
COLUMNS = ("article", "highlights")
EVAL_ONLY = (
    "cnn-dm is evaluation-only: train on tldr and evaluate here with "
    "bench run --algo dpo --task tldr --eval-task cnn-dm"
)


@dataclass
class Config:
    """Which news articles are summarised (`--set eval_task.KEY=VALUE` with --eval-task cnn-dm)."""

    dataset: str = "abisee/cnn_dailymail"
    """CNN/DailyMail on the hub (formerly `cnn_dailymail`) or a local copy with columns article, highlights (and id)."""
    subset: str = "3.0.0"
    """Hub configuration of the dataset (3.0.0, the non-anonymised version the paper used); ignored for a local copy."""
    split: str = "test"
    """Split the articles come from."""
    max_article_chars: int = 2000
    """Articles are cut at the last word boundary within this many characters (about 450 GPT-J tokens); 0: whole."""

    def check(self, section: str = "eval_task") -> None:
        """One line naming the first setting out of range (apply_overrides and the task's constructor call it)."""
        non_negative(self, section, "max_article_chars", "0 keeps them whole")


def article_prompt(article: str, max_chars: int) -> str:
    """The article (whitespace collapsed, cut to `max_chars` at a word boundary) followed by "\\nTL;DR:"."""
    text = " ".join(article.split())
    if max_chars and len(text) > max_chars:
        cut = text[: max_chars + 1]
        space = cut.rfind(" ")
        text = (cut[:space] if space > 0 else text[:max_chars]).rstrip()
    return f"{text}\n{MARKER}"


def highlights_text(highlights: str) -> str:
    """The highlight sentences (one per line in the dataset) as one paragraph."""
    return re.sub(r"\s+", " ", highlights).strip()


class CNNDM:
    """Summarise CNN/DailyMail articles with a TL;DR-trained policy; judged against the highlights."""

    name = TASK
    description = (
        "evaluation only: summarize CNN/DailyMail news with a TL;DR-trained policy, judge win rate vs "
        "the highlights (DPO paper, out of distribution; --task tldr --eval-task cnn-dm)"
    )
    Config = Config
    eval_only = True
    train_task = "tldr"
    """The task to train on before evaluating here (named in the runner's error message)."""
    generation = TLDR.generation
    judge_prompt = "summarization-news"
    gold_reward = None

    def __init__(self, config: Config, cache_dir: Path):
        config.check()
        self.config = config
        self.cache_dir = Path(cache_dir)
        self._prompts: list[dict] | None = None

    @property
    def reference_key(self) -> str:
        """Identifies the articles (there is no model of this task's own)."""
        return model_key(TASK, self.config.dataset) + f":{self.config.subset}:{self.config.split}"

    def build(self) -> None:
        """Load the articles once per instance."""
        if self._prompts is not None:
            return
        cfg = self.config
        rows = hub.load_rows(cfg.dataset, cfg.split, task=TASK, key="eval_task.dataset", config_name=cfg.subset)
        prompts = []
        checked = checked_rows(rows, COLUMNS, task=TASK, name=cfg.dataset, key="eval_task.dataset", split=cfg.split)
        for i, (where, row) in enumerate(checked):
            article, highlights = (text_field(row, c, where, COLUMNS) for c in COLUMNS)
            prompt = article_prompt(article, cfg.max_article_chars)
            prompts.append(
                {
                    "prompt": prompt,
                    "reference": highlights_text(highlights),
                    "query": judge_query(prompt),
                    "id": str(row.get("id", i)),
                }
            )
        self._prompts = prompts

    def eval_prompts(self) -> list[dict]:
        """The articles as TL;DR prompts, each with its highlights as the reference summary (a run takes the first
        eval.max_prompts: 256, as TL;DR's)."""
        self.build()
        return list(self._prompts)

    def load_policy(self):
        raise UserError(EVAL_ONLY)

    def sft_data(self) -> list[dict]:
        raise UserError(EVAL_ONLY)

    def preference_data(self, split: str = "train") -> list[dict]:
        raise UserError(EVAL_ONLY)
