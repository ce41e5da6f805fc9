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
