"""RLOO (Ahmadian et al., 2024): REINFORCE with a leave-one-out baseline, on the task's gold reward.

Each update samples k completions for each of `prompts_per_update` training prompts. A completion's
reward is its gold reward minus beta times its sequence KL to the reference (the sum of sampled
log-ratios); its advantage is that reward minus the mean reward of the other k - 1 completions of
its prompt; the loss is -advantage * log pi(completion), averaged over a minibatch.

This module is the step only: the harness's loop (bench.train.train_online) owns the optimizer,
the update count, log windows, checkpoints, resume and the evaluation hook.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from bench import seeds
from bench.checks import at_least
from bench.errors import UserError
from bench.logprobs import collate, sequence_logps
from bench.policy import ModelPolicy
from bench.reward import disable_dropout
from bench.sampling import sample
from bench.train import example_order, train_online


@dataclass
class Config:
    k: int = 4
    """Completions per prompt; each one's baseline is the mean reward of the other k - 1."""
    prompts_per_update: int = 8
    """Training prompts per update (k completions each)."""
    beta: float = 0.05
    """Weight of the sequence KL to the reference in the reward."""


class RLOO:
    name = "reinforce-loo"
    description = "RLOO: REINFORCE with a leave-one-out baseline over k samples per prompt, gold reward minus KL"
    Config = Config
    uses_preferences = False  # the gold reward replaces the preference labels
    train_defaults = {"lr": 1e-4, "batch_size": 16, "warmup_steps": 0, "log_every": 1, "checkpoint_every": 10}

    def __init__(self, config: Config | None = None):
        self.config = config or Config()
        at_least(self.config, self.name, "k", 2, "the baseline is the mean of the other completions")

    def fit(self, ctx) -> ModelPolicy:
        c, tok, policy = self.config, ctx.tokenizer, ctx.policy
        if ctx.reward is None:
            raise UserError(f"reinforce-loo needs a gold reward and the task {ctx.task.name!r} has none")
        prompts = list(dict.fromkeys(row["prompt"] for row in ctx.preferences or ctx.sft_examples))
        prompt_ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        disable_dropout(policy)  # log-probs must be the same function of the weights in rollout and update

        def loss(model, batch):
            return -(batch["advantages"] * sequence_logps(model, batch)).mean(), {}

        def batch_of(rows):
            return {**collate([e for e, _ in rows], pad), "advantages": torch.tensor([a for _, a in rows])}

        def step(update: int, loop) -> dict:
            seed = seeds.stream(ctx.seed, update)  # the same prompts and draws for an update on resume
            picked = example_order(len(prompts), ctx.seed, update * c.prompts_per_update, c.prompts_per_update)
            rows = [i for i in picked for _ in range(c.k)]
            queries = [prompt_ids[i] for i in rows]
            completions = sample(
                policy,
                queries,
                max_new_tokens=ctx.generation.max_new_tokens,
                eos_token_id=tok.eos_token_id,
                pad_token_id=pad,
                seed=seed,
                batch_size=len(queries),
            )
            texts = tok.batch_decode(completions, skip_special_tokens=True)
            gold = torch.tensor(ctx.reward([prompts[i] for i in rows], texts))
            encoded = [(q + y, len(q)) for q, y in zip(queries, completions)]
            batch = {k: v.to(loop.device) for k, v in collate(encoded, pad).items()}
            with torch.no_grad():  # the sum of sampled log-ratios
                kl = (sequence_logps(loop.model, batch) - sequence_logps(ctx.reference, batch)).cpu()
            reward = (gold - c.beta * kl).view(-1, c.k)
            baseline = (reward.sum(-1, keepdim=True) - reward) / (c.k - 1)  # the mean of the other k - 1
            advantages = (reward - baseline).flatten().tolist()
            metrics = loop.minibatch_epochs(list(zip(encoded, advantages)), batch_of, loss, epochs=1, seed=seed)
            return {
                **metrics,
                "objective/scores": gold.mean().item(),
                "objective/kl": kl.mean().item(),
                "objective/rlhf_reward": reward.mean().item(),
                "sampled_tokens": sum(len(y) for y in completions),
                "episodes": len(rows),
            }

        updates = ctx.train.max_steps or math.ceil(ctx.train.epochs * len(prompts) / c.prompts_per_update)
        model = train_online(
            policy,
            step,
            ctx.train,
            updates=updates,
            seed=ctx.seed,
            log=ctx.log,
            checkpoint_dir=ctx.checkpoint_dir,
            desc=self.name,
            on_step=ctx.on_step,
        )
        return ModelPolicy(model, tok)
