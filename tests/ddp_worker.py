"""A few optimizer steps of bench.train.Loop on a tiny GPT-2, run as one process or under a launcher.

`python tests/ddp_worker.py OUT` trains in one process; `accelerate launch ... tests/ddp_worker.py OUT`
trains data-parallel. Each setting (batch size, gradient accumulation) trains a fresh model from the same
weights on the same examples; the main process saves, per setting, the gradient every step handed the
optimizer (after DDP's all-reduce), the logged metrics and the final weights to OUT, so that
tests/test_distributed.py can compare the two runs.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiny import SENTENCES, tiny_gpt2, tiny_tokenizer  # noqa: E402

from bench import distributed  # noqa: E402
from bench.logprobs import collate, encode, pad_id, sequence_logps  # noqa: E402
from bench.train import OPTIMIZERS, Loop, TrainConfig, example_order  # noqa: E402

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
        model.train()
        loop = Loop(model, cfg, "ddp-worker")
        grads, rows = [], []
        step = loop.optimizer.step

        def keep_gradient(*args, **kwargs):
            grads.append([p.grad.detach().clone() for p in loop.model.parameters()])
            return step(*args, **kwargs)

        loop.optimizer.step = keep_gradient
        for k in range(STEPS):
            order = example_order(len(examples), 0, k * batch_size, batch_size)
            row = loop.optimizer_step(examples, order, lambda b: collate(b, pad_id(tok)), loss_fn)
            rows.append({**row, "lr": loop.scheduler.get_last_lr()[0]})
        weights = {n: p.detach().clone() for n, p in loop.accelerator.unwrap_model(loop.model).named_parameters()}
        results[(batch_size, grad_accum)] = {"grads": grads, "rows": rows, "weights": weights}
    if distributed.is_main():
        torch.save({"world": distributed.world_size(), "results": results}, out)
    distributed.barrier()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
