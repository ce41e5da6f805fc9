"""Kernel choices that must not change what a model computes."""

from __future__ import annotations

import torch
from tiny import tiny_gpt2, tiny_llama
from transformers import AutoModelForCausalLM
from transformers.activations import NewGELUActivation

from bench.device import fused_gelu


def test_fused_gelu_computes_gpt2s_gelu_new_and_reloads_fused(tmp_path):
    model = tiny_gpt2(vocab_size=64, seed=1)
    model.config.activation_function = "gelu_new"
    for block in model.transformer.h:
        block.mlp.act = NewGELUActivation()
    ids = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(ids).logits
        fused = fused_gelu(model)
        got = fused(ids).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert not any(isinstance(m, NewGELUActivation) for m in fused.modules())
    fused.save_pretrained(tmp_path)
    assert AutoModelForCausalLM.from_pretrained(tmp_path).config.activation_function == "gelu_pytorch_tanh"


def test_fused_gelu_leaves_other_activations_alone():
    llama = tiny_llama(vocab_size=64, seed=1)
    before = {name: type(m) for name, m in llama.named_modules()}
    assert fused_gelu(llama) is llama and {name: type(m) for name, m in llama.named_modules()} == before
