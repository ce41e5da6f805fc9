"""Device, precision and thread choice: CUDA with bf16 where present, CPU fp32 otherwise."""

import os

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
