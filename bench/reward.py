"""The learned reward model r(x, y): Bradley-Terry training, one cached copy per setting, batched scoring.

PPO-RLHF and best-of-N both need a reward model trained on the task's preference pairs, and the
`reward-model` algorithm reports its held-out accuracy. All three go through `learned_reward`,
which trains the model on first use and afterwards loads it from

    <cache>/reward_models/<hash of reference_key, preference pairs, training settings, seed>/

so a sweep over PPO targets or best-of-N sizes trains it once.

The model is the task's SFT model with a scalar head: `AutoModelForSequenceClassification`
(num_labels=1) whose transformer starts from the SFT weights. That is the format TRL's
RewardTrainer trains and any Hugging Face code loads with `from_pretrained`; the head reads the
last token of prompt + completion. It is trained with the Bradley-Terry loss

    -log sigmoid(r(x, y_chosen) - r(x, y_rejected))

through the shared training loop (bench.train.train_loop).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from bench.artifacts import build_once
from bench.device import fused_gelu
from bench.errors import UserError
from bench.io import read_jsonl, write_jsonl
from bench.logprobs import collate_pairs, encode, pad_id, scored_in_length_order
from bench.stats import mean_se, pairwise_win
from bench.train import TrainConfig, train_loop

TRAIN_DEFAULTS = {"lr": 3e-4, "epochs": 1.0, "batch_size": 32, "warmup_steps": 10, "max_grad_norm": 1.0}
"""Training settings of the reward model (the `reward-model` algorithm's train defaults; PPO and best-of-N use them)."""
LOG = "train_log.jsonl"
# Settings that change the trained weights; logging and checkpoint cadence do not.
_HASHED = (
    "lr",
    "optimizer",
    "batch_size",
    "grad_accum",
    "epochs",
    "max_steps",
    "warmup_steps",
    "max_grad_norm",
    "weight_decay",
    "max_length",
)


def default_train_config() -> TrainConfig:
    return dataclasses.replace(TrainConfig(), **TRAIN_DEFAULTS)


def bradley_terry_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """Mean of -log sigmoid(r_chosen - r_rejected) over the pairs: the negative Bradley-Terry log-likelihood."""
    return -F.logsigmoid(chosen_rewards - rejected_rewards).mean()


def disable_dropout(model) -> None:
    """Set every dropout probability to 0 (as TRL does for reward and PPO training): scores and
    log-probs must be the same functions of the weights in training and at use."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def from_policy(policy, tokenizer, seed: int):
    """A sequence-classification model (one scalar) with `policy`'s transformer weights and a fresh head."""
    from transformers import AutoModelForSequenceClassification

    config = copy.deepcopy(policy.config)
    config.num_labels = 1
    # The head reads the rightmost token that is not padding, so the pad id must be the one we pad with.
    config.pad_token_id = pad_id(tokenizer)
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(config)
    model.base_model.load_state_dict(policy.base_model.state_dict())
    disable_dropout(model)
    return model.to(next(policy.parameters()).device)


def rewards(model, batch: dict) -> torch.Tensor:
    """r(x, y) per row [B] of a right-padded `bench.logprobs.collate` batch."""
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits.squeeze(
        -1
    )


def score(
    model, tokenizer, prompts: list[str], completions: list[str], *, max_length: int, batch_size: int = 64
) -> list[float]:
    """r(x, y) for each (prompt, completion) text pair, without gradients, in input order."""
    if len(prompts) != len(completions):
        raise ValueError(f"score: {len(prompts)} prompts but {len(completions)} completions")
    encoded = [encode(tokenizer, p, c, max_length) for p, c in zip(prompts, completions)]
    return scored_in_length_order([model], encoded, pad_id(tokenizer), batch_size, lambda b: rewards(model, b))


def pair_accuracy(model, tokenizer, pairs: list[dict], *, max_length: int, batch_size: int = 64) -> dict:
    """Share of pairs the model ranks as labelled (ties count one half): {"mean", "se", "n"}."""
    prompts = [p["prompt"] for p in pairs]
    chosen = score(
        model, tokenizer, prompts, [p["chosen"] for p in pairs], max_length=max_length, batch_size=batch_size
    )
    rejected = score(
        model, tokenizer, prompts, [p["rejected"] for p in pairs], max_length=max_length, batch_size=batch_size
    )
    return {**mean_se([pairwise_win(c, r) for c, r in zip(chosen, rejected)]), "unit": "pairs"}


def train(
    policy, tokenizer, pairs: list[dict], cfg: TrainConfig, *, seed: int, log: Callable[[dict], None] | None = None
):
    """Fit a reward model initialised from `policy` on {"prompt", "chosen", "rejected"} pairs."""
    model = from_policy(policy, tokenizer, seed)
    pad = pad_id(tokenizer)
    encoded = [
        {
            "chosen": encode(tokenizer, p["prompt"], p["chosen"], cfg.max_length),
            "rejected": encode(tokenizer, p["prompt"], p["rejected"], cfg.max_length),
            "index": i,
        }
        for i, p in enumerate(pairs)
    ]

    def loss(model, batch):
        chosen, rejected = rewards(model, batch).chunk(2)  # collate_pairs stacks chosen rows, then rejected
        return bradley_terry_loss(chosen, rejected), {
            "accuracy": (chosen > rejected).float().mean(),
            "margin": (chosen - rejected).mean(),
            "mean_reward": torch.cat([chosen, rejected]).mean(),
        }

    return train_loop(
        model, encoded, lambda batch: collate_pairs(batch, pad), loss, cfg, seed=seed, log=log, desc="reward model"
    )


def cache_key(reference_key: str, pairs: list[dict], cfg: TrainConfig, seed: int) -> str:
    """Names the reward model that these inputs train: same inputs, same directory."""
    h = hashlib.sha256()
    settings = {k: getattr(cfg, k) for k in _HASHED}
    h.update(
        json.dumps({"reference": reference_key, "train": settings, "seed": seed, "version": 1}, sort_keys=True).encode()
    )
    for p in pairs:
        h.update(json.dumps([p["prompt"], p["chosen"], p["rejected"]]).encode())
    return h.hexdigest()[:16]


def load(path: str | Path, tokenizer, vocab_size: int):
    """A saved reward model, checked against the policy's tokenizer; a mismatch is the user's error."""
    from transformers import AutoModelForSequenceClassification

    path = Path(path).expanduser()
    if not (path / "config.json").is_file():
        raise UserError(f"reward model {path}: no config.json there; pass a directory written by save_pretrained")
    try:
        model = fused_gelu(AutoModelForSequenceClassification.from_pretrained(path))
    except (OSError, ValueError) as exc:
        raise UserError(
            f"reward model {path}: cannot be loaded ({exc}); pass a Hugging Face sequence-classification model"
        ) from exc
    c = model.config
    problems = []
    if c.num_labels != 1:
        problems.append(f"it has {c.num_labels} outputs, not 1")
    if c.vocab_size != vocab_size:
        problems.append(f"its vocabulary has {c.vocab_size} ids, the policy's {vocab_size}")
    if c.pad_token_id != pad_id(tokenizer):
        problems.append(f"its pad id is {c.pad_token_id}, the tokenizer's {pad_id(tokenizer)}")
    if not problems and (path / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        if AutoTokenizer.from_pretrained(path).get_vocab() != tokenizer.get_vocab():
            problems.append("it was saved with a different tokenizer")
    if problems:
        raise UserError(
            f"reward model {path} does not match this task's tokenizer: {'; '.join(problems)}; "
            "train one for this task (bench run --algo reward-model) or pass a matching one"
        )
    return model


@dataclasses.dataclass
class LearnedReward:
    """The reward callable PPO and best-of-N use: `reward(prompts, completions) -> list[float]`."""

    model: object
    tokenizer: object
    path: Path
    accuracy: dict
    """Held-out pair accuracy {"mean", "se", "n"} on the run's test pairs."""
    max_length: int
    batch_size: int = 64

    def __call__(self, prompts: list[str], completions: list[str]) -> list[float]:
        return score(
            self.model, self.tokenizer, prompts, completions, max_length=self.max_length, batch_size=self.batch_size
        )


def learned_reward(
    ctx, rm_config: TrainConfig | None = None, *, path: str | Path = "", log: Callable[[dict], None] | None = None
) -> LearnedReward:
    """The reward model for this run: loaded from `path`, or from the cache, or trained now and cached.

    Training uses ctx.preferences, the policy's initial weights (ctx.reference), `rm_config`
    (default: TRAIN_DEFAULTS) and ctx.seed. `log` receives the training rows, replayed from the
    cache when the model was trained earlier. Accuracy is measured on ctx.test_preferences.
    """
    from bench.device import device

    cfg = rm_config or default_train_config()
    tok, vocab = ctx.tokenizer, ctx.reference.config.vocab_size
    if path:
        where = Path(path).expanduser()
        model = load(where, tok, vocab)
    else:
        where = (
            Path(ctx.cache_dir) / "reward_models" / cache_key(ctx.task.reference_key, ctx.preferences, cfg, ctx.seed)
        )
        trained = []

        def build(tmp: Path) -> dict:
            rows: list[dict] = []

            def keep(row: dict) -> None:
                rows.append(row)
                if log is not None:
                    log(row)

            trained.append(train(ctx.reference, tok, ctx.preferences, cfg, seed=ctx.seed, log=keep))
            trained[0].save_pretrained(tmp)
            tok.save_pretrained(tmp)
            write_jsonl(tmp / LOG, rows)
            return {
                "reference_key": ctx.task.reference_key,
                "seed": ctx.seed,
                "pairs": len(ctx.preferences),
                "train": dataclasses.asdict(cfg),
            }

        # One process trains it; another run needing the same model meanwhile (a sweep's --jobs) waits for it.
        build_once(where, build)
        if trained:
            model = trained[0]
        else:
            model = load(where, tok, vocab)
            if log is not None and (where / LOG).is_file():
                for row in read_jsonl(where / LOG):
                    log(row)
    model = model.to(device()).eval().requires_grad_(False)
    accuracy = (
        pair_accuracy(model, tok, ctx.test_preferences, max_length=cfg.max_length)
        if ctx.test_preferences
        else {**mean_se([]), "unit": "pairs"}
    )
    return LearnedReward(model, tok, where, accuracy, cfg.max_length)
