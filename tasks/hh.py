"""The DPO paper's single-turn dialogue experiment: Anthropic HH, judged against the chosen responses.

Data: `Anthropic/hh-rlhf` (columns chosen, rejected; splits train, test), or a local copy in the
same schema. Each cell is a whole dialogue, "\\n\\nHuman: ...\\n\\nAssistant: ...". Only
single-turn dialogues are kept (exactly one Human turn, then one Assistant turn), as in the
paper. The prompt is the text up to and including "\\n\\nAssistant:" and each completion is the
rest of its dialogue, so prompt + completion is the dialogue exactly (the response's leading space
opens its first token). A pair is skipped, and counted, when either dialogue is not single-turn,
when the two dialogues' prompts differ, when a response is empty, or when both responses are the
same. Prompts longer than `max_prompt_tokens` tokens of the model are dropped (cutting a question
could change what it asks), counted as well.

Starting policy and reference: the paper had no SFT model for HH and fine-tuned Pythia-2.8B on
the chosen responses of the train pairs ("preferred-FT"). With `reference=preferred-ft` (the
default) build() does the same, with the paper code's settings (RMSprop, one epoch at lr 5e-7,
batch 64, 150 warmup steps, gradient norm clipped at 10, 512 tokens), and caches the result
under `<cache_dir>/hh/<hash of base model, demonstrations and settings>/policy`; `reference=base`
starts from the base model as it is. Evaluation: the single-turn test prompts (a run takes the
first eval.max_prompts, 256 by default), judged against their chosen response with the paper's
"dialogue" judge prompt.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from bench import hub
from bench.artifacts import build_once, content_key
from bench.checks import at_least, non_negative, one_of, positive
from bench.contracts import Generation
from bench.tasks.common import (
    PreferenceRows,
    check_settings,
    checked_rows,
    keep_fitting,
    load_usable,
    model_key,
    pair_splits,
    text_field,
)

TASK = "hh"
HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"
COLUMNS = ("chosen", "rejected")
REFERENCES = ("preferred-ft", "base")
SKIPS = {
    "multi_turn": "not single-turn",
    "prompt_mismatch": "prompts differ",
    "empty_response": "empty response",
    "identical_pairs": "chosen == rejected",
    "long_prompts": "prompt over {tokens} tokens",
}
"""Why a pair is skipped (the keys of HH.stats) and how the build summary names it."""
BUILD_VERSION = 2
"""Bump when a change to the preferred-FT build changes what it produces: old caches are then ignored."""
SFT_OPTIMIZER, SFT_MAX_GRAD_NORM, SFT_MAX_LENGTH, SFT_SEED = "rmsprop", 10.0, 512, 0
"""Fixed settings of the preferred-FT build, those of the paper's code."""


@dataclass
class Config:
    """Where the HH data and the base model come from, how the starting policy is made, how much data is used
    (`--set task.KEY=VALUE`)."""

    model: str = "EleutherAI/pythia-2.8b"
    """Base model: a hub id or a local directory (the paper's Pythia-2.8B by default)."""
    dataset: str = "Anthropic/hh-rlhf"
    """Preference dialogues (train and test splits): hub id or local copy, columns chosen, rejected."""
    reference: str = "preferred-ft"
    """Starting policy and reference: "preferred-ft" (the base model fine-tuned on the chosen responses of the train
    pairs at build time, cached, as in the paper) or "base" (the base model as it is)."""
    sft_steps: int = 0
    """Optimizer steps of the preferred-FT build; 0 makes one epoch over the train pairs' chosen responses."""
    sft_lr: float = 5e-7
    """Peak learning rate of the preferred-FT build (RMSprop, as in the paper's code)."""
    sft_batch_size: int = 64
    """Demonstrations per optimizer step of the preferred-FT build."""
    sft_warmup_steps: int = 150
    """Steps of linear learning-rate warmup of the preferred-FT build."""
    max_train_pairs: int = 0
    """Training preference pairs kept (also the preferred-FT demonstrations), the first usable ones; 0 keeps all."""
    max_test_pairs: int = 1000
    """Held-out preference pairs (implicit-reward accuracy), the first usable ones of the test split; 0 keeps all."""
    max_prompt_tokens: int = 256
    """Longest prompt in tokens of the model's tokenizer (the paper code's 256); longer pairs are dropped. Keep it
    below train.max_length."""

    def check(self, section: str = "task") -> None:
        """One line naming the first setting out of range (apply_overrides and the task's constructor call it)."""
        check_settings(self, ("max_train_pairs", "max_test_pairs"), section)
        one_of(self, section, "reference", REFERENCES)
        non_negative(self, section, "sft_steps", "0 makes one epoch")
        non_negative(self, section, "sft_warmup_steps")
        at_least(self, section, "sft_batch_size", 1)
        positive(self, section, "sft_lr", "e.g. 5e-7")


def split_dialogue(text: str) -> tuple[str, str] | None:
    """(prompt, response) of a single-turn dialogue, the prompt ending in "\\n\\nAssistant:"; None for other dialogues.

    Leading white space is normalised to the dataset's "\\n\\nHuman:" opening; otherwise
    prompt + response is the dialogue to the character.
    """
    body = text.lstrip()
    if not body.startswith(HUMAN.lstrip()):
        return None
    text = "\n\n" + body
    if text.count(HUMAN) != 1 or text.count(ASSISTANT) != 1:
        return None
    cut = text.index(ASSISTANT) + len(ASSISTANT)
    return text[:cut], text[cut:]


def user_query(prompt: str) -> str:
    """The human's turn of a single-turn prompt, as a judge reads it (an evaluation row's "query")."""
    return prompt.split(HUMAN, 1)[-1].rsplit(ASSISTANT, 1)[0].strip()


def single_turn_pair(chosen: str, rejected: str) -> tuple[dict | None, str | None]:
    """({"prompt", "chosen", "rejected"}, None) for a usable pair of dialogues, else (None, the SKIPS key for why)."""
    first, second = split_dialogue(chosen), split_dialogue(rejected)
    if first is None or second is None:
        return None, "multi_turn"
    if first[0] != second[0]:
        return None, "prompt_mismatch"
    if not first[1].strip() or not second[1].strip():
        return None, "empty_response"
    if first[1].strip() == second[1].strip():
        return None, "identical_pairs"
    return {"prompt": first[0], "chosen": first[1], "rejected": second[1]}, None


class HH(PreferenceRows):
    """Single-turn dialogue (Anthropic HH); Pythia-2.8B fine-tuned on the chosen responses; judge win rate vs chosen."""

    name = TASK
    description = (
        "single-turn dialogue (Anthropic HH): Pythia-2.8B preferred-FT policy, judge win rate vs the chosen "
        "responses (DPO paper, exp. 3)"
    )
    Config = Config
    # The paper judged the first 256 test prompts (eval.max_prompts).
    generation = Generation(
        max_new_tokens=128, temperature=1.0, top_p=1.0, samples_per_prompt=1, max_prompts=256, batch_size=16
    )
    judge_prompt = "dialogue"
    gold_reward = None
    eos_after_completion = True
    """A response is a whole turn: training (the preferred-FT build too) ends it with eos, so the policy stops."""
    run_defaults = {"dpo.beta": 0.1, "train.max_length": 512}
    """The paper's beta; room for a 256-token prompt and its response (the paper code's 512; the harness's 128 would
    cut them)."""

    def __init__(self, config: Config, cache_dir: Path):
        super().__init__(config, cache_dir)
        self._tokenizer = None
        self._artifact_dir: Path | None = None
        self.stats: Counter = Counter()
        """Rows read per split ("rows_train", "rows_test") and pairs skipped, by the SKIPS reason."""

    # ---------------------------------------------------------------- data

    def _load_data(self) -> dict[str, list[dict]]:
        """Load and normalise every row the task serves, once per instance."""
        if self._data is not None:
            return self._data
        cfg = self.config
        self._tokenizer = self._tokenizer_for_prompts()
        self.stats = Counter()
        train = self._load("train", cfg.max_train_pairs)
        # One pass over the whole test split serves both the held-out pairs and the evaluation prompts
        # (all of them: eval.max_prompts limits what a run evaluates).
        test = self._load("test", 0)
        self._data = pair_splits(train, test, cfg.max_test_pairs, lambda p: user_query(p["prompt"]))
        s = self.stats
        print(
            f"hh: {len(train)} train pairs (of {s['rows_train']} rows read), {len(self._data['test'])} test pairs and "
            f"{len(self._data['eval'])} evaluation prompts (of {s['rows_test']} rows read); pairs skipped: "
            + ", ".join(f"{s[k]} {what.format(tokens=cfg.max_prompt_tokens)}" for k, what in SKIPS.items()),
            file=sys.stderr,
        )
        return self._data

    def _load(self, split: str, limit: int) -> list[dict]:
        """The first `limit` usable single-turn pairs of a split (0: all), reading past skipped rows as needed."""
        return load_usable(
            self.config.dataset,
            split,
            limit,
            lambda rows: self._normalise(rows, split, limit),
            task=TASK,
            key="task.dataset",
            stats=self.stats,
        )

    def _normalise(self, rows: list[dict], split: str, limit: int) -> tuple[list[dict], Counter]:
        """Usable pairs of `rows` in order (at most `limit`), and counts of the rows read and the pairs skipped."""
        counts, pairs = Counter({f"rows_{split}": len(rows)}), []
        for where, row in checked_rows(
            rows, COLUMNS, task=TASK, name=self.config.dataset, key="task.dataset", split=split
        ):
            pair, skip = single_turn_pair(*(text_field(row, c, where, COLUMNS) for c in COLUMNS))
            if skip:
                counts[skip] += 1
            else:
                pairs.append(pair)
        kept, counts["long_prompts"] = keep_fitting(pairs, self._tokenizer, self.config.max_prompt_tokens, limit)
        return kept, counts

    def build(self) -> None:
        """Load the data and, for reference=preferred-ft, fine-tune and cache the starting policy unless cached."""
        self._load_data()
        if self.config.reference == "preferred-ft":
            build_once(self.artifact_dir, self._build_policy)

    # ---------------------------------------------------------------- the starting policy

    def _sft_settings(self) -> dict:
        cfg = self.config
        return {
            "lr": cfg.sft_lr,
            "batch_size": cfg.sft_batch_size,
            "max_steps": cfg.sft_steps,
            "epochs": 1.0,
            "warmup_steps": cfg.sft_warmup_steps,
            "optimizer": SFT_OPTIMIZER,
            "max_grad_norm": SFT_MAX_GRAD_NORM,
            "max_length": SFT_MAX_LENGTH,
        }

    @property
    def artifact_dir(self) -> Path:
        """Where the preferred-FT policy of this base model, data and settings is cached."""
        if self._artifact_dir is not None:
            return self._artifact_dir
        demonstrations = hashlib.sha256(json.dumps(self._load_data()["sft"], sort_keys=True).encode()).hexdigest()
        identity = {
            "model": model_key(TASK, self.config.model),
            "demonstrations": demonstrations,
            "settings": self._sft_settings(),
            "seed": SFT_SEED,
            "build_version": BUILD_VERSION,
        }
        self._artifact_dir = self.cache_dir / TASK / content_key(identity)
        return self._artifact_dir

    def _build_policy(self, out: Path) -> dict:
        """Fine-tune the base model on the train pairs' chosen responses; save it under out/policy."""
        import torch

        from bench import preference
        from bench.train import TrainConfig

        t0 = time.time()
        model, tokenizer = hub.load_causal_lm(
            self.config.model, task=TASK, key="task.model", cache_dir=self.cache_dir, dtype=torch.float32
        )
        log: list[dict] = []
        examples = self._load_data()["sft"]
        print(
            f"hh: preferred-FT of {self.config.model} on {len(examples)} chosen responses (cached for later runs)",
            file=sys.stderr,
        )
        model = preference.train_on_demonstrations(
            model,
            tokenizer,
            examples,
            TrainConfig(**self._sft_settings()),
            seed=SFT_SEED,
            log=log.append,
            desc="hh preferred-FT",
            add_eos=self.eos_after_completion,
        )
        model.save_pretrained(out / "policy")
        tokenizer.save_pretrained(out / "policy")
        return {
            "model": self.config.model,
            "examples": len(examples),
            "settings": self._sft_settings(),
            "seed": SFT_SEED,
            "build_version": BUILD_VERSION,
            "seconds": round(time.time() - t0, 1),
            "train_log": log,
        }

    @property
    def reference_key(self) -> str:
        key = model_key(TASK, self.config.model)
        return key if self.config.reference == "base" else f"{key}+preferred-ft@{self.artifact_dir.name}"

    def load_policy(self):
        """A fresh copy of the starting policy (preferred-FT or the base model), in eval mode, and its tokenizer."""
        if self.config.reference == "base":
            return super().load_policy()
        self.build()
        return hub.load_causal_lm(str(self.artifact_dir / "policy"), task=TASK, key="task.model")
