"""Fitting glue shared by the offline algorithms, so that each algorithm module is mostly its loss.

- `fit_on_pairs(ctx, loss_fn)`: DPO, unlikelihood and any pairwise loss. Encodes the preference
  pairs, computes the reference log-probs once (cached on disk per reference model and data),
  and trains with one concatenated chosen+rejected forward per batch. The loss is a
  bench.contracts.PairLoss, `loss_fn(out, ref_chosen_logps, ref_rejected_logps)`: `out` is a
  bench.contracts.PairForward (`bench.logprobs.concatenated_forward`'s dict) and the reference
  values are [B] tensors (None when `needs_reference=False`).
- `fit_on_demonstrations(ctx, examples)`: SFT and preferred-FT, the mean token negative
  log-likelihood of completions with the prompt masked out (`train_on_demonstrations` is the
  same without a run context, for tasks that fine-tune a starting policy at build time).

Where the task's completions are whole responses (its `eos_after_completion`), every completion
is encoded with the tokenizer's eos after it, as TRL's SFT and DPO trainers do: a policy that
never sees eos in training never learns to stop, and samples run to eval.max_new_tokens.
"""

from __future__ import annotations

import torch

from bench.contracts import PairLoss, optional
from bench.logprobs import (
    cached_dataset_logps,
    collate,
    collate_pairs,
    concatenated_forward,
    encode,
    pad_id,
    sequence_logps,
    token_logps,
)
from bench.policy import ModelPolicy
from bench.train import train_loop


def ends_with_eos(task) -> bool:
    """Whether the task's completions are whole responses, encoded with eos after them (its eos_after_completion)."""
    return bool(optional(task, "task", "eos_after_completion"))


def mean_token_nll(token_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """-log-prob per completion token, averaged over all completion tokens of the batch (0 if there are none)."""
    mask = mask.to(token_logps.dtype)
    return -(token_logps * mask).sum() / mask.sum().clamp(min=1)


def pair_metrics(chosen_rewards, rejected_rewards, chosen_logps, rejected_logps) -> dict[str, torch.Tensor]:
    """TRL's preference-training log metrics from per-pair implicit rewards and log-probs, each [B] (detached here):
    rewards/chosen, rewards/rejected, rewards/accuracies, rewards/margins, logps/chosen, logps/rejected."""
    chosen_rewards, rejected_rewards = chosen_rewards.detach(), rejected_rewards.detach()
    return {
        "rewards/chosen": chosen_rewards.mean(),
        "rewards/rejected": rejected_rewards.mean(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
        "logps/chosen": chosen_logps.detach().mean(),
        "logps/rejected": rejected_logps.detach().mean(),
    }


def demonstration_loss(model, batch: dict) -> tuple[torch.Tensor, dict]:
    """The SFT loss of a `collate` batch: mean token negative log-likelihood of the completions."""
    logps, mask = token_logps(model, batch)
    return mean_token_nll(logps, mask), {}


MISMATCHED = "mismatched_"
"""Key prefix of a batch's mismatched rows (fit_on_pairs(mismatched=True)): prompt i with pair i+1's chosen."""


def fit_on_pairs(
    ctx, loss_fn: PairLoss, *, needs_reference: bool = True, mismatched: bool = False, desc: str = "train"
) -> ModelPolicy:
    """Train ctx.policy on ctx.preferences with a pairwise loss; returns the trained policy.

    The training loop (optimizer, warmup, clipping, accumulation, checkpoints, log windows, the
    harness's intermediate evaluations) is bench.train.train_loop with ctx.train's settings.

    mismatched: each pair also brings the sequence (its prompt, the next pair's chosen completion),
    whose log-probs under the policy (no gradient) and the reference (cached) reach the loss as
    out["mismatched_logps"] and out["ref_mismatched_logps"]: completions unrelated to their prompts,
    for a batch estimate of KL(pi || pi_ref) such as KTO's reference point.
    """
    tok, max_length, pad = ctx.tokenizer, ctx.train.max_length, pad_id(ctx.tokenizer)
    prefs, eos = ctx.preferences, ends_with_eos(ctx.task)
    pairs = [
        {
            "chosen": encode(tok, p["prompt"], p["chosen"], max_length, eos),
            "rejected": encode(tok, p["prompt"], p["rejected"], max_length, eos),
            "index": i,
            **(
                {"mismatched": encode(tok, p["prompt"], prefs[(i + 1) % len(prefs)]["chosen"], max_length, eos)}
                if mismatched
                else {}
            ),
        }
        for i, p in enumerate(prefs)
    ]

    reference = None
    if needs_reference and pairs:
        # The cache file is named by the reference's identity and the encoded sequences, so every
        # algorithm, seed and hyperparameter setting on the same data reuses one computation.
        reference = {
            side: cached_dataset_logps(
                ctx.reference,
                [p[side] for p in pairs],
                pad,
                ctx.train.batch_size,
                ctx.cache_dir / "ref_logps",
                ctx.task.reference_key,
                desc=f"reference log-probs ({side})",
            )
            for side in ("chosen", "rejected", "mismatched")
            if side in pairs[0]
        }

    def loss(model, batch):
        out = concatenated_forward(model, batch)
        if mismatched:
            rows = {k.removeprefix(MISMATCHED): v for k, v in batch.items() if k.startswith(MISMATCHED)}
            with torch.no_grad():
                out["mismatched_logps"] = sequence_logps(model, rows)
        if reference is None:
            return loss_fn(out, None, None)
        index, device = batch["index"].cpu(), out["chosen_logps"].device
        if mismatched:
            out["ref_mismatched_logps"] = reference["mismatched"][index].to(device)
        return loss_fn(out, reference["chosen"][index].to(device), reference["rejected"][index].to(device))

    def collate_batch(batch: list[dict]) -> dict:
        out = collate_pairs(batch, pad)
        if mismatched:
            out.update({MISMATCHED + k: v for k, v in collate([p["mismatched"] for p in batch], pad).items()})
        return out

    model = train_loop(
        ctx.policy,
        pairs,
        collate_batch,
        loss,
        ctx.train,
        seed=ctx.seed,
        log=ctx.log,
        checkpoint_dir=ctx.checkpoint_dir,
        desc=desc,
        on_step=ctx.on_step,
    )
    return ModelPolicy(model, tok)


def train_on_demonstrations(
    model,
    tokenizer,
    examples: list[dict],
    train,
    *,
    seed: int,
    log=None,
    checkpoint_dir=None,
    on_step=None,
    desc: str = "train",
    add_eos: bool = False,
):
    """Maximum likelihood on {"prompt", "completion"} examples (prompt tokens masked); returns the trained model.

    Also what tasks use at build time to make a starting policy (e.g. a base model fine-tuned on
    the task's demonstrations or chosen responses). add_eos: each completion is followed by the
    tokenizer's eos (whole responses; see the module docstring).
    """
    pad = pad_id(tokenizer)
    encoded = [encode(tokenizer, e["prompt"], e["completion"], train.max_length, add_eos) for e in examples]
    return train_loop(
        model,
        encoded,
        lambda batch: collate(batch, pad),
        demonstration_loss,
        train,
        seed=seed,
        log=log,
        checkpoint_dir=checkpoint_dir,
        desc=desc,
        on_step=on_step,
    )


def fit_on_demonstrations(ctx, examples: list[dict], desc: str = "train") -> ModelPolicy:
    """Maximum likelihood on {"prompt", "completion"} examples (prompt tokens masked); returns the trained policy."""
    model = train_on_demonstrations(
        ctx.policy,
        ctx.tokenizer,
        examples,
        ctx.train,
        seed=ctx.seed,
        log=ctx.log,
        checkpoint_dir=ctx.checkpoint_dir,
        on_step=ctx.on_step,
        desc=desc,
        add_eos=ends_with_eos(ctx.task),
    )
    return ModelPolicy(model, ctx.tokenizer)
