"""The one training loop. Algorithms hand it their examples, a collate function and their loss.

Optimizer, linear warmup, gradient-norm clipping, gradient accumulation, mixed precision on GPU
(through accelerate), a tqdm progress bar, step logs and checkpoint/resume all live here, once.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from bench.checks import at_least, between, non_negative, one_of, positive, require
from bench.device import mixed_precision
from bench.errors import UserError

CHECKPOINT = "train_state.pt"


@dataclass
class TrainConfig:
    """Optimisation settings shared by every trained algorithm (`--set train.KEY=VALUE`)."""

    lr: float = 1e-4
    """Peak learning rate, reached after `warmup_steps` and then held constant."""
    optimizer: str = "adamw"
    """adamw, or rmsprop (the DPO paper's choice)."""
    batch_size: int = 32
    """Examples per optimizer step."""
    grad_accum: int = 1
    """Micro-batches per optimizer step (each holds batch_size / grad_accum examples)."""
    epochs: float = 1.0
    """Passes over the training examples (fractions allowed); ignored when max_steps > 0."""
    max_steps: int = 0
    """Optimizer steps; 0 derives them from `epochs`."""
    warmup_steps: int = 10
    """Steps of linear learning-rate warmup from 0."""
    max_grad_norm: float = 1.0
    """Gradient-norm clip; 0 disables clipping."""
    weight_decay: float = 0.0
    """Decoupled weight decay (AdamW)."""
    max_length: int = 128
    """Longest prompt + completion in tokens; longer completions are truncated."""
    log_every: int = 10
    """Optimizer steps between rows of train_log.jsonl (metrics averaged over the window)."""
    checkpoint_every: int = 0
    """Optimizer steps between resumable checkpoints; 0 disables them."""
    lora_r: int = 0
    """LoRA rank: > 0 trains a low-rank adapter (peft) on the policy instead of all its weights; 0 trains every weight."""
    lora_alpha: int = 16
    """LoRA scaling numerator (the update is scaled by lora_alpha / lora_r)."""
    lora_dropout: float = 0.05
    """Dropout on the LoRA branch during training."""
    lora_targets: str = "all-linear"
    """Modules that get adapters: "all-linear" (every linear layer but the output head) or comma-separated module names."""

    def check(self, section: str = "train") -> None:
        """One line naming the first setting out of range (bench.config.apply_overrides calls it for every run).

        Lengths that depend on the model (max_length within its context) are checked once it is
        loaded, by bench.runner.check_context.
        """
        positive(self, section, "lr", "e.g. 1e-4")
        one_of(self, section, "optimizer", tuple(OPTIMIZERS))
        at_least(self, section, "batch_size", 1)
        at_least(self, section, "grad_accum", 1)
        require(
            self.batch_size % self.grad_accum == 0,
            section,
            "batch_size",
            self.batch_size,
            f"must be a multiple of {section}.grad_accum ({self.grad_accum})",
        )
        non_negative(self, section, "max_steps", f"0 derives the steps from {section}.epochs")
        if self.max_steps == 0:
            positive(self, section, "epochs", f"or set {section}.max_steps")
        else:
            non_negative(self, section, "epochs", f"ignored while {section}.max_steps > 0")
        non_negative(self, section, "warmup_steps", "0 starts at the full learning rate")
        non_negative(self, section, "max_grad_norm", "0 disables clipping")
        non_negative(self, section, "weight_decay")
        at_least(self, section, "max_length", 2, "a prompt token and a completion token")
        at_least(self, section, "log_every", 1)
        non_negative(self, section, "checkpoint_every", "0 disables checkpoints")
        non_negative(self, section, "lora_r", "0 trains every weight")
        at_least(self, section, "lora_alpha", 1)
        between(self, section, "lora_dropout", 0, 1, "[)")


OPTIMIZERS: dict[str, Callable[[list, TrainConfig], torch.optim.Optimizer]] = {
    "adamw": lambda params, cfg: torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay),
    "rmsprop": lambda params, cfg: torch.optim.RMSprop(params, lr=cfg.lr),
}
"""train.optimizer's choices."""


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    cfg.check()  # direct callers (PPO, the Python API) get the same checks as --set
    return OPTIMIZERS[cfg.optimizer]([p for p in params if p.requires_grad], cfg)


def total_steps(n_examples: int, cfg: TrainConfig) -> int:
    if cfg.max_steps > 0:
        return cfg.max_steps
    return max(1, math.ceil(cfg.epochs * n_examples / cfg.batch_size))


def example_order(n: int, seed: int, start: int, count: int) -> list[int]:
    """Indices `start .. start+count` of an endless stream of seeded per-epoch permutations.

    Step k always sees the same examples, so a resumed run continues exactly where it stopped.
    """
    out: list[int] = []
    epoch, offset = divmod(start, n)
    while len(out) < count:
        # Modulo 2**64, the most a generator takes: the same seeds as before wherever they fitted.
        generator = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % 2**64)
        perm = torch.randperm(n, generator=generator).tolist()
        out.extend(perm[offset : offset + count - len(out)])
        epoch, offset = epoch + 1, 0
    return out


def train_loop(
    model: torch.nn.Module,
    examples: Sequence[Any],
    collate: Callable[[list[Any]], dict],
    loss_fn: Callable[[torch.nn.Module, dict], tuple[torch.Tensor, dict[str, float]]],
    cfg: TrainConfig,
    *,
    seed: int,
    log: Callable[[dict], None] | None = None,
    checkpoint_dir: Path | None = None,
    desc: str = "train",
    on_step: Callable[[int, int, torch.nn.Module], None] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> torch.nn.Module:
    """Minimise `loss_fn(model, batch)` over `examples`; returns the trained (unwrapped) model.

    `loss_fn` returns the scalar loss and a dict of metrics (floats or 0-d tensors) that are
    averaged over each logging window and written through `log`. `on_step(step, total, model)`
    runs after every optimizer step (the harness evaluates intermediate checkpoints with it).
    `optimizer`, when given, is used instead of a new one, so its state (e.g. Adam's moments)
    carries over between calls: PPO calls this once per rollout for its minibatch epochs.
    """
    from accelerate import Accelerator  # imported here: keeps `bench --help` fast

    if len(examples) == 0:
        raise UserError(f"{desc}: no training examples; check the task's data or the data.* files you passed")
    cfg.check()  # settings built in code (task builds, PPO's inner loop, tests) meet the same ranges as --set
    steps = total_steps(len(examples), cfg)
    micro = cfg.batch_size // cfg.grad_accum

    torch.manual_seed(seed)
    accelerator = Accelerator(mixed_precision=mixed_precision(), cpu=not torch.cuda.is_available())
    if optimizer is None:
        optimizer = make_optimizer(model.parameters(), cfg)
    warmup = max(0, cfg.warmup_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / (warmup + 1)))
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    step = 0
    ckpt = Path(checkpoint_dir) / CHECKPOINT if checkpoint_dir else None
    if ckpt is not None and ckpt.exists():
        state = load_checkpoint(ckpt)
        accelerator.unwrap_model(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        step = state["step"]

    window: dict[str, list[float]] = {}
    tokens = 0  # non-padding tokens trained on in the current logging window (cost accounting)
    model.train()
    bar = tqdm(total=steps, initial=step, desc=desc, unit="step", dynamic_ncols=True, leave=False, disable=None)
    while step < steps:
        order = example_order(len(examples), seed, step * cfg.batch_size, cfg.batch_size)
        # Each process takes its share of the step's examples (one process on CPU).
        order = order[accelerator.process_index :: accelerator.num_processes]
        step_metrics: dict[str, float] = {}
        for start in range(0, len(order), micro):
            batch = collate([examples[i] for i in order[start : start + micro]])
            batch = {k: v.to(accelerator.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            if "attention_mask" in batch:
                tokens += int(batch["attention_mask"].sum())
            with accelerator.autocast():
                loss, metrics = loss_fn(model, batch)
            if not torch.isfinite(loss):
                raise UserError(
                    f"{desc}: the loss became {loss.item()} at step {step + 1}; lower train.lr "
                    f"(now {cfg.lr}) or check the data for empty completions"
                )
            accelerator.backward(loss / math.ceil(len(order) / micro))
            share = len(order[start : start + micro]) / len(order)
            for k, v in {"loss": loss, **metrics}.items():
                step_metrics[k] = step_metrics.get(k, 0.0) + share * float(v.detach() if torch.is_tensor(v) else v)
        if cfg.max_grad_norm > 0:
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            step_metrics["grad_norm"] = float(grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{step_metrics['loss']:.4f}")
        for k, v in step_metrics.items():
            window.setdefault(k, []).append(v)
        if log is not None and (step % cfg.log_every == 0 or step == steps):
            row = {
                "step": step,
                "epoch": step * cfg.batch_size / len(examples),
                "lr": scheduler.get_last_lr()[0],
                "tokens": tokens,
            }
            row.update({k: sum(v) / len(v) for k, v in window.items()})
            log(row)
            window, tokens = {}, 0
        if ckpt is not None and cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < steps:
            _save_checkpoint(ckpt, accelerator.unwrap_model(model), optimizer, scheduler, step)
        if on_step is not None:
            on_step(step, steps, accelerator.unwrap_model(model))
    bar.close()
    model = accelerator.unwrap_model(model)
    model.eval()
    return model


def load_checkpoint(path: Path) -> dict:
    """A resume checkpoint, read as tensors and plain data only: a file that holds anything else is
    refused, never unpickled, so a crafted checkpoint in a shared results directory cannot run code."""
    import pickle

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "GLOBAL" in str(exc):  # the file names a callable or class that unpickling would run
            raise UserError(
                f"refused to load {path}: it holds objects other than tensors and plain data; the "
                "partial run is discarded, run the same command again to start it over"
            ) from None
        raise UserError(
            f"{path}: unreadable checkpoint (not a torch file); the partial run is discarded, run the "
            "same command again to start it over"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise UserError(
            f"{path}: unreadable checkpoint ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
            "the partial run is discarded, run the same command again to start it over"
        ) from None
    if not isinstance(state, dict):
        raise UserError(f"{path}: not a checkpoint of this suite; the partial run is discarded, run the command again")
    return state


def _save_checkpoint(path: Path, model, optimizer, scheduler, step: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": torch.get_rng_state(),
            "step": step,
        },
        tmp,
    )
    tmp.replace(path)
    # A small sidecar so the harness can tell the resume step without loading the weights.
    (path.parent / "train_state.json").write_text(json.dumps({"step": step}))
