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


# Frees 8 MB tensors that lie between live small ones, after a 16 MB block has raised glibc's rising threshold
# to 16 MB: prints the resident memory (MiB) that is still held once they are gone.
_FRAGMENTS = r"""
import sys
import torch
from bench.device import allocator_from_environment

if sys.argv[1] == "fixed":
    assert allocator_from_environment()

def resident_mib():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20

block = torch.ones(4 * 2**20)  # a 16 MB block, mmapped, then freed
del block
small, medium = [], []
for _ in range(40):
    medium.append(torch.ones(2 * 2**20))  # 8 MB, touched
    small.append(torch.ones(1024))  # 4 KB, kept
before = resident_mib()
medium.clear()
print(before - resident_mib(), before)
"""


def _returned_mib(mode: str, env: dict) -> float:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _FRAGMENTS, mode], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    return float(out.stdout.split()[0])


def test_fixed_mmap_threshold_hands_freed_activations_back(monkeypatch):
    import os
    import sys

    import pytest

    if sys.platform != "linux" or not os.path.exists("/proc/self/statm"):
        pytest.skip("glibc's allocator on Linux")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    assert _returned_mib("rising", env) < 100  # glibc's own policy keeps the 320 MB freed between live blocks
    assert _returned_mib("fixed", env) > 300  # the fixed threshold unmaps each 8 MB tensor when it is freed
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")  # a user's own malloc tunables are left as they are
    from bench.device import allocator_from_environment

    assert not allocator_from_environment()


def test_only_a_large_model_gets_the_fixed_threshold(monkeypatch):
    from bench import device

    calls = []
    monkeypatch.setattr(device, "allocator_from_environment", lambda: calls.append(1) or True)
    model = tiny_gpt2(vocab_size=64)
    parameters = sum(p.numel() for p in model.parameters())
    assert not device.allocator_for(model) and not calls  # small: glibc's own policy
    monkeypatch.setattr(device, "LEAN_ALLOCATOR_PARAMETERS", parameters)
    assert device.allocator_for(model) and calls == [1]
    monkeypatch.setattr(device, "allocator_from_environment", lambda: False)  # e.g. the user's MALLOC_* settings
    assert not device.allocator_for(model)
