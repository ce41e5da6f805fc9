"""The DPO paper's controlled-sentiment experiment with its data and models: IMDb, GPT-2-large, a RoBERTa gold reward.

x is the first 2-8 tokens of an IMDb review, cut at a word boundary of the policy's tokenizer;
the policy should continue it with positive sentiment. As in the paper:

- data: `stanfordnlp/imdb` (columns text, label with 1 = positive; splits train, test and
  unsupervised, the last unused), a hub id or a local copy in the same schema;
- the starting (SFT) policy: `task.model` (gpt2-large) fine-tuned at build time on windows of the
  train reviews, or `task.sft_model`, an SFT checkpoint that is used as it is;
- the gold reward: P(POSITIVE) of prompt + completion under siebert/sentiment-roberta-large-english
  (`task.gold_model`; the label is looked up by its name, `task.gold_label`, never by position);
- preferences: `samples_per_prefix` completions sampled from the SFT policy per prefix of a train
  review, every pair labelled by the gold reward; evaluation prompts: prefixes of test reviews.

Train reviews are split (seeded) into the preference prefixes and the fine-tuning reviews; test
reviews into the evaluation prompts, the held-out preference prefixes and the reviews on which
perplexity and the gold reward's accuracy are reported. Reviews are cleaned as in the embedded
task; repeated reviews are dropped, and so are test reviews that also appear in train. The build
runs the stages of tasks/review_prefix.py and is cached under `<cache_dir>/imdb/<hash>/`.
"""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass
from pathlib import Path

from bench import hub
from bench.artifacts import build_once, content_key
from bench.checks import require
from bench.errors import UserError
from bench.tasks.common import checked_rows, require_column, text_field
from bench.tasks.review_prefix import (
    BuiltTask,
    Stages,
    carve,
    check_counts,
    clean_review,
    encode_texts,
    load_fast_tokenizer,
    model_identity,
    policy_stage,
    preference_stage,
    prompt_stage,
)

TASK = "imdb"
BUILD_VERSION = 1
"""Bump when a change to this file or to tasks/review_prefix.py changes what a build produces: old caches are then
ignored."""
COLUMNS = ("text", "label")


@dataclass
class Config:
    """Where the IMDb data, the policy and the gold reward come from, and how much of them is used
    (`--set task.KEY=VALUE`)."""

    model: str = "gpt2-large"
    """Starting model, fine-tuned on the train reviews at build time (the paper's gpt2-large): hub id, local directory
    or smollm2-135m."""
    sft_model: str = ""
    """An SFT checkpoint (hub id or local directory) to start from as it is, instead of fine-tuning task.model."""
    dataset: str = "stanfordnlp/imdb"
    """The reviews: hub id or local copy with columns text, label (1 = positive) and splits train, test."""
    gold_model: str = "siebert/sentiment-roberta-large-english"
    """Gold reward: a sequence classifier (hub id or local directory) whose P(task.gold_label) of prompt + completion
    is the reward."""
    gold_label: str = "POSITIVE"
    """The gold classifier's label (a name in its config's id2label) whose probability is the reward."""
    seed: int = 0
    """Seed of the build: review splits, prefix lengths, fine-tuning order, sampling."""
    n_eval_prompts: int = 500
    """Evaluation prompts, prefixes of test reviews."""
    n_preference_prefixes: int = 2000
    """Prefixes of train reviews whose sampled completions become the training preference pairs."""
    n_test_preference_prefixes: int = 200
    """Prefixes of test reviews for the held-out preference pairs (implicit-reward accuracy)."""
    n_lm_valid_reviews: int = 250
    """Test reviews on which the policy's perplexity and the gold reward's accuracy are reported."""
    n_lm_reviews: int = 0
    """Train reviews the policy is fine-tuned on (and the SFT demonstrations come from); 0 = all but the preference
    prefixes' reviews."""
    max_sft_examples: int = 0
    """SFT demonstrations kept (one per fine-tuning review, the first ones); 0 keeps all."""
    lm_window: int = 64
    """Tokens per fine-tuning window; reviews are cut into consecutive windows, the first at position 0 like prompts."""
    lm_steps: int = 1000
    """Optimizer steps of fine-tuning (batches of lm_batch_size windows); unused with task.sft_model."""
    lm_batch_size: int = 16
    """Windows per fine-tuning step."""
    lm_lr: float = 5e-5
    """AdamW learning rate of fine-tuning (after a linear warmup)."""
    min_prefix_tokens: int = 2
    """Shortest prompt in tokens."""
    max_prefix_tokens: int = 8
    """Longest prompt in tokens (prompts end at a word boundary, so they tokenize the same alone as in the review)."""
    max_new_tokens: int = 48
    """Length limit of sampled completions and of reference / demonstration continuations, in tokens."""
    samples_per_prefix: int = 4
    """Completions sampled per preference prefix (temperature 1); all pairs of them are labelled."""
    sample_batch_size: int = 64
    """Prompts per sampling batch while building preference data."""
    gold_batch_size: int = 32
    """Texts per batch of the gold classifier."""

    def check(self, section: str = "task") -> None:
        """One line naming the first setting out of range (apply_overrides and the task's constructor call it)."""
        check_counts(self, ("gold_batch_size",), section)
        require(
            bool(self.gold_label.strip()),
            section,
            "gold_label",
            self.gold_label,
            "empty; name the gold classifier's positive label, e.g. POSITIVE",
        )


class GoldReward:
    """P(label) of texts under a sequence classifier, the label found by its name in the classifier's id2label."""

    def __init__(self, name: str, label: str, batch_size: int, *, task: str = TASK, key: str = "task.gold_model"):
        self.model, self.tokenizer = hub.load_sequence_classifier(name, task=task, key=key)
        labels = {str(v): int(k) for k, v in self.model.config.id2label.items()}
        if label not in labels:
            raise UserError(
                f"task {task}: {name} ({key}) has labels {', '.join(sorted(labels))}, none named {label!r}; "
                f"set --set task.gold_label= to the positive one"
            )
        self.index = labels[label]
        """The position of the label in the classifier's output."""
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        context = self.tokenizer.model_max_length
        self.max_length = context if context < 1e9 else self.model.config.max_position_embeddings
        self.batch_size = batch_size

    def __call__(self, texts: list[str]) -> list[float]:
        import torch

        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(
                    texts[start : start + self.batch_size],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                logits = self.model(**batch).logits.float()
                out.extend(torch.softmax(logits, dim=-1)[:, self.index].tolist())
        return out


def _label(row: dict, where: str) -> int:
    require_column(row, "label", where, COLUMNS)
    label = row["label"]
    if type(label) is not int or label not in (0, 1):
        raise UserError(f"{where}: 'label' is {label!r}; it must be 0 (negative) or 1 (positive)")
    return label


def load_split(name: str, split: str, exclude: set[str]) -> list[tuple[str, int]]:
    """The (cleaned text, label) reviews of a split, checked row by row; repeats and texts in `exclude` are dropped."""
    seen = set(exclude)
    reviews = []
    rows = hub.load_rows(name, split, task=TASK, key="task.dataset")
    for where, row in checked_rows(rows, COLUMNS, task=TASK, name=name, key="task.dataset", split=split):
        text, label = clean_review(text_field(row, "text", where, COLUMNS)), _label(row, where)
        if text not in seen:
            seen.add(text)
            reviews.append((text, label))
    return reviews


def _carve(reviews: list, sizes: dict[str, int | None], split: str, cfg: Config) -> dict[str, list]:
    """The reviews of one split cut into disjoint parts of the given sizes (None: the rest), seeded by cfg.seed."""
    need = sum(1 if size is None else size for size in sizes.values())
    if need > len(reviews):
        wanted = ", ".join(f"{name} {'1 or more' if size is None else size}" for name, size in sizes.items())
        raise UserError(
            f"task {TASK}: {cfg.dataset} split {split!r} has {len(reviews)} distinct reviews but the task takes "
            f"{need} ({wanted}); lower the task's counts"
        )
    parts = carve(len(reviews), sizes, f"{TASK}-splits-{cfg.seed}-{split}")
    return {name: [reviews[i] for i in idx] for name, idx in parts.items()}


def _build(cfg: Config, out: Path, cache_dir: Path, identity: dict) -> dict:
    """Every stage of the build, writing into `out`; returns the build log."""
    import torch

    build_log: dict = {
        "config": dataclasses.asdict(cfg),
        "identity": identity,
        "torch_threads": torch.get_num_threads(),
    }
    stages = Stages(TASK, build_log, 6)

    # 1. Reviews: train -> preference prefixes and fine-tuning reviews; test -> everything evaluated.
    train = load_split(cfg.dataset, "train", set())
    test = load_split(cfg.dataset, "test", {text for text, _ in train})
    reviews = {
        **_carve(train, {"preference": cfg.n_preference_prefixes, "lm": cfg.n_lm_reviews or None}, "train", cfg),
        **_carve(
            test,
            {
                "eval": cfg.n_eval_prompts,
                "test_preference": cfg.n_test_preference_prefixes,
                "lm_valid": cfg.n_lm_valid_reviews,
            },
            "test",
            cfg,
        ),
    }
    build_log["splits"] = {name: len(rows) for name, rows in reviews.items()}
    stages.done(
        "data",
        f"{len(train)} train and {len(test)} test reviews, split into "
        + ", ".join(f"{k} {len(v)}" for k, v in reviews.items()),
    )

    # 2. The policy's tokenizer.
    policy, key = (cfg.sft_model, "task.sft_model") if cfg.sft_model else (cfg.model, "task.model")
    tokenizer = load_fast_tokenizer(policy, task=TASK, key=key, cache_dir=cache_dir)
    tokenizer.save_pretrained(out / "tokenizer")
    encoded = {name: encode_texts(tokenizer, [text for text, _ in rows]) for name, rows in reviews.items()}
    build_log["tokenizer"] = {"vocab_size": len(tokenizer), "lm_tokens": sum(len(e.ids) for e in encoded["lm"])}
    stages.done(
        "tokenizer",
        f"the tokenizer of {policy}, {len(tokenizer)} tokens; the fine-tuning reviews are "
        f"{build_log['tokenizer']['lm_tokens']} tokens",
    )

    # 3. Prompts: evaluation prompts, SFT demonstrations, preference prefixes.
    eval_rows, preference_prompts, message = prompt_stage(TASK, cfg, tokenizer, encoded, out, pretrained=True)
    stages.done("prompts", message)

    # 4. Gold reward, and its accuracy on whole held-out reviews (cut to its context).
    gold = GoldReward(cfg.gold_model, cfg.gold_label, cfg.gold_batch_size)
    valid = reviews["lm_valid"]
    scores = gold([text for text, _ in valid])
    accuracy = statistics.fmean(int(s > 0.5) == label for s, (_, label) in zip(scores, valid))
    build_log["gold_reward"] = {
        "label": cfg.gold_label,
        "label_index": gold.index,
        "accuracy_full_review": accuracy,
        "test_reviews": len(valid),
    }
    stages.done(
        "gold reward",
        f"P({cfg.gold_label}) under {cfg.gold_model} (output {gold.index}); accuracy {accuracy:.3f} "
        f"on {len(valid)} held-out reviews",
    )

    # 5. The SFT policy: the model fine-tuned on the train reviews, or the SFT checkpoint as it is.
    model, _ = hub.load_causal_lm(policy, task=TASK, key=key, cache_dir=cache_dir, dtype=torch.float32)
    model, message = policy_stage(
        cfg,
        tokenizer,
        encoded,
        out,
        build_log,
        task=TASK,
        model=model,
        name=policy if cfg.sft_model else f"{policy} fine-tuned",
        train=not cfg.sft_model,
        save=not cfg.sft_model,
    )
    stages.done("policy", message)

    # 6. Preferences: samples from the SFT policy, every pair labelled by the gold reward.
    stages.done(
        "preferences",
        preference_stage(cfg, model, tokenizer, preference_prompts, eval_rows, gold, out, build_log, task=TASK),
    )
    stages.close()
    return build_log


class IMDb(BuiltTask):
    """Controlled positive-sentiment continuation of IMDb review prefixes with the paper's models; gold P(POSITIVE)."""

    name = TASK
    description = (
        "continue IMDb review prefixes positively: stanfordnlp/imdb, gpt2-large fine-tuned at build time, "
        "siebert RoBERTa gold reward (DPO paper, exp. 1)"
    )
    Config = Config

    def __init__(self, config: Config, cache_dir: Path):
        config.check()
        self.config = config
        self.cache_dir = Path(cache_dir)
        # What the artifacts depend on: with an SFT checkpoint the fine-tuning settings play no part.
        identity = dataclasses.asdict(config)
        if config.sft_model:
            for unused in ("model", "lm_steps", "lm_batch_size", "lm_lr"):
                del identity[unused]
        for setting in ("model", "sft_model", "gold_model", "dataset"):
            if identity.get(setting):
                identity[setting] = model_identity(TASK, identity[setting])
        self.identity = {"config": identity, "build_version": BUILD_VERSION}
        self.key = content_key(self.identity)
        self.artifact_dir = self.cache_dir / TASK / self.key
        self._gold = None

    def build(self) -> None:
        """Build the artifacts unless this configuration's are already cached."""
        build_once(
            self.artifact_dir,
            lambda out: _build(self.config, out, self.cache_dir, self.identity),
        )

    def load_policy(self):
        """A fresh copy of the SFT policy (eval mode) and its tokenizer: task.sft_model, or the model fine-tuned."""
        if not self.config.sft_model:
            return super().load_policy()
        import torch

        self.build()
        return hub.load_causal_lm(
            self.config.sft_model, task=TASK, key="task.sft_model", cache_dir=self.cache_dir, dtype=torch.float32
        )

    def gold_scores(self, texts: list[str]) -> list[float]:
        """P(task.gold_label) of each text under the gold classifier (gold_reward scores prompt + completion)."""
        if self._gold is None:
            self._gold = GoldReward(self.config.gold_model, self.config.gold_label, self.config.gold_batch_size)
        return self._gold(texts)
