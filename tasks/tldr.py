"""The DPO paper's summarization experiment: Reddit TL;DR posts, human preference pairs, judged against references.

Data (Hugging Face hub ids, or local copies in the same schema):
- `CarperAI/openai_summarize_tldr` (prompt, label; splits train / valid / test): the SFT
  demonstrations (train) and the evaluation prompts (test; the label is the reference summary the
  judge compares with). A prompt reads "SUBREDDIT: r/...\\nTITLE: ...\\nPOST: ...\\nTL;DR:".
- `CarperAI/openai_summarize_comparisons` (prompt, chosen, rejected; splits train / test / valid1
  / valid2): the preference pairs. Its prompt stops after the post and both summaries begin
  with "TL;DR:".

Every row is brought to one boundary: the prompt ends with "TL;DR:" and the completion is the
summary after it with one leading space, so prompt + completion is the text the SFT model saw
and tokenizes alone exactly as it does joined (the space opens the first summary token).

The starting policy is CarperAI's GPT-J-6B SFT model, as in the paper (any causal LM id or
local directory works). Prompts longer than `max_prompt_tokens` tokens of that model are cut
or dropped (`long_prompts`), so that prompt + completion fits `train.max_length`, which runs
on this task default to 640 tokens.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.checks import one_of
from bench.contracts import Generation
from bench.errors import UserError
from bench.tasks.common import PreferenceRows, check_settings, checked_rows, chunks_until, load_usable, text_field

TASK = "tldr"
MARKER = "TL;DR:"
"""Ends every prompt; the summary follows after one space."""
LONG_PROMPTS = ("truncate", "drop")


@dataclass
class Config:
    """Where the TL;DR data and the starting policy come from, and how much of them is used (`--set task.KEY=VALUE`)."""

    model: str = "CarperAI/openai_summarize_tldr_sft"
    """Starting (SFT) policy and reference: a hub id or a local directory (the paper's GPT-J-6B SFT model, default)."""
    sft_dataset: str = "CarperAI/openai_summarize_tldr"
    """Demonstrations (train split) and evaluation prompts with reference summaries (test split): hub id or local
    copy, columns prompt, label."""
    preference_dataset: str = "CarperAI/openai_summarize_comparisons"
    """Human preference pairs (train and test splits): hub id or local copy, columns prompt, chosen, rejected."""
    max_train_pairs: int = 0
    """Training preference pairs kept, the first ones of the train split; 0 keeps all."""
    max_test_pairs: int = 1000
    """Held-out preference pairs (implicit-reward accuracy), the first ones of the test split; 0 keeps all."""
    max_sft_examples: int = 0
    """SFT demonstrations kept, the first ones of the train split; 0 keeps all."""
    max_prompt_tokens: int = 512
    """Longest prompt in tokens of the model's tokenizer; keep it below train.max_length minus the summary length."""
    long_prompts: str = "truncate"
    """Prompts over max_prompt_tokens: "truncate" keeps the subreddit, the title and the beginning of the post, cut
    at a word, then "\\nTL;DR:"; "drop" skips the row."""

    def check(self, section: str = "task") -> None:
        """One line naming the first setting out of range (apply_overrides and the task's constructor call it)."""
        check_settings(self, ("max_train_pairs", "max_test_pairs", "max_sft_examples"), section)
        one_of(self, section, "long_prompts", LONG_PROMPTS)


def split_summary(prompt: str, summary: str) -> tuple[str, str]:
    """(prompt ending in "TL;DR:", " " + summary) from either dataset's way of placing the "TL;DR:" marker."""
    prompt, summary = prompt.rstrip(), summary.strip()
    if summary.startswith(MARKER):
        summary = summary[len(MARKER) :].strip()
    if not prompt.endswith(MARKER):
        prompt = f"{prompt}\n{MARKER}"
    return prompt, " " + summary if summary else ""


def judge_query(prompt: str) -> str:
    """The post as a judge reads it (an evaluation row's "query"): the prompt without its closing "TL;DR:" cue."""
    prompt = prompt.rstrip()
    return prompt[: -len(MARKER)].rstrip() if prompt.endswith(MARKER) else prompt


def truncate_post(prompt: str, n_tokens, max_tokens: int) -> str | None:
    """`prompt` cut to at most `max_tokens` tokens (n_tokens: str -> int), keeping its header and the post's beginning.

    The header (everything up to "POST:") stays whole; the post loses words from its end and the
    prompt again ends with "\\nTL;DR:". None if even the header alone is too long.
    """
    base = judge_query(prompt)
    start = base.find("POST:")
    start = start + len("POST:") if start >= 0 else 0
    head, body = base[:start], base[start:]
    ends = [m.end() for m in re.finditer(r"\S+", body)]

    def cut(k: int) -> str:
        return (head + body[: ends[k - 1]] if k else head.rstrip()) + f"\n{MARKER}"

    if n_tokens(cut(0)) > max_tokens:
        return None
    lo, hi = 0, len(ends)  # the largest k whose prompt fits lies in [lo, hi]
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if n_tokens(cut(mid)) <= max_tokens:
            lo = mid
        else:
            hi = mid - 1
    return cut(lo)


class TLDR(PreferenceRows):
    """Summarise Reddit posts (TL;DR); GPT-J SFT policy, human preference pairs, judge win rate vs the references."""

    name = TASK
    description = (
        "summarize Reddit posts (TL;DR): CarperAI SFT data and human comparisons, judge win rate vs the "
        "reference summaries (DPO paper, exp. 2)"
    )
    Config = Config
    # The paper judged the first 256 test prompts (eval.max_prompts).
    generation = Generation(
        max_new_tokens=64, temperature=1.0, top_p=1.0, samples_per_prompt=1, max_prompts=256, batch_size=16
    )
    judge_prompt = "summarization-concise"
    gold_reward = None
    eos_after_completion = True
    """A summary is a whole response: training ends it with eos, so the policy learns to stop after one."""
    run_defaults = {"dpo.beta": 0.5, "train.max_length": 640}
    """The paper's TL;DR beta; room for a 512-token prompt and its summary (the harness's 128 would cut the posts)."""

    def __init__(self, config: Config, cache_dir: Path):
        super().__init__(config, cache_dir)
        self._tokenizer = None
        self.stats: dict[str, int] = {}
        """What loading did to the rows: prompts truncated or dropped, pairs with identical summaries skipped."""

    # ---------------------------------------------------------------- loading

    def build(self) -> None:
        """Load and normalise every row the task serves, once per instance (nothing is written to disk)."""
        if self._data is not None:
            return
        cfg = self.config
        self._tokenizer = self._tokenizer_for_prompts()
        self.stats = {"truncated": 0, "dropped": 0, "identical_pairs": 0}
        sft = ("sft_dataset", ("prompt", "label"))
        pairs = ("preference_dataset", ("prompt", "chosen", "rejected"))
        data = {
            "sft": self._load(*sft, "train", cfg.max_sft_examples),
            "eval": self._load(*sft, "test", 0),  # all of them: eval.max_prompts limits what a run evaluates
            "train": self._load(*pairs, "train", cfg.max_train_pairs),
            "test": self._load(*pairs, "test", cfg.max_test_pairs),
        }
        self._data = {
            "sft": [{"prompt": r["prompt"], "completion": r["label"]} for r in data["sft"]],
            "eval": [
                {"prompt": r["prompt"], "reference": r["label"].strip(), "query": judge_query(r["prompt"])}
                for r in data["eval"]
            ],
            "train": data["train"],
            "test": data["test"],
        }
        s = self.stats
        print(
            f"tldr: {len(data['sft'])} SFT demonstrations, {len(data['train'])} + {len(data['test'])} preference "
            f"pairs, {len(data['eval'])} evaluation prompts; prompts over {cfg.max_prompt_tokens} tokens: "
            f"{s['truncated']} truncated, {s['dropped']} dropped; {s['identical_pairs']} pairs with chosen == rejected "
            "skipped",
            file=sys.stderr,
        )

    def _load(self, setting: str, columns: tuple[str, ...], split: str, limit: int) -> list[dict]:
        """The first `limit` usable rows of a split (0: all), normalised, with prompts that fit."""
        name = str(getattr(self.config, setting))
        return load_usable(
            name,
            split,
            limit,
            lambda rows: self._normalise(rows, name, setting, columns, split, limit),
            task=TASK,
            key=f"task.{setting}",
            stats=self.stats,
        )

    def _normalise(
        self, rows: list[dict], name: str, setting: str, columns: tuple[str, ...], split: str, limit: int
    ) -> tuple[list[dict], dict[str, int]]:
        """Rows in the task's form (see the module docstring) and counts of what was cut or skipped.

        Rows are read in order and in chunks (prompts are tokenized a chunk at a time), never
        further than the rows needed to keep `limit`.
        """
        out, counts = [], dict.fromkeys(self.stats, 0)
        for start, raw in chunks_until(rows, out, limit):
            chunk = [
                self._row(row, columns, where)
                for where, row in checked_rows(
                    raw, columns, task=TASK, name=name, key=f"task.{setting}", split=split, start=start
                )
            ]
            pairs = [r for r in chunk if "chosen" not in r or r["chosen"] != r["rejected"]]
            counts["identical_pairs"] += len(chunk) - len(pairs)  # no preference to learn from
            for row, fitted in zip(pairs, self._fit([r["prompt"] for r in pairs])):
                if fitted is None:
                    counts["dropped"] += 1
                    continue
                counts["truncated"] += fitted != row["prompt"]
                out.append({**row, "prompt": fitted})
        return out, counts

    @staticmethod
    def _row(row: dict, columns: tuple[str, ...], where: str) -> dict:
        """One raw row checked and brought to the prompt/completion boundary."""
        prompt = text_field(row, "prompt", where, columns)
        out = {}
        for column in columns[1:]:
            out["prompt"], out[column] = split_summary(prompt, text_field(row, column, where, columns))
            if not out[column]:
                raise UserError(
                    f"{where}: '{column}' has no summary after {MARKER!r}; fix the row or drop it from the dataset"
                )
        return out

    def _n_tokens(self, text: str) -> int:
        return len(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    def _fit(self, prompts: list[str]) -> list[str | None]:
        """Each prompt itself if it fits max_prompt_tokens; else cut (long_prompts=truncate) or None (drop)."""
        limit = self.config.max_prompt_tokens
        # A token covers at least one byte of text, bar one inserted leading space (sentencepiece):
        # a prompt shorter than the limit in bytes needs no tokenizing.
        check = [i for i, p in enumerate(prompts) if len(p.encode()) >= limit]
        lengths = (
            [len(ids) for ids in self._tokenizer([prompts[i] for i in check], add_special_tokens=False)["input_ids"]]
            if check
            else []
        )
        out: list[str | None] = list(prompts)
        for i, n in zip(check, lengths):
            if n > limit:
                out[i] = (
                    truncate_post(prompts[i], self._n_tokens, limit) if self.config.long_prompts == "truncate" else None
                )
        return out
