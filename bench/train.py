"""The one training loop: every trained algorithm runs on it, offline and online alike.

An offline algorithm hands `train_loop` its examples, a collate function and its loss. An online one
(PPO, RLOO, ...) hands `train_online` a step, `step(update, loop) -> metrics`: rollout, score, then
an update through `loop.minibatch_epochs`. Both run in `_run`, the one outer loop: step count, tqdm
progress bar, log windows, checkpoint/resume (with a step's own extra state) and on_step. `Loop`
holds what a run builds once: the accelerator (mixed precision on GPU), the model (replicated by DDP
across several processes, or sharded by FSDP2 when the launch asks for it: bench.fsdp), the optimizer
with linear warmup, and the optimizer step (gradient accumulation, NaN check, gradient-norm clipping).
"""

from __future__ import annotations

import math
import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from bench import distributed, fsdp, seeds
from bench import io as bench_io
from bench.checks import at_least, between, non_negative, one_of, positive, require
from bench.device import mixed_precision
from bench.errors import UserError

CHECKPOINT = "train_state.pt"
"""A run's resume checkpoint: weights, optimizer, schedule, RNG, step, open log window and a step's extra state."""
_KEYS = {"model", "optimizer", "scheduler", "rng", "step", "window", "extra"}  # what every CHECKPOINT holds
STATE_FILE = "train_state.json"
"""The sidecar beside CHECKPOINT that names its step, so the harness reads the resume step without loading weights."""
COUNTS = ("tokens", "sampled_tokens", "episodes", "reward_calls")
"""Log keys summed over a window (the costs that bench.runner adds up); the others are averaged."""
LAST = ("epoch", "lr")
"""Log keys that say where a window ends: its last value, not an average."""


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
    """Optimizer steps (an online algorithm's updates); 0 derives them from `epochs`."""
    warmup_steps: int = 10
    """Steps of linear learning-rate warmup from 0."""
    max_grad_norm: float = 1.0
    """Gradient-norm clip; 0 disables clipping."""
    weight_decay: float = 0.0
    """Decoupled weight decay (AdamW)."""
    max_length: int = 128
    """Longest prompt + completion in tokens; longer completions are truncated."""
    log_every: int = 10
    """Steps (optimizer steps; updates online) between rows of train_log.jsonl (counts summed over the window,
    metrics averaged)."""
    checkpoint_every: int = 0
    """Steps (optimizer steps; updates online) between resumable checkpoints; 0 disables them."""
    activation_checkpointing: bool = False
    """Recompute each layer's activations during the backward pass instead of keeping them from the forward: far
    less memory for a large model or batch (a 135M-parameter DPO step), about a third more compute."""
    lora_r: int = 0
    """LoRA rank: > 0 trains a low-rank adapter (peft) on the policy instead of all its weights; 0 trains every
    weight."""
    lora_alpha: int = 16
    """LoRA scaling numerator (the update is scaled by lora_alpha / lora_r)."""
    lora_dropout: float = 0.05
    """Dropout on the LoRA branch during training."""
    lora_targets: str = "all-linear"
    """Modules that get adapters: "all-linear" (every linear layer but the output head) or comma-separated module
    names."""

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
    cfg.check()  # settings built in code (tasks, tests, the Python API) meet the same ranges as --set
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
        generator = torch.Generator().manual_seed(seeds.stream(seed, epoch))
        perm = torch.randperm(n, generator=generator).tolist()
        out.extend(perm[offset : offset + count - len(out)])
        epoch, offset = epoch + 1, 0
    return out


class Loop:
    """What a run builds once and every step shares: the accelerator, the prepared model, its optimizer and schedule.

    The learning rate warms up linearly from 0 over train.warmup_steps optimizer steps, then holds.
    """

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig, desc: str):
        self.cfg, self.desc = cfg, desc
        self.current_step = 0  # the outer step under way (an online algorithm's update), for error messages
        if distributed.alone_in_launch():
            # The main process training by itself while the others wait (a task build): no DDP, no collectives.
            self.accelerator = _Alone()
        else:
            from accelerate import Accelerator  # imported here: keeps `bench --help` fast
            from accelerate.utils import DataLoaderConfiguration

            self.accelerator = Accelerator(
                mixed_precision=mixed_precision(),
                cpu=not torch.cuda.is_available(),
                # Each step's batch is split among the processes (optimizer_step), so the schedule advances once
                # per step; accelerate's default would advance it once per process.
                dataloader_config=DataLoaderConfiguration(split_batches=True),
            )
            plugin = getattr(self.accelerator.state, "fsdp_plugin", None)
            check_strategy(self.accelerator.distributed_type, desc, getattr(plugin, "fsdp_version", None))
        if cfg.activation_checkpointing:
            _switch_checkpointing(checkpointable(model, desc), True)
        # FSDP2: bench shards the policy itself (bench.fsdp), and its optimizer and schedule stay torch's own:
        # accelerate's FSDP2 prepare (GPUs only) would shard the model again and requires it with the optimizer.
        self.skeleton = None
        if fsdp.applies():
            fsdp.configure(desc)
            self.skeleton = fsdp.skeleton(model)
            model = fsdp.shard(model, self.accelerator.device)
        optimizer = make_optimizer(model.parameters(), cfg)
        warmup = cfg.warmup_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / (warmup + 1)))
        if self.sharded:
            self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        else:
            self.model, self.optimizer, self.scheduler = self.accelerator.prepare(model, optimizer, scheduler)

    @property
    def sharded(self) -> bool:
        """Whether the policy's weights are sharded across the processes (FSDP2), not replicated (DDP)."""
        return self.skeleton is not None

    @property
    def layout(self) -> str:
        """How this run holds the weights, as its checkpoints record it: "sharded" or "replicated"."""
        return "sharded" if self.sharded else "replicated"

    def no_sync(self):
        """Gradients stay in each process (every micro-batch of a step but the last)."""
        return fsdp.no_sync(self.model) if self.sharded else self.accelerator.no_sync(self.model)

    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        if self.sharded:
            return fsdp.clip_grad_norm_(self.model, max_norm)
        return self.accelerator.clip_grad_norm_(self.model.parameters(), max_norm)

    def trained_model(self) -> torch.nn.Module:
        """The trained policy as an ordinary module on every process (a sharded one gathered into a plain copy)."""
        if self.sharded:
            return fsdp.plain_copy(self.skeleton, self.model)
        return self.accelerator.unwrap_model(self.model)

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def optimizer_step(self, examples: Sequence[Any], order: list[int], collate, loss_fn) -> dict[str, float]:
        """One optimizer step on `examples[i] for i in order`, in micro-batches of batch_size / grad_accum.

        Gradients accumulate over the micro-batches, the gradient norm is clipped, the schedule advances and a
        non-finite loss stops the run with one line. Returns the loss and `loss_fn`'s metrics (each micro-batch
        weighted by its share of the examples), grad_norm and the non-padding tokens. The metrics stay on the
        device until the step is done and then come to the host in one transfer: one synchronisation per step,
        not one per metric and micro-batch.

        With N processes (data-parallel, DDP) each takes every N-th example of `order` and weights each of
        its micro-batch losses by N times the micro-batch's share of the step's examples: DDP averages the
        processes' gradients, so the step's gradient is the one-process gradient of the examples' mean loss
        (exactly so for losses that are a mean over examples, as every pairwise loss is; a loss that is a mean
        over tokens becomes the average of the processes' token means, as with grad_accum). Only the last
        micro-batch of a process synchronises gradients; metrics and token counts are combined over the
        processes the same way, so the log shows what one process would, and every process sees the same
        loss, so a non-finite one stops them all.
        """
        cfg, accelerator = self.cfg, self.accelerator
        micro = cfg.batch_size // cfg.grad_accum
        world = distributed.world_size()
        mine = order[distributed.rank() :: world]
        if not mine:
            raise UserError(
                f"{self.desc}: {len(order)} examples per step cannot be shared by {world} processes; raise "
                f"train.batch_size (now {cfg.batch_size}) to at least {world} or launch fewer processes"
            )
        chunks = [mine[start : start + micro] for start in range(0, len(mine), micro)]
        metrics: dict[str, Any] = {}
        tokens = 0  # non-padding tokens trained on (cost accounting), counted on the host before the copy
        for k, chunk in enumerate(chunks):
            batch = collate([examples[i] for i in chunk])
            if "attention_mask" in batch:
                tokens += int(batch["attention_mask"].sum())
            batch = {key: v.to(accelerator.device) if torch.is_tensor(v) else v for key, v in batch.items()}
            with nullcontext() if k == len(chunks) - 1 else self.no_sync():
                with accelerator.autocast():
                    loss, batch_metrics = loss_fn(self.model, batch)
                # One process: each of the step's micro-batches counts equally, as it always has.
                accelerator.backward(
                    loss / math.ceil(len(mine) / micro) if world == 1 else loss / (len(order) / (len(chunk) * world))
                )
            share = len(chunk) / len(order)
            for key, v in {"loss": loss, **batch_metrics}.items():
                # float64, as the Python floats these sums were before: the same values, exactly.
                metrics[key] = metrics.get(key, 0.0) + share * (v.detach().double() if torch.is_tensor(v) else float(v))
        if world > 1:
            parts = distributed.gather((_to_host(metrics), tokens))
            metrics = {key: sum(part[key] for part, _ in parts) for key in metrics}
            tokens = sum(n for _, n in parts)
        if cfg.max_grad_norm > 0:
            metrics["grad_norm"] = self.clip_grad_norm_(cfg.max_grad_norm).detach()
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        metrics = _to_host(metrics)
        if not math.isfinite(metrics["loss"]):
            raise UserError(
                f"{self.desc}: the loss became {metrics['loss']} at step {self.current_step + 1}; lower train.lr "
                f"(now {cfg.lr}) or check the data for empty completions"
            )
        return {**metrics, "tokens": tokens}

    def minibatch_epochs(
        self, examples: Sequence[Any], collate, loss_fn, *, epochs: float, seed: int
    ) -> dict[str, float]:
        """`epochs` passes over `examples` in minibatches of train.batch_size, one optimizer step each.

        An online step's update (PPO's epochs over its rollout). The minibatches are seeded
        permutations (`example_order`); returns the steps' metrics averaged and their tokens summed.
        """
        n, size = len(examples), self.cfg.batch_size
        steps = max(1, math.ceil(epochs * n / size))
        orders = (example_order(n, seed, k * size, size) for k in range(steps))
        return window_row([self.optimizer_step(examples, order, collate, loss_fn) for order in orders])


class _Alone:
    """What Loop uses of an Accelerator, for the main process training by itself inside a run of several
    processes (a task build under bench.distributed.alone): no process group and no DDP, one process's
    arithmetic (accelerate's prepared scheduler would advance once per launched process)."""

    process_index, num_processes = 0, 1

    def __init__(self):
        cuda = torch.cuda.is_available()
        self.device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
        self.bf16 = mixed_precision() == "bf16"

    def prepare(self, *objects):
        return objects

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else nullcontext()

    def no_sync(self, model):
        return nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def clip_grad_norm_(self, parameters, max_norm: float) -> torch.Tensor:
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm)

    def unwrap_model(self, model):
        return model


SUPPORTED = ("NO", "MULTI_CPU", "MULTI_GPU", "MULTI_NPU", "MULTI_XPU", "MULTI_MLU", "MULTI_MUSA", "MULTI_HPU", "FSDP")
"""accelerate's distributed types the loop trains under: one process, data-parallel (DDP) processes, or FSDP2
(weights, gradients and optimizer state sharded across the processes)."""


def check_strategy(distributed_type, desc: str = "train", fsdp_version: int | None = 2) -> None:
    """One line, before anything is sharded, for an accelerate strategy the loop does not implement.

    DeepSpeed drives the optimizer step, gradient accumulation and clipping itself, which the loop does on
    its own; FSDP1 wraps the model in a module whose parameters are flattened, which FSDP2 (torch's
    fully_shard) replaces.
    """
    name = getattr(distributed_type, "name", str(distributed_type)).rsplit(".", 1)[-1]
    if name == "FSDP" and fsdp_version != 2:
        raise UserError(
            f"{desc}: accelerate's FSDP version {fsdp_version} is not supported by bench's training loop; set "
            "fsdp_version: 2 in the config file or pass --fsdp_version 2 (see configs/accelerate/fsdp2.yaml)"
        )
    if name not in SUPPORTED:
        raise UserError(
            f"{desc}: accelerate's {name} strategy is not supported by bench's training loop yet (it trains "
            "data-parallel or with FSDP2); launch with configs/accelerate/ddp.yaml or configs/accelerate/fsdp2.yaml"
        )


def check_launch(desc: str = "bench run") -> None:
    """`check_strategy` of the strategy the launcher asked for (accelerate launch's environment), before anything
    is built or trained."""
    if distributed.env_flag("ACCELERATE_USE_FSDP"):
        check_strategy("FSDP", desc, fsdp.launch_version())
        fsdp.configure(desc)
    if distributed.env_flag("ACCELERATE_USE_DEEPSPEED"):
        check_strategy("DEEPSPEED", desc)


def checkpointable(model: torch.nn.Module, desc: str):
    """The Hugging Face model in `model` (itself, or one it wraps: a LoRA adapter, PPO's policy with a value head)
    that can recompute its layers' activations in backward (train.activation_checkpointing)."""
    from transformers import PreTrainedModel

    for module in model.modules():
        if isinstance(module, PreTrainedModel) and module.supports_gradient_checkpointing:
            return module
    raise UserError(
        f"{desc}: train.activation_checkpointing=true needs a Hugging Face model that supports it; "
        f"{type(model).__name__} does not: set train.activation_checkpointing=false"
    )


def _switch_checkpointing(model, on: bool) -> None:
    # transformers 5 names these activation_checkpointing_*; older releases have only gradient_checkpointing_*.
    prefix = "activation" if hasattr(model, "activation_checkpointing_enable") else "gradient"
    if on:
        getattr(model, f"{prefix}_checkpointing_enable")({"use_reentrant": False})
    else:
        getattr(model, f"{prefix}_checkpointing_disable")()


def _to_host(metrics: dict[str, Any]) -> dict[str, float]:
    """Python floats of a dict of 0-d tensors (on any device) and numbers, in one device-to-host transfer."""
    keys = [k for k, v in metrics.items() if torch.is_tensor(v)]
    values = dict(zip(keys, torch.stack([metrics[k].reshape(()).double() for k in keys]).tolist())) if keys else {}
    return {k: values[k] if k in values else float(v) for k, v in metrics.items()}


Step = Callable[[int, Loop], dict]
"""An online algorithm's step: `step(update, loop)` runs update number `update` (0-based) and returns its
log metrics. A step object with `state_dict()` and `load_state_dict(state)` has that extra state (plain
data and tensors only: checkpoints load with weights_only=True) checkpointed and restored with the loop's."""


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
) -> torch.nn.Module:
    """Minimise `loss_fn(model, batch)` over `examples`; returns the trained (unwrapped) model.

    `loss_fn` returns the scalar loss and a dict of metrics (floats or 0-d tensors) that are
    averaged over each logging window and written through `log`. `on_step(step, total, model)`
    runs after every optimizer step (the harness evaluates intermediate checkpoints with it).
    """
    if len(examples) == 0:
        raise UserError(f"{desc}: no training examples; check the task's data or the data.* files you passed")
    cfg.check()  # settings built in code (task builds, tests) meet the same ranges as --set
    steps = total_steps(len(examples), cfg)
    torch.manual_seed(seed)
    loop = Loop(model, cfg, desc)

    def step(k: int, loop: Loop) -> dict:
        order = example_order(len(examples), seed, k * cfg.batch_size, cfg.batch_size)
        epoch = (k + 1) * cfg.batch_size / len(examples)
        return {**loop.optimizer_step(examples, order, collate, loss_fn), "epoch": epoch}

    return _run(loop, step, steps, log=log, checkpoint_dir=checkpoint_dir, on_step=on_step)


def train_online(
    model: torch.nn.Module,
    step: Step,
    cfg: TrainConfig,
    *,
    updates: int,
    seed: int,
    log: Callable[[dict], None] | None = None,
    checkpoint_dir: Path | None = None,
    desc: str = "train",
    on_step: Callable[[int, int, torch.nn.Module], None] | None = None,
) -> torch.nn.Module:
    """Run `step(update, loop)` for `updates` updates, training `model`; returns it trained (unwrapped).

    The step samples from the policy, scores the samples and updates through
    `loop.minibatch_epochs(...)` (or `loop.optimizer_step`) on `loop.model`, the run's one
    optimizer and accelerator. Its metrics go to `log` once per window: counts (COUNTS) summed,
    the rest averaged. train.log_every and train.checkpoint_every count updates; warmup_steps
    counts optimizer steps. `on_step(update, total, model)` runs after every update.
    """
    cfg.check()  # settings built in code meet the same ranges as --set
    torch.manual_seed(seed)
    loop = Loop(model, cfg, desc)
    return _run(loop, step, updates, log=log, checkpoint_dir=checkpoint_dir, on_step=on_step)


def window_row(rows: list[dict]) -> dict:
    """One log row for a window of step rows: COUNTS summed, LAST the window's last value, the rest averaged."""
    out = {}
    for key in dict.fromkeys(k for r in rows for k in r):
        values = [r[key] for r in rows if key in r]
        out[key] = sum(values) if key in COUNTS else values[-1] if key in LAST else sum(values) / len(values)
    return out


def _run(loop: Loop, step: Step, total: int, *, log, checkpoint_dir, on_step) -> torch.nn.Module:
    """The one outer loop: resume, `total` steps, progress bar, log windows, checkpoints and on_step."""
    cfg, unwrap = loop.cfg, loop.accelerator.unwrap_model
    done, window = 0, []
    ckpt = Path(checkpoint_dir) / CHECKPOINT if checkpoint_dir else None
    found = ckpt is not None and ckpt.exists()
    if distributed.world_size() > 1 and len(set(distributed.gather(found))) > 1:
        raise UserError(
            f"{ckpt}: the main process writes checkpoints and every process resumes from them, but only some "
            "of the processes see this one; put --results on a filesystem that all of them share"
        )
    if found:  # every process loads it: each holds the whole model, optimizer and schedule (or shards them)
        state = load_checkpoint(ckpt)
        if state.get("layout", "replicated") != loop.layout:
            raise UserError(
                f"{ckpt}: written by a run whose weights were {state.get('layout', 'replicated')} (FSDP2 shards them, "
                f"one process or DDP replicates them), and this run's are {loop.layout}; resume it with the launch "
                "that started it, or delete the run's directory to start over"
            )
        if loop.sharded:
            fsdp.load_full_state(loop.model, loop.optimizer, state["model"], state["optimizer"])
        else:
            unwrap(loop.model).load_state_dict(state["model"])
            loop.optimizer.load_state_dict(state["optimizer"])
        loop.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state)
        done, window = state["step"], state["window"]
        if hasattr(step, "load_state_dict"):
            step.load_state_dict(state["extra"])

    loop.model.train()
    bar = tqdm(
        total=total,
        initial=done,
        desc=loop.desc,
        unit="step",
        dynamic_ncols=True,
        leave=False,
        disable=None if distributed.is_main() else True,
    )
    while done < total:
        loop.current_step = done
        row = step(done, loop)
        row["lr"] = loop.scheduler.get_last_lr()[0]  # after this step's advance, as the log has always shown
        done += 1
        window.append(row)
        bar.update(1)
        if "loss" in row:
            bar.set_postfix(loss=f"{row['loss']:.4f}")
        if done % cfg.log_every == 0 or done == total:
            if log is not None:
                log({"step": done, **window_row(window)})
            window = []
        # on_step before the checkpoint: a run resumed from step k has had its evaluation at step k.
        if on_step is not None:
            on_step(done, total, unwrap(loop.model))
        if ckpt is not None and cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < total:
            _save_checkpoint(ckpt, loop, done, window, step)
    bar.close()
    model = loop.trained_model()
    if cfg.activation_checkpointing:
        _switch_checkpointing(checkpointable(model, loop.desc), False)
    model.eval()
    return model


def rng_state() -> dict:
    """The random states a resumed run must continue from: the CPU generator's and each GPU's (dropout and
    sampling on a GPU draw from the latter)."""
    return {
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    """Restore `rng_state()`; GPU states only onto as many GPUs as they were saved from (or none, on a CPU)."""
    torch.set_rng_state(state["rng"])
    cuda = state.get("cuda_rng", [])  # absent in checkpoints written before GPU states were kept
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


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
    if not isinstance(state, dict) or not _KEYS <= state.keys():
        raise UserError(f"{path}: not a checkpoint of this suite; the partial run is discarded, run the command again")
    return state


def _save_checkpoint(path: Path, loop: Loop, step: int, window: list[dict], extra) -> None:
    """Everything a resumed run needs to end exactly where an uninterrupted one ends, replaced atomically.

    Written by the main process only: with several processes each holds the same weights, optimizer and schedule
    (sharded ones are gathered whole onto the main process first, which takes every process).
    """
    if loop.sharded:
        weights, optim = fsdp.full_state(loop.model, loop.optimizer)
    if not distributed.is_main():
        return
    if not loop.sharded:
        weights, optim = loop.accelerator.unwrap_model(loop.model).state_dict(), loop.optimizer.state_dict()
    state = {
        "model": weights,
        "optimizer": optim,
        "layout": loop.layout,
        "scheduler": loop.scheduler.state_dict(),
        **rng_state(),
        "step": step,
        "window": window,  # rows logged since the last log row: a resumed window averages the same rows
        "extra": extra.state_dict() if hasattr(extra, "state_dict") else {},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)
    # A small sidecar so the harness can tell the resume step without loading the weights.
    bench_io.atomic_write_json(path.parent / STATE_FILE, {"step": step})
