"""Device, precision and thread choice: CUDA with bf16 where present, CPU fp32 otherwise."""

import ctypes
import os
import sys

import torch


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def mixed_precision() -> str:
    """accelerate's mixed_precision setting: bf16 on GPUs that support it (bf16 autocast is slower on CPU)."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def threads_from_environment() -> None:
    """Use OMP_NUM_THREADS torch threads where it is set to a positive integer: how `bench sweep --jobs N` gives
    each of its runs its share of the cores. The run record keeps the count a run used (config.json, torch_threads)."""
    text = os.environ.get("OMP_NUM_THREADS", "")
    if text.strip().isdigit() and int(text) > 0:
        torch.set_num_threads(int(text))


HEAP_MMAP_THRESHOLD = 4 * 2**20
"""Bytes from which glibc serves an allocation by its own mmap (returned to the system when freed) instead of its heap.

glibc's default is a threshold that rises to the largest block freed so far, up to 32 MB. Tensors of 4-32 MB (a
real model's activations: 3,584 positions x 576 channels is 8 MB) then come from the heap, where memory freed
between small live blocks is never handed back: a DPO step of SmolLM2-135M peaked at 4.3 GiB of resident memory
with the rising threshold and 3.2 GiB with this fixed one, its live tensors (two models, gradients, Adam) being
~2.7 GiB. The price is fresh pages, faulted in, for every tensor of 4 MB and more: on a small model, whose
memory is no concern, that is time lost (the default task's DPO fit on 640 pairs took 6.7 s with the fixed
threshold and 6.2 s with glibc's own, 2 threads), so only models from LEAN_ALLOCATOR_PARAMETERS get it."""

LEAN_ALLOCATOR_PARAMETERS = 20_000_000
"""Parameters from which a run's policy gets the fixed mmap threshold (allocator_for): SmolLM2-135M does, the default
task's 2.1M-parameter GPT-2 does not."""


def allocator_from_environment() -> bool:
    """Fix glibc's mmap threshold at HEAP_MMAP_THRESHOLD, unless the environment sets glibc's malloc tunables itself.

    Returns whether the setting was made (not on other C libraries or systems, where it is left as it is)."""
    if sys.platform != "linux" or any(name.startswith(("MALLOC_", "GLIBC_TUNABLES")) for name in os.environ):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # musl and other C libraries: no mallopt, their own policy
        return False
    m_mmap_threshold = -3  # malloc.h
    return bool(getattr(libc, "mallopt", lambda *_: 0)(m_mmap_threshold, HEAP_MMAP_THRESHOLD))


def allocator_for(model: torch.nn.Module) -> bool:
    """allocator_from_environment() for a model of LEAN_ALLOCATOR_PARAMETERS or more; glibc's own policy below.

    Returns whether the setting was made. Called once the run's policy is loaded; a setting made stays for the
    process (glibc has no way back to its rising threshold)."""
    parameters = sum(p.numel() for p in model.parameters())
    return parameters >= LEAN_ALLOCATOR_PARAMETERS and allocator_from_environment()


def fused_gelu(model: torch.nn.Module) -> torch.nn.Module:
    """`model` with GPT-2's "gelu_new" activation computed by one fused kernel ("gelu_pytorch_tanh").

    Both are the same tanh approximation of GELU (they agree to ~5e-7); gelu_new spells it as eight
    elementwise operations, each a pass over the MLP's activations: 20-30% of a small GPT-2's forward on a
    CPU. The config is changed with the modules, so a saved model reloads with the fused kernel. Models with
    any other activation are returned as they are.
    """
    from transformers.activations import ACT2FN, NewGELUActivation

    config = getattr(model, "config", None)
    if getattr(config, "activation_function", None) != "gelu_new":
        return model
    for module in model.modules():
        for name, child in module.named_children():
            if isinstance(child, NewGELUActivation):
                setattr(module, name, ACT2FN["gelu_pytorch_tanh"])
    config.activation_function = "gelu_pytorch_tanh"
    return model
