"""Log-probabilities of completions given prompts: encoding, padding-aware batching, caching.

The DPO family of losses (and SFT, unlikelihood, the KL evaluator, the implicit reward) needs
log pi(y|x) = sum over completion tokens of log pi(y_t | x, y_<t), with prompt tokens masked
out. This module computes it once for everybody:

- `encode` tokenizes prompt and completion separately, so the prompt/completion boundary is
  exact, and truncates to a length budget.
- `collate` right-pads to the longest row of the batch only; `scored_logits` (under
  `token_logps` and the KL estimators) skips the output projection for the leading prompt
  columns no row scores.
- `collate_pairs` / `concatenated_forward` score chosen and rejected in ONE forward pass.
- `dataset_logps` / `cached_dataset_logps` score a whole data set without gradients, in
  length-sorted batches, and store the reference model's result on disk so it is computed once
  per (reference model, data set).
"""

from __future__ import annotations

import hashlib
import io
from array import array
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from bench.io import atomic_write_bytes

Encoded = tuple[list[int], int]
"""Token ids of prompt + completion, and how many of them belong to the prompt."""


def pad_id(tokenizer) -> int:
    """The id that pads batches: the tokenizer's pad token, else its eos (GPT-2 style tokenizers have no pad)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def context_length(model) -> int | None:
    """The model's context window in tokens (Llama-style max_position_embeddings or GPT-2's n_positions), or None."""
    config = getattr(model, "config", None)
    context = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return context if isinstance(context, int) else None


def encode(tokenizer, prompt: str, completion: str, max_length: int, add_eos: bool = False) -> Encoded:
    """Tokenize prompt and completion separately and concatenate them: (ids, n_prompt_tokens).

    Longer than `max_length`: the completion is cut at the end; a prompt that leaves no room for
    even one completion token keeps its LAST tokens (those nearest the completion).
    """
    if max_length < 2:
        raise ValueError(
            f"encode: max_length must be at least 2 (one prompt and one completion token), got {max_length}"
        )
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    if not prompt_ids:
        # The first token of a sequence is never predicted, so an empty prompt would silently
        # drop the first completion token from every log-prob.
        raise ValueError(f"encode: the prompt {prompt!r} encodes to no tokens; every prompt needs at least one")
    if add_eos:
        completion_ids = completion_ids + [tokenizer.eos_token_id]
    prompt_ids = prompt_ids[-(max_length - 1) :]
    completion_ids = completion_ids[: max_length - len(prompt_ids)]
    return prompt_ids + completion_ids, len(prompt_ids)


def collate(encoded: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch to its longest row: input_ids, attention_mask, completion_mask ([B, T] longs)."""
    width = max(len(ids) for ids, _ in encoded)
    input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
    completion_mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for r, (ids, n_prompt) in enumerate(encoded):
        input_ids[r, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[r, : len(ids)] = 1
        completion_mask[r, n_prompt : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask}


def scored_logits(model, batch: dict, temperature: float = 1.0) -> tuple[torch.Tensor, int]:
    """Next-token logits / temperature (float32) for the columns of the batch that any row scores.

    Returns (logits [B, T-1-start, V], start): logits[:, j] predicts token start + j + 1.
    Leading columns that are prompt in every row are never scored, so their output projection
    (batch x vocab per position, a large share of a small model's compute and its biggest
    activation) is skipped.
    """
    input_ids = batch["input_ids"]
    scored = batch["completion_mask"][:, 1:].any(0)
    start = int(scored.int().argmax()) if scored.any() else max(scored.shape[0] - 1, 0)
    logits = (
        model(
            input_ids=input_ids,
            attention_mask=batch["attention_mask"],
            use_cache=False,
            logits_to_keep=input_ids.shape[1] - start,
        )
        .logits[:, :-1]
        .float()
    )
    if temperature != 1.0:
        logits = logits / temperature
    return logits, start


def token_logps(model, batch: dict, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of each realised next token and the completion mask, both [B, T-1].

    Column t holds log pi(token t+1 | tokens <= t) of `logits / temperature`; the mask is 1 where
    token t+1 is a completion token, and log-probs are 0 elsewhere.
    """
    mask = batch["completion_mask"][:, 1:]
    logits, start = scored_logits(model, batch, temperature)
    labels = batch["input_ids"][:, start + 1 :]
    # gather - logsumexp instead of log_softmax(...).gather: never holds a second [B, T, V] tensor.
    picked = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    skipped = torch.zeros((mask.shape[0], start), dtype=picked.dtype, device=picked.device)
    logps = torch.cat([skipped, picked], dim=1).masked_fill(mask == 0, 0.0)
    return logps, mask


def sequence_logps(model, batch: dict) -> torch.Tensor:
    """log pi(y|x) per row [B]: the sum of completion-token log-probs (the DPO paper's quantity)."""
    logps, _ = token_logps(model, batch)
    return logps.sum(-1)


def collate_pairs(pairs: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Stack a batch of preference pairs as 2B rows (B chosen, then B rejected) on one common width.

    Each pair is {"chosen": Encoded, "rejected": Encoded, "index": int}; "index" (a [B] long
    tensor) lets a loss look up per-pair values such as cached reference log-probs.
    """
    batch = collate([p["chosen"] for p in pairs] + [p["rejected"] for p in pairs], pad_id)
    batch["index"] = torch.tensor([p["index"] for p in pairs], dtype=torch.long)
    return batch


def concatenated_forward(model, batch: dict) -> dict[str, torch.Tensor]:
    """Score chosen and rejected rows of a `collate_pairs` batch in one forward pass.

    Returns chosen_logps and rejected_logps [B] (sums over completion tokens) and the per-token
    chosen_token_logps / chosen_mask / rejected_token_logps / rejected_mask [B, T-1].
    """
    logps, mask = token_logps(model, batch)
    n = logps.shape[0] // 2
    return {
        "chosen_logps": logps[:n].sum(-1),
        "rejected_logps": logps[n:].sum(-1),
        "chosen_token_logps": logps[:n],
        "chosen_mask": mask[:n],
        "rejected_token_logps": logps[n:],
        "rejected_mask": mask[n:],
    }


def scored_in_length_order(
    models: list, encoded: list[Encoded], pad_id: int, batch_size: int, score: Callable, *, desc: str | None = None
) -> list:
    """`score(batch)` of every encoded sequence, without gradients, one result per sequence in input order.

    Batches are taken in length order so each holds sequences of similar length (little padding);
    the models are in eval mode meanwhile (their mode is restored after) and the batch is on the first
    one's device. `score` returns a tensor [B], or a tuple of them (then each result is a tuple).
    """
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
    out: list = [None] * len(encoded)
    device = next(models[0].parameters()).device
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        with torch.no_grad():
            batches = range(0, len(order), batch_size)
            for start in tqdm(batches, desc=desc, unit="batch", leave=False, dynamic_ncols=True, disable=desc is None):
                rows = order[start : start + batch_size]
                batch = {k: v.to(device) for k, v in collate([encoded[i] for i in rows], pad_id).items()}
                result = score(batch)
                columns = [t.float().cpu().tolist() for t in (result if isinstance(result, tuple) else (result,))]
                for i, values in zip(rows, zip(*columns)):
                    out[i] = values if isinstance(result, tuple) else values[0]
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)
    return out


def dataset_logps(
    model, encoded: list[Encoded], pad_id: int, batch_size: int, *, desc: str | None = None
) -> torch.Tensor:
    """log pi(y|x) for every encoded sequence [N] (float32, CPU), without gradients, in input order."""
    logps = scored_in_length_order([model], encoded, pad_id, batch_size, lambda b: sequence_logps(model, b), desc=desc)
    return torch.tensor(logps, dtype=torch.float32)


def cached_dataset_logps(
    model, encoded: list[Encoded], pad_id: int, batch_size: int, cache_dir: Path, key: str, *, desc: str | None = None
) -> torch.Tensor:
    """`dataset_logps`, stored under `cache_dir` and read back on later calls.

    The file name is the sha256 of `key` (which must identify the model's weights, e.g. a task's
    reference_key) and of the encoded sequences, so a new model, tokenizer, length budget or data
    set never reads a stale file.
    """
    digest = hashlib.sha256(key.encode())
    for ids, n_prompt in encoded:
        digest.update(array("q", [len(ids), n_prompt, *ids]).tobytes())
    path = Path(cache_dir) / f"logps-{digest.hexdigest()}.pt"
    if path.exists():
        cached = torch.load(path, map_location="cpu", weights_only=True)
        if cached.shape == (len(encoded),):
            return cached
    logps = dataset_logps(model, encoded, pad_id, batch_size, desc=desc)
    buffer = io.BytesIO()
    torch.save(logps, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return logps
