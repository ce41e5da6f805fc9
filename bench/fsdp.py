"""FSDP2 for the training loop: the policy's weights, gradients and optimizer state sharded across the processes.

A launch asks for it as accelerate's FSDP2 settings do (`accelerate launch --config_file
configs/accelerate/fsdp2.yaml`, or `--use_fsdp --fsdp_version 2`: ACCELERATE_USE_FSDP=true, FSDP_VERSION=2).
bench then shards the policy itself with torch's `fully_shard`, over the process group accelerate set up (nccl
on GPUs, gloo on CPUs), rather than through accelerate's FSDP plugin, which accelerate applies on GPUs only:
the same code trains in the test suite's CPU processes and on GPUs.

- **Training** (`shard`): each transformer block (the model's `_no_split_modules` classes, or
  FSDP_TRANSFORMER_CLS_TO_WRAP) is one FSDP unit and the rest of the model the root unit. Every process runs
  every step's forward and backward passes on its own micro-batches, so the weight gathers and gradient
  reduce-scatters meet; the gradients are averaged over the processes, as DDP's are.
- **Independent forward passes** (sampling and scoring, shared out by bench.distributed.map_sharded, where each
  process has its own batches): `whole_weights` gathers every sharded model's weights for the block.
- **After training** (`plain_copy`): an ordinary model with the trained weights on every process, what DDP
  leaves behind, so evaluation and saving run as they do after data-parallel training.
- **Checkpoints** (`full_state`, `load_full_state`): whole (unsharded) model and optimizer state dicts, written by
  the main process and loaded by every process.
"""

from __future__ import annotations

import copy
import os
import weakref
from contextlib import contextmanager
from typing import Iterator

import torch

from bench import distributed
from bench.checks import comma_list
from bench.errors import UserError

_sharded: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
"""The sharded models (`shard`), each with the reshard-after-forward setting it trains with."""
_whole = 0
"""Depth of `whole_weights()` blocks."""


def launch_version() -> int | None:
    """The FSDP version the launch asks for (accelerate launch's environment; its default is 1), None where it asks
    for no FSDP, or for a version that is not a number."""
    if not distributed.env_flag("ACCELERATE_USE_FSDP"):
        return None
    version = os.environ.get("FSDP_VERSION", "1").strip()
    return int(version) if version.isdigit() else None


def requested() -> bool:
    """Whether the launch asks for FSDP2."""
    return launch_version() == 2


def applies() -> bool:
    """Whether the policy is sharded here: FSDP2 asked for, and several processes sharing the work."""
    return requested() and distributed.world_size() > 1


def _wrap_policy() -> str:
    return os.environ.get("FSDP_AUTO_WRAP_POLICY", "TRANSFORMER_BASED_WRAP").strip().upper()


def configure(desc: str) -> None:
    """One line for an FSDP setting of the launch that bench does not implement, before anything is built; and
    transformers' loading of the weights on the main process alone switched off (FSDP_CPU_RAM_EFFICIENT_LOADING,
    on by default in `accelerate launch --use_fsdp`): every process loads the model, and `shard` starts them all
    from the main process's weights."""
    os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] = "false"
    unsupported = {
        "FSDP_OFFLOAD_PARAMS": "fsdp_offload_params: false (weights offloaded to the CPU are not supported)",
        "FSDP_ACTIVATION_CHECKPOINTING": "fsdp_activation_checkpointing: false and --set "
        "train.activation_checkpointing=true (bench applies activation checkpointing itself)",
    }
    for variable, fix in unsupported.items():
        if distributed.env_flag(variable):
            raise UserError(f"{desc}: {variable.lower()} is not supported with FSDP2; set {fix}")
    policy = _wrap_policy()
    if policy not in ("TRANSFORMER_BASED_WRAP", "NO_WRAP"):
        raise UserError(
            f"{desc}: fsdp_auto_wrap_policy {policy} is not supported; set TRANSFORMER_BASED_WRAP (one FSDP unit "
            "per transformer block) or NO_WRAP (the whole model one unit)"
        )


def _layer_classes(model: torch.nn.Module) -> set[type]:
    """The classes of `model`'s transformer blocks: FSDP_TRANSFORMER_CLS_TO_WRAP's names, or the `_no_split_modules`
    of the Hugging Face models in it (PPO's value-head wrapper and a LoRA adapter hold one)."""
    if _wrap_policy() == "NO_WRAP":
        return set()
    names = set(comma_list(os.environ.get("FSDP_TRANSFORMER_CLS_TO_WRAP", "")))
    if not names:
        for module in model.modules():
            names.update(getattr(module, "_no_split_modules", None) or ())
    classes = {type(module) for module in model.modules() if type(module).__name__ in names}
    missing = names - {cls.__name__ for cls in classes}
    if os.environ.get("FSDP_TRANSFORMER_CLS_TO_WRAP") and missing:
        raise UserError(
            f"fsdp_transformer_layer_cls_to_wrap names {', '.join(sorted(missing))}, which the model does not have; "
            f"its blocks are {', '.join(sorted({type(m).__name__ for m in model.modules()})[:12])}, ..."
        )
    return classes


def skeleton(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model` with its weights on the meta device (no memory) and its buffers real: what `plain_copy`
    fills with the trained weights. Taken before `shard`, which changes the model in place."""
    memo = {id(p): torch.nn.Parameter(torch.empty_like(p, device="meta"), p.requires_grad) for p in model.parameters()}
    return copy.deepcopy(model, memo)


def shard(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """`model` sharded in place across the processes: one FSDP unit per transformer block, the root the rest."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    reshard = distributed.env_flag("FSDP_RESHARD_AFTER_FORWARD", True)
    mesh = init_device_mesh(device.type, (distributed.world_size(),))
    # Every process starts from the main process's weights and buffers, as DDP makes sure when it wraps a model.
    model.to(device)
    for tensor in [*model.parameters(), *model.buffers()]:
        dist.broadcast(tensor.data, src=0)
    classes = tuple(_layer_classes(model))
    for module in list(model.modules()):
        if classes and isinstance(module, classes):
            fully_shard(module, mesh=mesh, reshard_after_forward=reshard)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard)
    _sharded[model] = reshard
    return model


def any_sharded() -> bool:
    """Whether any model is sharded (`shard`) in this process."""
    return len(_sharded) > 0


def sharded_now(model) -> bool:
    """Whether `model` is a sharded model (its outermost FSDP unit) outside a `whole_weights` block: only its own
    forward then gathers the weights of that unit (the embeddings and the head, for a language model)."""
    return not _whole and model in _sharded


def _fsdp_modules(model: torch.nn.Module) -> list:
    from torch.distributed.fsdp import FSDPModule

    return [module for module in model.modules() if isinstance(module, FSDPModule)]


@contextmanager
def whole_weights() -> Iterator[None]:
    """Every sharded model holds its whole weights on every process for the block.

    A sharded forward pass gathers each block's weights from all processes, so the processes must run their
    forward passes in step; map_sharded's jobs do not (each process has its own batches, and a sampling batch
    stops at its own eos). Here each model's weights are gathered once (a collective: every process enters the
    block, as every process calls map_sharded) and kept whole through any number of forward passes of the
    model or any module in it, then sharded again for training. For the block a process holds one whole copy
    of the policy, as under DDP.
    """
    global _whole
    models = list(_sharded.items()) if not _whole else []
    _whole += 1
    try:
        for model, _ in models:
            model._get_fsdp_state()._lazy_init()  # else unshard() leaves the root's weights sharded before a forward
            model.set_reshard_after_forward(False)
            for module in _fsdp_modules(model):
                module.unshard()
        yield
    finally:
        _whole -= 1
        for model, reshard in models:
            for module in _fsdp_modules(model):
                module.reshard()
            model.set_reshard_after_forward(reshard)


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """A sharded tensor (a DTensor: a weight, its gradient, a norm over them) gathered whole; any other as it is."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def clip_grad_norm_(model: torch.nn.Module, max_norm: float) -> torch.Tensor:
    """The gradient norm over all shards, before clipping (torch.nn.utils.clip_grad_norm_ of the sharded model)."""
    return whole(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))


@contextmanager
def no_sync(model: torch.nn.Module) -> Iterator[None]:
    """Gradients accumulate in each process without a reduce-scatter (all micro-batches of a step but the last)."""
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def _options(**kwargs):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


def full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """The sharded model's and optimizer's whole state dicts, on the CPU of the main process (empty elsewhere): a
    collective, every process calls it. The model's keys are those of the unsharded model."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    options = _options(cpu_offload=True)
    return get_model_state_dict(model, options=options), get_optimizer_state_dict(model, optimizer, options=options)


def load_full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, weights: dict, optim: dict) -> None:
    """`full_state`'s dicts (read by every process) into the sharded model and its optimizer."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    set_model_state_dict(model, weights, options=_options())
    set_optimizer_state_dict(model, optimizer, optim, options=_options())


def plain_copy(skeleton_model: torch.nn.Module, model: torch.nn.Module) -> torch.nn.Module:
    """`skeleton_model` (`skeleton`, taken before sharding) holding the sharded `model`'s trained weights, whole, on
    every process's device: an ordinary module again. Weights tied in the skeleton stay tied."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    weights = get_model_state_dict(model, options=_options())  # a collective: every process gets every tensor
    device = next(p for p in weights.values() if torch.is_tensor(p)).device
    placed: dict[int, torch.nn.Parameter] = {}
    for name, param in skeleton_model.named_parameters(remove_duplicate=False):
        if id(param) not in placed:
            if name not in weights:
                raise RuntimeError(f"FSDP2: the trained state dict has no {name}")
            placed[id(param)] = torch.nn.Parameter(weights[name].detach(), param.requires_grad)
        owner, _, leaf = name.rpartition(".")
        setattr(skeleton_model.get_submodule(owner), leaf, placed[id(param)])
    _sharded.pop(model, None)
    return skeleton_model.to(device)
