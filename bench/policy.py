"""A Policy that is a model: samples evaluation completions and saves itself in Hugging Face format.

Every trained algorithm returns one. Evaluators that need log-probs (KL, pair accuracy) read
`policy.model` directly; a Policy that is not a model (best-of-N) simply has no `model`.
"""
from __future__ import annotations

from pathlib import Path

from bench.contracts import Generation, Sample
from bench.sampling import sample


class ModelPolicy:
    def __init__(self, model, tokenizer):
        self.model = model
        self.tokenizer = tokenizer

    def sample(self, prompts: list[str], gen: Generation, seed: int) -> list[Sample]:
        """`gen.samples_per_prompt` completions of every prompt, grouped by prompt, in prompt order."""
        tok = self.tokenizer
        # Prompts are tokenized exactly as bench.logprobs.encode does, so evaluators score the same ids.
        prompt_ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
        which = [i for i in range(len(prompts)) for _ in range(gen.samples_per_prompt)]
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        completions = sample(
            self.model, [prompt_ids[i] for i in which], max_new_tokens=gen.max_new_tokens,
            temperature=gen.temperature, top_p=gen.top_p, eos_token_id=tok.eos_token_id, pad_token_id=pad,
            seed=seed, batch_size=gen.batch_size, desc="sample",
        )
        texts = tok.batch_decode(completions, skip_special_tokens=True)
        return [Sample(prompt_index=i, prompt=prompts[i], completion=text, prompt_ids=prompt_ids[i], completion_ids=ids)
                for i, text, ids in zip(which, texts, completions)]

    def save(self, path: str | Path) -> None:
        """Write model and tokenizer so that AutoModelForCausalLM / AutoTokenizer.from_pretrained(path) load them."""
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
