"""Device and precision choice: CUDA with bf16 where present, CPU fp32 otherwise."""

import torch


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def mixed_precision() -> str:
    """accelerate's mixed_precision setting: bf16 on GPUs that support it (bf16 autocast is slower on CPU)."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"
