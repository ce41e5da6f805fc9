"""A Policy that is a model (bench.contracts.Policy): samples evaluation completions, saves itself for Hugging Face.

Every trained algorithm returns one. Evaluators that need log-probs (KL, pair accuracy) read
`policy.model`; a Policy that is not a model (best-of-N) simply has no `model`.
`add_lora` is how the harness gives any algorithm a LoRA-adapted policy (`--set train.lora_r=N`).
"""

from __future__ import annotations

from pathlib import Path

from bench.checks import comma_list
from bench.contracts import Generation, Policy, Sample
from bench.logprobs import pad_id
from bench.sampling import sample


class ModelPolicy(Policy):
    """A causal LM and its tokenizer as a Policy; `fit_metrics` are aggregates the algorithm measured while fitting."""

    def __init__(self, model, tokenizer, fit_metrics: dict[str, dict] | None = None):
        super().__init__(fit_metrics)
        self.model = model
        self.tokenizer = tokenizer

    def sample(self, prompts: list[str], gen: Generation, seed: int) -> list[Sample]:
        """`gen.samples_per_prompt` completions of every prompt, grouped by prompt, in prompt order."""
        tok = self.tokenizer
        # Prompts are tokenized exactly as bench.logprobs.encode does, so evaluators score the same ids.
        prompt_ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
        which = [i for i in range(len(prompts)) for _ in range(gen.samples_per_prompt)]
        pad = pad_id(tok)
        completions = sample(
            self.model,
            [prompt_ids[i] for i in which],
            max_new_tokens=gen.max_new_tokens,
            temperature=gen.temperature,
            top_p=gen.top_p,
            eos_token_id=tok.eos_token_id,
            pad_token_id=pad,
            seed=seed,
            batch_size=gen.batch_size,
            desc="sample",
        )
        texts = tok.batch_decode(completions, skip_special_tokens=True)
        return [
            Sample(prompt_index=i, prompt=prompts[i], completion=text, prompt_ids=prompt_ids[i], completion_ids=ids)
            for i, text, ids in zip(which, texts, completions)
        ]

    def save(self, path: str | Path) -> None:
        """Write model and tokenizer in Hugging Face format.

        A full model reloads with AutoModelForCausalLM.from_pretrained(path); a LoRA-adapted one is
        saved as its adapter only (megabytes, not the base model again) and reloads with
        peft.AutoPeftModelForCausalLM.from_pretrained(path), which finds the base model it names.
        An adapter trained on a base that is itself another run's adapter, merged at load time
        (bench.hub.load_causal_lm), has no base to name: the merged weights are written instead.
        """
        model = self.model
        get_base = getattr(model, "get_base_model", None)
        if get_base is not None and getattr(get_base(), "merged_adapter", None):
            import copy

            model = copy.deepcopy(model).merge_and_unload()
        model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)


def add_lora(model, train):
    """`model` wrapped in a trainable LoRA adapter (peft) per `train.lora_*`; the base weights are frozen."""
    from peft import LoraConfig, get_peft_model
    from transformers.pytorch_utils import Conv1D

    from bench.errors import UserError

    targets = train.lora_targets.strip()
    config = LoraConfig(
        r=train.lora_r,
        lora_alpha=train.lora_alpha,
        lora_dropout=train.lora_dropout,
        task_type="CAUSAL_LM",
        target_modules=targets if targets == "all-linear" else comma_list(targets),
        # GPT-2 stores its linear layers transposed (Conv1D); say so rather than have peft warn and guess.
        fan_in_fan_out=any(isinstance(m, Conv1D) for m in model.modules()),
    )
    try:
        return get_peft_model(model, config)
    except ValueError as exc:  # e.g. target modules that the model does not have
        raise UserError(f"--set train.lora_targets={targets}: {' '.join(str(exc).split())[:200]}") from None
