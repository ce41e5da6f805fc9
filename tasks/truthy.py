"""Truthfulness preferences (jondurbin/truthy-dpo-v0.1) on Phi-2 with LoRA, judged against the chosen answers.

Data: `jondurbin/truthy-dpo-v0.1` (columns id, source, system, prompt, chosen, rejected; one
split, train), or a local copy in the same schema. The hub has no held-out split, so one is
carved deterministically: a row is held out when a seeded hash of its prompt text falls below
`test_fraction` (sha256 of "<split_seed>\\0<prompt>", read as a number in [0, 1)). Hashing the
prompt rather than shuffling keeps each row's side fixed whatever the other rows are (a row
added to or removed from the dataset moves no other row), and puts every copy of a repeated
question on the same side. Held-out rows give the test preference pairs and the evaluation
prompts (reference = the chosen answer); the others the training pairs and the SFT
demonstrations (their chosen answers).

Prompt format: with a tokenizer that has a chat template, the system text (when not empty) and
the question go through `apply_chat_template(..., add_generation_prompt=True)` and the answer
follows as is. Otherwise Phi-2's documented QA format is used, "Instruct: <system>\\n\\n<question>
\\nOutput:", and the answer follows after one space.

Model and recipe: microsoft/phi-2 (any causal LM id or local directory works), trained with a
LoRA adapter at beta 0.2, lr 5e-7, batch 4 (`run_defaults`; the adapter has the shape of the
alignment-handbook's DPO QLoRA recipe, r = alpha = 16 and dropout 0.05, on every linear layer,
which for Phi-2 are q_proj, k_proj, v_proj, dense, fc1 and fc2). Pairs with identical answers are skipped and prompts
over `max_prompt_tokens` are dropped, both counted.
"""

from __future__ import annotations

import hashlib
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from bench import hub
from bench.checks import between
from bench.contracts import Generation
from bench.errors import UserError
from bench.tasks.common import (
    PreferenceRows,
    check_settings,
    checked_rows,
    keep_fitting,
    optional_text_field,
    pair_splits,
    text_field,
)

TASK = "truthy"
COLUMNS = ("prompt", "chosen", "rejected")
"""The columns read (system too, when present); the dataset also has id and source."""


@dataclass
class Config:
    """Where the truthy data and the model come from, how the held-out split is carved, how much is used
    (`--set task.KEY=VALUE`)."""

    model: str = "microsoft/phi-2"
    """Starting policy and reference: a hub id or a local directory (Phi-2 by default)."""
    dataset: str = "jondurbin/truthy-dpo-v0.1"
    """Preference pairs (train split only): hub id or local copy, columns id, source, system, prompt, chosen,
    rejected."""
    test_fraction: float = 0.1
    """Share of the prompts held out for test pairs and evaluation prompts (by a seeded hash of the prompt text)."""
    split_seed: int = 0
    """Seed of the held-out split's hash; another seed holds out other prompts."""
    max_train_pairs: int = 0
    """Training preference pairs kept (also the SFT demonstrations), the first ones not held out; 0 keeps all."""
    max_test_pairs: int = 0
    """Held-out preference pairs (implicit-reward accuracy), the first ones; 0 keeps all."""
    max_prompt_tokens: int = 512
    """Longest formatted prompt in tokens of the model's tokenizer; longer pairs are dropped. Keep it below
    train.max_length."""

    def check(self, section: str = "task") -> None:
        """One line naming the first setting out of range (apply_overrides and the task's constructor call it)."""
        check_settings(self, ("max_train_pairs", "max_test_pairs"), section)
        between(self, section, "test_fraction", 0, 1, "()", "a share, e.g. 0.1")


def held_out(prompt: str, fraction: float, seed: int) -> bool:
    """Whether the row with this prompt belongs to the held-out split (see the module docstring)."""
    digest = hashlib.sha256(f"{seed}\0{prompt.strip()}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def format_dialogue(tokenizer, system: str, prompt: str, answer: str) -> tuple[str, str]:
    """(prompt text, completion) in the model's format: its chat template if it has one, else "Instruct: ...".

    Without a template the prompt is "Instruct: <system>\\n\\n<question>\\nOutput:" and the answer follows after
    one space.
    """
    system, prompt, answer = system.strip(), prompt.strip(), answer.strip()
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": prompt}]
        try:
            text = tokenizer.apply_chat_template(
                ([{"role": "system", "content": system}] if system else []) + messages,
                tokenize=False,
                add_generation_prompt=True,
            )
        except Exception:  # templates without a system role raise (jinja's raise_exception): prepend it to the question
            messages[0]["content"] = f"{system}\n\n{prompt}" if system else prompt
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text, answer
    instruct = f"{system}\n\n{prompt}" if system else prompt
    return f"Instruct: {instruct}\nOutput:", " " + answer


class Truthy(PreferenceRows):
    """Truthful answers vs confident fabrications (truthy-dpo); Phi-2 + LoRA; judge win rate vs the chosen answers."""

    name = TASK
    description = (
        "truthfulness preferences (jondurbin/truthy-dpo-v0.1): Phi-2 with LoRA, held-out split carved by "
        "prompt hash, judge win rate vs the chosen answers"
    )
    Config = Config
    generation = Generation(
        max_new_tokens=256, temperature=1.0, top_p=1.0, samples_per_prompt=1, max_prompts=256, batch_size=8
    )
    judge_prompt = "dialogue"
    gold_reward = None
    eos_after_completion = True
    """An answer is a whole response: training ends it with eos (a chat template's end of turn), so the policy
    stops."""
    run_defaults = {
        "dpo.beta": 0.2,
        "train.lr": 5e-7,
        "train.batch_size": 4,
        "train.lora_r": 16,
        "train.lora_alpha": 16,
        "train.lora_dropout": 0.05,
        "train.max_length": 1024,
    }
    """Phi-2 on truthy-dpo: beta 0.2, lr 5e-7, batch 4, a LoRA adapter shaped as in the alignment-handbook DPO QLoRA
    recipe (r = alpha = 16, dropout 0.05, every linear layer); room for a 512-token prompt and a long answer."""

    def __init__(self, config: Config, cache_dir: Path):
        super().__init__(config, cache_dir)
        self.stats: Counter = Counter()
        """Rows read ("rows"), pairs with identical answers skipped ("identical_pairs"), prompts too long dropped
        ("long_prompts")."""

    def build(self) -> None:
        """Load, split and format every row the task serves, once per instance (nothing is written to disk)."""
        if self._data is not None:
            return
        cfg = self.config
        tokenizer = self._tokenizer_for_prompts()
        rows = hub.load_rows(cfg.dataset, "train", task=TASK, key="task.dataset")
        self.stats = Counter(rows=len(rows))
        splits: dict[str, list[dict]] = {"train": [], "test": []}
        for where, row in checked_rows(rows, COLUMNS, task=TASK, name=cfg.dataset, key="task.dataset", split="train"):
            prompt, chosen, rejected = (text_field(row, c, where, COLUMNS) for c in COLUMNS)
            if chosen.strip() == rejected.strip():
                self.stats["identical_pairs"] += 1  # no preference to learn from
                continue
            system = optional_text_field(row, "system", where)
            text, chosen = format_dialogue(tokenizer, system, prompt, chosen)
            rejected = format_dialogue(tokenizer, system, prompt, rejected)[1]
            side = "test" if held_out(prompt, cfg.test_fraction, cfg.split_seed) else "train"
            splits[side].append({"prompt": text, "chosen": chosen, "rejected": rejected, "query": prompt.strip()})
        for side, limit in (("train", cfg.max_train_pairs), ("test", 0)):
            splits[side], dropped = keep_fitting(splits[side], tokenizer, cfg.max_prompt_tokens, limit)
            self.stats["long_prompts"] += dropped
            if not splits[side]:
                raise UserError(
                    f"task {TASK}: {cfg.dataset} (task.dataset) leaves no usable {side} pairs with "
                    f"task.test_fraction={cfg.test_fraction}; use more rows or another test_fraction"
                )
        self._data = pair_splits(splits["train"], splits["test"], cfg.max_test_pairs, lambda p: p["query"])
        form = "chat template" if getattr(tokenizer, "chat_template", None) else "Instruct/Output"
        print(
            f"truthy: {len(rows)} rows, {len(splits['train'])} train pairs, {len(self._data['test'])} held-out pairs "
            f"and {len(self._data['eval'])} evaluation prompts (test_fraction {cfg.test_fraction}, split_seed "
            f"{cfg.split_seed}); skipped: {self.stats['identical_pairs']} chosen == rejected, "
            f"{self.stats['long_prompts']} prompts over {cfg.max_prompt_tokens} tokens; prompt format: {form}",
            file=sys.stderr,
        )
