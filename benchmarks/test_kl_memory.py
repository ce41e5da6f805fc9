"""Peak memory of sequence_kl at a SmolLM2-sized vocabulary (49,152 tokens): chunked against whole-batch logits.

Each measurement runs in a fresh interpreter and reports its peak resident set size
(VmHWM, benchmarks/peak_rss.py), so one setting's allocations cannot hide another's. The model is a 2-layer
Llama of width 64 built from a config, so the vocabulary-wide tensors dominate: with whole-batch
logits the policy's and the reference's [B, T, V] float32 logits, log-softmaxes and their product
all exist together; chunked (max_tokens=AUTO), only MAX_LOGITS elements' worth at a time, whatever the batch. The ratio
printed (whole-batch / chunked growth) rises with rows x length; nothing asserts a size or a time. Run with
`make bench` or
    pytest benchmarks/test_kl_memory.py --benchmark-enable -s
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

VOCAB, WIDTH, ROWS, PROMPT_TOKENS, COMPLETION_TOKENS = 49_152, 64, 32, 32, 96

_CHILD = """
import json, sys
import torch
from benchmarks.peak_rss import peak_rss_mib  # not getrusage: see benchmarks/peak_rss.py
from transformers import LlamaConfig, LlamaForCausalLM
from bench.kl import sequence_kl

torch.set_num_threads(2)
max_tokens = json.loads(sys.argv[1])
vocab, width, rows, n_prompt, n_completion = json.loads(sys.argv[2])
config = LlamaConfig(vocab_size=vocab, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
torch.manual_seed(0)
policy, reference = LlamaForCausalLM(config).eval(), LlamaForCausalLM(config).eval()
g = torch.Generator().manual_seed(1)
ids = torch.randint(1, vocab, (rows, n_prompt + n_completion), generator=g).tolist()
before = peak_rss_mib()
exact, _ = sequence_kl(policy, reference, [r[:n_prompt] for r in ids], [r[n_prompt:] for r in ids], pad_id=0,
                       batch_size=rows, max_tokens=max_tokens)
peak = peak_rss_mib()
print(json.dumps({"baseline_mib": before, "peak_mib": peak, "kl_sum": sum(exact)}))
"""


def _measure(max_tokens) -> dict:
    shape = [VOCAB, WIDTH, ROWS, PROMPT_TOKENS, COMPLETION_TOKENS]
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(max_tokens), json.dumps(shape)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_sequence_kl_peak_rss_chunked_vs_whole_batch(benchmark):
    from bench.logprobs import AUTO, MAX_LOGITS

    positions = MAX_LOGITS // VOCAB
    whole = _measure(None)
    chunked = benchmark.pedantic(_measure, args=(AUTO,), rounds=1, iterations=1)
    # Growth over what the interpreter, torch and both models already held before scoring.
    grown = {name: r["peak_mib"] - r["baseline_mib"] for name, r in (("whole", whole), ("chunked", chunked))}
    benchmark.extra_info.update(
        {
            "whole_batch_peak_mib": whole["peak_mib"],
            "chunked_peak_mib": chunked["peak_mib"],
            "whole_batch_growth_mib": grown["whole"],
            "chunked_growth_mib": grown["chunked"],
            "positions_per_chunk": positions,
        }
    )
    print(
        f"\nsequence_kl, vocab {VOCAB}, {ROWS} x {PROMPT_TOKENS + COMPLETION_TOKENS} tokens: peak RSS whole-batch "
        f"{whole['peak_mib']:.0f} MiB (+{grown['whole']:.0f} while scoring), chunked by {positions} positions "
        f"{chunked['peak_mib']:.0f} MiB (+{grown['chunked']:.0f}); growth ratio whole / chunked "
        f"{grown['whole'] / max(grown['chunked'], 1.0):.1f}"
    )
    assert abs(whole["kl_sum"] - chunked["kl_sum"]) <= 1e-4 * max(1.0, abs(whole["kl_sum"]))
