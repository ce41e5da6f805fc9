"""A few optimizer steps of bench.train.Loop on a tiny GPT-2, run as one process or under a launcher.

`python tests/ddp_worker.py OUT` trains in one process; `accelerate launch ... tests/ddp_worker.py OUT`
trains data-parallel, or with FSDP2 when the launch asks for it. Each setting (batch size, gradient
accumulation) trains a fresh model from the same weights on the same examples; the main process saves, per
setting, the gradient every step handed the optimizer (after DDP's all-reduce; whole, under FSDP2), the
logged metrics and the final weights to OUT, so that tests/test_distributed.py can compare the runs. Then
bench.train.train_loop trains a fresh model four steps with a checkpoint every two, once through and once
stopped after step 3 and resumed: both final weights are saved too.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiny import SENTENCES, tiny_gpt2, tiny_tokenizer  # noqa: E402

from bench import distributed, fsdp  # noqa: E402
from bench.logprobs import collate, encode, pad_id, sequence_logps  # noqa: E402
from bench.train import CHECKPOINT, OPTIMIZERS, Loop, TrainConfig, example_order, train_loop  # noqa: E402

# Plain SGD, so that equal gradients give equal weights: Adam and RMSprop divide each gradient by its own
# running scale, which turns float noise in a near-zero gradient into a full-size step.
OPTIMIZERS.setdefault("sgd", lambda params, cfg: torch.optim.SGD(params, lr=cfg.lr))

SETTINGS = [(8, 1), (8, 4), (6, 3), (5, 1)]
"""(train.batch_size, train.grad_accum): even shares, several micro-batches per process, a partial micro-batch,
and shares of unequal size."""
STEPS = 3


def loss_fn(model, batch):
    """A mean over examples, as every pairwise loss is: minus the mean sequence log-prob."""
    logps = sequence_logps(model, batch)
    return -logps.mean(), {"logps": logps.mean().detach()}


def main(out: Path) -> None:
    tok = tiny_tokenizer()
    examples = [encode(tok, s.split()[0], " " + " ".join(s.split()[1:]), 32) for s in SENTENCES * 3]
    results = {}
    for batch_size, grad_accum in SETTINGS:
        cfg = dataclasses.replace(
            TrainConfig(),
            optimizer="sgd",
            batch_size=batch_size,
            grad_accum=grad_accum,
            lr=1e-3,
            warmup_steps=2,
            max_grad_norm=1.0,
        )
        model = tiny_gpt2(vocab_size=tok.vocab_size, seed=0)
        if distributed.rank() > 0:  # the strategy starts every process from the main one's weights
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(1.0)
        model.train()
        loop = Loop(model, cfg, "ddp-worker")
        grads, rows = [], []
        step = loop.optimizer.step

        def keep_gradient(*args, **kwargs):
            grads.append([fsdp.whole(p.grad).detach().clone() for p in loop.model.parameters()])
            return step(*args, **kwargs)

        loop.optimizer.step = keep_gradient
        for k in range(STEPS):
            order = example_order(len(examples), 0, k * batch_size, batch_size)
            row = loop.optimizer_step(examples, order, lambda b: collate(b, pad_id(tok)), loss_fn)
            rows.append({**row, "lr": loop.scheduler.get_last_lr()[0]})
        # Under FSDP2 the optimizer stays torch's own: accelerate, on GPUs, refuses to prepare one without the model.
        sharded, optimizer_class = loop.sharded, type(loop.optimizer).__name__
        weights = {n: p.detach().clone() for n, p in loop.trained_model().named_parameters()}
        results[(batch_size, grad_accum)] = {"grads": grads, "rows": rows, "weights": weights}
    resumed = resume(tok, examples, out.parent / f"{out.stem}-checkpoints")
    if distributed.is_main():
        torch.save(
            {"world": distributed.world_size(), "sharded": sharded, "optimizer": optimizer_class, "results": results}
            | resumed,
            out,
        )
    distributed.barrier()


class Stop(Exception):
    pass


def resume(tok, examples, folder: Path) -> dict:
    """Four steps of train_loop with a checkpoint every two: uninterrupted, and stopped after step 3 then resumed."""
    cfg = dataclasses.replace(TrainConfig(), batch_size=4, lr=1e-3, max_steps=4, checkpoint_every=2, warmup_steps=1)
    collate_fn = lambda b: collate(b, pad_id(tok))  # noqa: E731

    steps: dict[str, list[int]] = {}

    def train(name: str, stop_at: int = 0):
        def on_step(done, total, model):
            steps.setdefault(name, []).append(done)
            if done == stop_at:  # after step 2's checkpoint: the rerun resumes from it
                raise Stop

        model = tiny_gpt2(vocab_size=tok.vocab_size, seed=1)
        model.train()
        kwargs = {"seed": 0, "checkpoint_dir": folder / name, "on_step": on_step}
        trained = train_loop(model, examples, collate_fn, loss_fn, cfg, **kwargs)
        return {n: p.detach().clone() for n, p in trained.named_parameters()}

    once = train("once")
    try:
        train("stopped", stop_at=3)
        raise AssertionError("the run was not stopped")
    except Stop:
        pass
    steps.pop("stopped")
    resumed = train("stopped")
    return {"once": once, "resumed": resumed, "resumed_steps": steps["stopped"], "layout": layout(folder)}


def layout(folder: Path) -> str:
    """What the stopped run's checkpoint says of its weights: "sharded" (FSDP2) or "replicated"."""
    state = torch.load(folder / "stopped" / CHECKPOINT, weights_only=True) if distributed.is_main() else {}
    return state.get("layout", "")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
