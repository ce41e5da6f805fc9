"""Log-probabilities of completions given prompts: encoding, padding-aware batching, caching.

The DPO family of losses (and SFT, unlikelihood, the KL evaluator, the implicit reward) needs
log pi(y|x) = sum over completion tokens of log pi(y_t | x, y_<t), with prompt tokens masked
out. This module computes it once for everybody:

- `encode` tokenizes prompt and completion separately, so the prompt/completion boundary is
  exact, and truncates to a length budget.
- `collate` right-pads to the longest row of the batch only; `token_logps` applies the output
  projection only at completion positions, at most `max_tokens` of them at a time, so memory stays
  flat in batch size, length and vocabulary (the KL estimators in bench.kl do the same).
- `collate_pairs` / `concatenated_forward` score chosen and rejected in ONE forward pass.
- `dataset_logps` / `cached_dataset_logps` score a whole data set without gradients, in
  length-sorted batches, and store the reference model's result on disk so it is computed once
  per (reference model, data set).
"""

from __future__ import annotations

import hashlib
import io
import sys
from array import array
from functools import partial
from pathlib import Path
from typing import Callable

import torch
from torch.utils.checkpoint import checkpoint
from tqdm.auto import tqdm

from bench import distributed, fsdp
from bench.io import atomic_write_bytes
from bench.lock import file_lock

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
    # One tensor from padded lists and the masks from column positions: no per-row tensor copies.
    input_ids = torch.tensor([ids + [pad_id] * (width - len(ids)) for ids, _ in encoded], dtype=torch.long)
    column = torch.arange(width)
    lengths = torch.tensor([len(ids) for ids, _ in encoded])[:, None]
    prompts = torch.tensor([n_prompt for _, n_prompt in encoded])[:, None]
    attention_mask = (column < lengths).long()
    completion_mask = ((column >= prompts) & (column < lengths)).long()
    return {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask}


MAX_LOGITS = 2**26
"""Elements (positions x vocabulary) of the vocabulary-wide tensors one chunk may hold: 256 MB in float32.

That is 1,365 positions at a 49,152-token vocabulary and 16,384 at 4,096; the exact KL holds a handful
of such tensors per chunk. Whole batches (batch x length x vocabulary) would grow without bound instead.
"""
AUTO = 0
"""`max_tokens=AUTO`: as many positions per chunk as MAX_LOGITS allows at the model's vocabulary size."""
EVAL_LOGITS = 2**22
"""The chunk budget of evaluation scoring (exact KL, pair accuracy): 16 MB float32 tensors, 1,024 positions at a
4,096-token vocabulary. Without gradients nothing compounds, so speed decides: on the default task (1,024
samples, batch 256, one thread) the exact KL takes 6.7 s in chunks of 512-1,024 positions, 8.5 s in chunks of
2,048-4,096 and 9.5 s whole, as smaller tensors are written and re-read in cache, not fresh memory."""


def eval_tokens(model) -> int:
    """Positions per chunk under EVAL_LOGITS at the model's vocabulary size (`max_tokens` of evaluation scoring)."""
    return max(1, EVAL_LOGITS // output_vocab(model))


# Architectures whose logits are exactly `get_output_embeddings()(base_model(...).last_hidden_state)`: no
# soft-capping (Gemma 2), logit scale (Cohere) or logit divide (Granite) after the head. Others fall back to
# the model's own full logits, still reduced one chunk at a time.
_PLAIN_HEAD = frozenset({"gpt2", "llama", "mistral", "qwen2", "qwen3"})


def split_head(model) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """(backbone, head) with `logits == head(backbone(...).last_hidden_state)`, or None where that is not known.

    A LoRA-wrapped (peft) model splits like the model it wraps: its adapters sit inside those modules. Prompt
    learning adapters (prefix or prompt tuning) change the inputs instead, so those models do not split. Nor does
    a DDP-wrapped one (training with several processes): its gradients are synchronised only through its own
    forward, so it is scored by its full forward, reduced one chunk at a time. Nor does a policy whose weights
    FSDP2 shards (bench.fsdp), outside a `whole_weights` block: its outermost module's forward gathers the
    weights the backbone and head share.
    """
    if fsdp.sharded_now(model):
        return None
    peft = sys.modules.get("peft")  # never imported here: a model that is peft-wrapped has imported it already
    if peft is not None and isinstance(model, peft.PeftModel):
        if model.peft_config[model.active_adapter].is_prompt_learning:
            return None
        model = model.get_base_model()
    transformers = sys.modules.get("transformers")  # likewise: a Hugging Face model has imported it
    if transformers is None or not isinstance(model, transformers.PreTrainedModel):
        return None
    if getattr(model.config, "model_type", None) not in _PLAIN_HEAD:
        return None
    backbone, head = model.base_model, model.get_output_embeddings()
    if backbone is model or head is None:
        return None
    return backbone, head


def scored_states(model, batch: dict) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor], int]:
    """What the scored columns' next-token logits are computed from, without materialising them all.

    Returns (states [B, T-1-start, D], head, start): `head(states[:, j])` is the logits predicting token
    start + j + 1 (in the model's dtype). For models that `split_head` splits, states are the final hidden
    states and head the output projection; otherwise states are the model's logits and head the identity.
    """
    input_ids = batch["input_ids"]
    start = _first_scored(batch)
    split = split_head(model)
    if split is None:
        logits = model(
            input_ids=input_ids,
            attention_mask=batch["attention_mask"],
            use_cache=False,
            logits_to_keep=input_ids.shape[1] - start,
        ).logits
        return logits[:, :-1], _identity, start
    backbone, head = split
    hidden = backbone(input_ids=input_ids, attention_mask=batch["attention_mask"], use_cache=False).last_hidden_state
    return hidden[:, start:-1], head, start


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _first_scored(batch: dict) -> int:
    """The first column whose next token any row scores: leading all-prompt columns need no logits."""
    scored = batch["completion_mask"][:, 1:].any(0)
    return int(scored.int().argmax()) if scored.any() else max(scored.shape[0] - 1, 0)


def chunk_logits(head, states: torch.Tensor, temperature: float) -> torch.Tensor:
    """float32 logits / temperature of one chunk of states [..., D] -> [..., V]."""
    if head is not _identity and not states.is_contiguous():
        # The scored columns of a batch's hidden states are a strided slice. Against a head that needs no
        # gradient (a frozen reference's) matmul cannot fold such a slice into one matrix and runs a batched
        # product on the weight repeated per row: ~1.2x the time of one mm on a contiguous copy (default task,
        # one thread), for the same values. A head that needs a gradient makes this copy itself.
        states = states.contiguous()
    logits = head(states).float()
    return logits / temperature if temperature != 1.0 else logits


def log_softmax_(logits: torch.Tensor) -> torch.Tensor:
    """log_softmax over the last dimension written into `logits` itself: the same values, bit for bit.

    A new vocabulary-wide tensor is fresh memory the allocator maps and the kernel then faults in page by page,
    which on a CPU takes longer than the pass itself (a 3000 x 4096 log-softmax: ~25 ms into new memory, ~7 ms
    in place). For tensors nobody reads again: logits this module computed, without gradients through them.
    """
    return torch.log_softmax(logits, dim=-1, out=logits)


class PickedLogProbs(torch.autograd.Function):
    """log softmax(logits)[label] for each position: [..., V] logits and [...] labels -> [...] log-probs.

    The forward is torch.log_softmax (one fused pass, faster on a CPU than gather - logsumexp, which builds the
    shifted logits and their exp) and a gather; the log-softmax is what it keeps for the backward, in place of the
    logits (`consume=True`: written over them, for logits the caller computed for this alone). The backward turns
    that tensor into the gradient, g * (onehot(label) - softmax(logits)), in place: no new vocabulary-wide tensor,
    where autograd's own backward of the same expression allocates and fills three (the gather's zeros, the
    softmax term, their sum), each fresh memory and a pass over every position's logits. Values: autograd's of
    log_softmax(...).gather(...) exactly. A second backward through the same graph (retain_graph) is refused by
    autograd, the saved tensor having been changed in place.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor, consume: bool = False) -> torch.Tensor:
        log_probs = log_softmax_(logits) if consume else torch.log_softmax(logits, dim=-1)
        ctx.save_for_backward(log_probs, labels)
        return log_probs.gather(-1, labels.unsqueeze(-1)).squeeze(-1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        log_probs, labels = ctx.saved_tensors
        out = log_probs.exp_()  # the softmax, in the saved tensor's memory: it is needed for nothing else
        out.mul_(-grad.unsqueeze(-1))
        out.scatter_add_(-1, labels.unsqueeze(-1), grad.unsqueeze(-1))
        return out, None, None


def picked_logps(logits: torch.Tensor, labels: torch.Tensor, consume: bool = False) -> torch.Tensor:
    """log softmax(logits)[label] per position ([..., V], [...] -> [...]), differentiable in logits.

    consume=True writes the log-softmax over `logits` (log_softmax_): for logits no one else reads.
    """
    return PickedLogProbs.apply(logits, labels, consume)


ROW_DOT_ROWS = 64
"""Rows per block of row_dots on CPU: a 64 x 4,096 float32 product (1 MB) is written and summed in cache."""


def row_dots(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum(a * b, -1) for tensors [..., V] of one shape, without a vocabulary-wide product tensor.

    On CPU the products go through one reused buffer of ROW_DOT_ROWS rows: for 3,072 x 4,096 float32 rows, one
    thread, 13 ms, against 55 ms for torch.bmm of the rows as 1 x V by V x 1 products (the batched product
    runs a tiny matrix kernel per row) and 45 ms for (a * b).sum(-1), whose product lands in fresh memory.
    Other devices take torch.linalg.vecdot."""
    if a.device.type != "cpu":
        return torch.linalg.vecdot(a, b)
    vocab = a.shape[-1]
    rows_a, rows_b = a.reshape(-1, vocab), b.reshape(-1, vocab)
    n = rows_a.shape[0]
    out = rows_a.new_empty(n)
    buffer = rows_a.new_empty(min(ROW_DOT_ROWS, n), vocab)
    for start in range(0, n, ROW_DOT_ROWS):
        stop = min(start + ROW_DOT_ROWS, n)
        block = torch.mul(rows_a[start:stop], rows_b[start:stop], out=buffer[: stop - start])
        torch.sum(block, -1, out=out[start:stop])
    return out.view(a.shape[:-1])


class PickedLogProbsEntropy(torch.autograd.Function):
    """`PickedLogProbs` that also returns each position's entropy (a logged metric: no gradient flows through it).

    The forward keeps the softmax, made in place from the log-softmax, for the backward (which turns it into the
    gradient in place, as PickedLogProbs does); the entropy is log Z - sum(p * logits), the sum by row_dots.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor):
        log_probs = torch.log_softmax(logits, dim=-1)
        logps = log_probs.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
        log_z = logits[..., 0] - log_probs[..., 0]
        probs = log_probs.exp_()
        entropy = log_z - row_dots(probs, logits)
        ctx.save_for_backward(probs, labels)
        ctx.mark_non_differentiable(entropy)
        return logps, entropy

    @staticmethod
    def backward(ctx, grad: torch.Tensor, _entropy_grad):
        probs, labels = ctx.saved_tensors
        out = probs.mul_(-grad.unsqueeze(-1))
        out.scatter_add_(-1, labels.unsqueeze(-1), grad.unsqueeze(-1))
        return out, None


def picked_logps_entropy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log softmax(logits)[label], entropy of softmax(logits)) per position; the first differentiable in logits."""
    return PickedLogProbsEntropy.apply(logits, labels)


def _picked_logps(head, temperature: float, states: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    # Logits computed here are this call's own; states that are logits already belong to the caller.
    fresh = head is not _identity or temperature != 1.0
    return picked_logps(chunk_logits(head, states, temperature), labels, consume=fresh)


def _picked_logps_entropy(head, temperature: float, states: torch.Tensor, labels: torch.Tensor):
    return picked_logps_entropy(chunk_logits(head, states, temperature), labels)


def chunked_logps_entropy(
    states: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor] | None,
    labels: torch.Tensor,
    temperature: float = 1.0,
    max_tokens: int | None = AUTO,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-prob of each label, entropy without gradient) [N] of `head(states) / temperature`, per chunk of positions.

    states [N, D] are hidden states for `head`, or logits already when head is None; labels [N].
    """
    head = head or _identity
    fn = partial(_picked_logps_entropy, head, temperature)
    return chunked_map(fn, (states, labels), max_tokens, vocab_size(head, states))


def vocab_size(head, states: torch.Tensor) -> int:
    """The width of `head(states)`: the output projection's rows, or the states' own width when they are logits."""
    weight = getattr(head, "weight", None)
    return int(weight.shape[0]) if weight is not None else int(states.shape[-1])


def chunked_map(fn: Callable, tensors: tuple[torch.Tensor, ...], max_tokens: int | None, vocab: int = 1) -> tuple:
    """`fn(*(t[i:j] for t in tensors))` over chunks of at most `max_tokens` rows, concatenated row-wise.

    The tensors share their first dimension (one row per scored position); fn returns a tensor or a
    tuple of tensors with one value per row. max_tokens AUTO takes MAX_LOGITS // vocab rows a chunk,
    None all rows at once. With gradients on and more than one chunk, each chunk runs under activation
    checkpointing: the forward keeps none of a chunk's vocabulary-wide tensors (only its inputs) and
    the backward recomputes them one chunk at a time, so memory does not grow with the number of chunks;
    a batch that fits one chunk is not recomputed (no memory to save, only time to lose).
    """
    if max_tokens is not None and max_tokens < 0:
        raise ValueError(f"max_tokens must be at least 1 (0: by MAX_LOGITS, None: one chunk), got {max_tokens}")
    n = tensors[0].shape[0]
    if max_tokens is None:
        size = max(n, 1)
    else:
        size = max_tokens or max(1, MAX_LOGITS // max(vocab, 1))
    checkpointed = torch.is_grad_enabled() and n > size
    parts = []
    for i in range(0, max(n, 1), size):  # no rows: one empty chunk still gives the right dtypes and device
        args = tuple(t[i : i + size] for t in tensors)
        out = checkpoint(fn, *args, use_reentrant=False) if checkpointed and n else fn(*args)
        parts.append(out if isinstance(out, tuple) else (out,))
    return tuple(torch.cat(column) if len(column) > 1 else column[0] for column in zip(*parts))


def one_chunk(model, batch: dict, max_tokens: int | None = AUTO) -> bool:
    """Whether every scored column's logits fit one chunk: then the model's own forward scores the batch whole.

    That path is the one the project has always taken, so results that fit (every default of the embedded
    task) stay bitwise what they were: the chunked path's matmuls run on other shapes and round differently
    in the last bits, which is harmless per call but compounds over PPO's updates into a different run.
    """
    if max_tokens is None:
        return True
    rows, width = batch["input_ids"].shape
    positions = rows * max(width - _first_scored(batch), 1)
    if max_tokens:
        return positions <= max_tokens
    return positions * output_vocab(model) <= MAX_LOGITS


def output_vocab(model) -> int:
    """The model's output width (its logits' last dimension)."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):  # bench.train.Loop with several processes
        model = model.module
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    return int(weight.shape[0]) if weight is not None else int(model.config.vocab_size)


def scored_logits(model, batch: dict, temperature: float = 1.0) -> tuple[torch.Tensor, int]:
    """Next-token logits / temperature (float32) for the columns of the batch that any row scores.

    Returns (logits [B, T-1-start, V], start): logits[:, j] predicts token start + j + 1.
    Leading columns that are prompt in every row are never scored, so their output projection
    (batch x vocab per position, a large share of a small model's compute and its biggest
    activation) is skipped. This holds the whole batch's logits at once; `token_logps` and the KL
    estimators call it only when `one_chunk` says they fit, and work one chunk of positions at a time otherwise.
    """
    input_ids = batch["input_ids"]
    start = _first_scored(batch)
    split = split_head(model)
    if split is not None:
        # The head runs on exactly the scored positions: slicing its input, not its output, keeps the backward
        # from building a zero tensor of the logits' shape for the last column that no row scores.
        backbone, head = split
        hidden = backbone(input_ids=input_ids, attention_mask=batch["attention_mask"], use_cache=False)
        return chunk_logits(head, hidden.last_hidden_state[:, start:-1], temperature), start
    logits = model(
        input_ids=input_ids,
        attention_mask=batch["attention_mask"],
        use_cache=False,
        logits_to_keep=input_ids.shape[1] - start,
    ).logits[:, :-1]
    return chunk_logits(_identity, logits, temperature), start


def token_logps(
    model, batch: dict, temperature: float = 1.0, max_tokens: int | None = AUTO
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of each realised next token and the completion mask, both [B, T-1].

    Column t holds log pi(token t+1 | tokens <= t) of `logits / temperature`; the mask is 1 where
    token t+1 is a completion token, and log-probs are 0 elsewhere. A batch that fits one chunk
    (`one_chunk`) is scored whole; otherwise only completion positions get logits, at most
    `max_tokens` of them at a time (None: all at once).
    """
    mask = batch["completion_mask"][:, 1:]
    if one_chunk(model, batch, max_tokens):
        logits, start = scored_logits(model, batch, temperature)
        picked = picked_logps(logits, batch["input_ids"][:, start + 1 :], consume=True)  # logits read by none else
        skipped = torch.zeros((mask.shape[0], start), dtype=picked.dtype, device=picked.device)
        return torch.cat([skipped, picked], dim=1).masked_fill(mask == 0, 0.0), mask
    states, head, start = scored_states(model, batch)
    rows, cols = mask[:, start:].nonzero(as_tuple=True)
    labels = batch["input_ids"][:, start + 1 :][rows, cols]
    scored = states[rows, cols]
    fn = partial(_picked_logps, head, temperature)
    (picked,) = chunked_map(fn, (scored, labels), max_tokens, vocab_size(head, scored))
    logps = torch.zeros(mask.shape, dtype=picked.dtype, device=picked.device)
    logps = logps.index_put((rows, cols + start), picked)
    return logps, mask


def sequence_logps(model, batch: dict, max_tokens: int | None = AUTO) -> torch.Tensor:
    """log pi(y|x) per row [B]: the sum of completion-token log-probs (the DPO paper's quantity)."""
    logps, _ = token_logps(model, batch, max_tokens=max_tokens)
    return logps.sum(-1)


def collate_pairs(pairs: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Stack a batch of preference pairs as 2B rows (B chosen, then B rejected) on one common width.

    Each pair is {"chosen": Encoded, "rejected": Encoded, "index": int}; "index" (a [B] long
    tensor) lets a loss look up per-pair values such as cached reference log-probs.
    """
    batch = collate([p["chosen"] for p in pairs] + [p["rejected"] for p in pairs], pad_id)
    batch["index"] = torch.tensor([p["index"] for p in pairs], dtype=torch.long)
    return batch


def concatenated_forward(model, batch: dict, max_tokens: int | None = AUTO) -> dict[str, torch.Tensor]:
    """Score chosen and rejected rows of a `collate_pairs` batch in one forward pass.

    Returns chosen_logps and rejected_logps [B] (sums over completion tokens) and the per-token
    chosen_token_logps / chosen_mask / rejected_token_logps / rejected_mask [B, T-1].
    """
    logps, mask = token_logps(model, batch, max_tokens=max_tokens)
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
    one's device. `score` returns a tensor [B], or a tuple of them (then each result is a tuple). With
    several processes each scores its share of the batches and every one receives all results.
    """
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    out: list = [None] * len(encoded)
    device = next(models[0].parameters()).device
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    # With several processes each scores its share of the batches (bench.distributed.map_sharded).
    bar = tqdm(
        total=len(distributed.my_jobs(len(batches))),
        desc=desc,
        unit="batch",
        leave=False,
        dynamic_ncols=True,
        disable=desc is None,
    )

    def one_batch(b: int, rows: list[int]) -> list:
        batch = {k: v.to(device) for k, v in collate([encoded[i] for i in rows], pad_id).items()}
        result = score(batch)
        columns = [t.float().cpu().tolist() for t in (result if isinstance(result, tuple) else (result,))]
        bar.update(1)
        return [values if isinstance(result, tuple) else values[0] for values in zip(*columns)]

    try:
        with torch.no_grad():
            for rows, values in zip(batches, distributed.map_sharded(one_batch, batches)):
                for i, value in zip(rows, values):
                    out[i] = value
    finally:
        bar.close()
        for m, mode in zip(models, modes):
            m.train(mode)
    return out


def dataset_logps(
    model,
    encoded: list[Encoded],
    pad_id: int,
    batch_size: int,
    *,
    desc: str | None = None,
    max_tokens: int | None = AUTO,
) -> torch.Tensor:
    """log pi(y|x) for every encoded sequence [N] (float32, CPU), without gradients, in input order."""
    logps = scored_in_length_order(
        [model], encoded, pad_id, batch_size, lambda b: sequence_logps(model, b, max_tokens), desc=desc
    )
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

    def read() -> torch.Tensor | None:
        if not path.exists():
            return None
        cached = torch.load(path, map_location="cpu", weights_only=True)
        return cached if cached.shape == (len(encoded),) else None

    def compute() -> torch.Tensor:
        logps = dataset_logps(model, encoded, pad_id, batch_size, desc=desc)
        if distributed.is_main():
            buffer = io.BytesIO()
            torch.save(logps, buffer)
            atomic_write_bytes(path, buffer.getvalue())
        return logps

    if distributed.world_size() > 1:
        # With several processes: all use the file or all compute (sharded), and the main process writes it.
        cached = read()
        return cached if distributed.all_true(cached is not None) else compute()
    if (cached := read()) is not None:
        return cached
    # One process computes a file at a time: runs of `bench sweep --jobs N` on the same data (dpo and kto beside
    # each other) wait for the first and read its file instead of each scoring the whole data set.
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path.parent / f".{path.name}.lock"):
        return cached if (cached := read()) is not None else compute()
