"""The shared training loop: determinism, resume, accumulation, warmup, failure paths."""

from __future__ import annotations

import json

import pytest
import torch

from bench.errors import UserError
from bench.train import TrainConfig, example_order, make_optimizer, train_loop

X = torch.randn(40, 3, generator=torch.Generator().manual_seed(0))
Y = X @ torch.tensor([1.0, -2.0, 0.5]) + 0.1


def _examples():
    return list(range(len(X)))


def _collate(idx):
    return {"x": X[idx], "y": Y[idx]}


def _loss(model, batch):
    err = model(batch["x"]).squeeze(-1) - batch["y"]
    return (err**2).mean(), {"abs_err": err.abs().mean().detach()}


def _model():
    torch.manual_seed(1)
    return torch.nn.Linear(3, 1)


def _cfg(**kw):
    return TrainConfig(**{"lr": 0.05, "batch_size": 8, "max_steps": 12, "warmup_steps": 2, "log_every": 4, **kw})


def test_loss_goes_down_and_logs_are_written():
    rows = []
    model = train_loop(_model(), _examples(), _collate, _loss, _cfg(), seed=0, log=rows.append)
    assert [r["step"] for r in rows] == [4, 8, 12]
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert {"loss", "abs_err", "lr", "epoch", "grad_norm"} <= set(rows[0])
    assert not model.training


def test_same_seed_same_weights_other_seed_other_weights():
    a = train_loop(_model(), _examples(), _collate, _loss, _cfg(), seed=0)
    b = train_loop(_model(), _examples(), _collate, _loss, _cfg(), seed=0)
    c = train_loop(_model(), _examples(), _collate, _loss, _cfg(), seed=1)
    assert torch.equal(a.weight, b.weight) and not torch.equal(a.weight, c.weight)


def test_gradient_accumulation_matches_one_big_batch():
    a = train_loop(_model(), _examples(), _collate, _loss, _cfg(grad_accum=1, max_grad_norm=0), seed=0)
    b = train_loop(_model(), _examples(), _collate, _loss, _cfg(grad_accum=4, max_grad_norm=0), seed=0)
    torch.testing.assert_close(a.weight, b.weight, rtol=1e-5, atol=1e-6)


def test_interrupted_training_resumes_to_the_same_weights(tmp_path):
    full = train_loop(_model(), _examples(), _collate, _loss, _cfg(checkpoint_every=3), seed=0)

    def stop_at_7(step, total, model):
        if step == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_loop(
            _model(),
            _examples(),
            _collate,
            _loss,
            _cfg(checkpoint_every=3),
            seed=0,
            checkpoint_dir=tmp_path,
            on_step=stop_at_7,
        )
    assert json.loads((tmp_path / "train_state.json").read_text()) == {"step": 6}
    resumed = train_loop(
        _model(), _examples(), _collate, _loss, _cfg(checkpoint_every=3), seed=0, checkpoint_dir=tmp_path
    )
    torch.testing.assert_close(resumed.weight, full.weight, rtol=0, atol=0)


def test_a_shared_optimizer_carries_its_state_across_calls():
    # Full batches, so the two calls see the same data as the one long call.
    cfg = dict(batch_size=len(X), warmup_steps=0, max_grad_norm=0)
    one = train_loop(_model(), _examples(), _collate, _loss, _cfg(max_steps=6, **cfg), seed=0)
    model = _model()
    optimizer = make_optimizer(model.parameters(), _cfg(**cfg))
    for _ in range(2):
        model = train_loop(model, _examples(), _collate, _loss, _cfg(max_steps=3, **cfg), seed=0, optimizer=optimizer)
    torch.testing.assert_close(model.weight, one.weight, rtol=1e-5, atol=1e-6)
    fresh = _model()
    for _ in range(2):  # a new optimizer per call restarts Adam's moments: a different trajectory
        fresh = train_loop(fresh, _examples(), _collate, _loss, _cfg(max_steps=3, **cfg), seed=0)
    assert not torch.allclose(fresh.weight, one.weight, rtol=1e-4, atol=1e-5)


def test_warmup_is_linear_then_constant():
    rows = []
    train_loop(
        _model(), _examples(), _collate, _loss, _cfg(warmup_steps=3, log_every=1, max_steps=6), seed=0, log=rows.append
    )
    assert [round(r["lr"] / 0.05, 4) for r in rows] == [0.5, 0.75, 1.0, 1.0, 1.0, 1.0]


def test_example_order_is_an_endless_sequence_of_permutations():
    order = example_order(5, seed=3, start=0, count=15)
    assert sorted(order[:5]) == sorted(order[5:10]) == list(range(5))
    assert example_order(5, seed=3, start=7, count=4) == order[7:11]


def test_nan_loss_stops_with_a_user_error():
    def nan_loss(model, batch):
        loss, m = _loss(model, batch)
        return loss * float("nan"), m

    with pytest.raises(UserError, match="the loss became nan at step 1; lower train.lr"):
        train_loop(_model(), _examples(), _collate, nan_loss, _cfg(), seed=0)


def test_bad_settings_are_user_errors():
    with pytest.raises(UserError, match="no training examples"):
        train_loop(_model(), [], _collate, _loss, _cfg(), seed=0)
    with pytest.raises(UserError, match="multiple of train.grad_accum"):
        train_loop(_model(), _examples(), _collate, _loss, _cfg(batch_size=6, grad_accum=4), seed=0)
    with pytest.raises(UserError, match="adamw or rmsprop"):
        train_loop(_model(), _examples(), _collate, _loss, _cfg(optimizer="sgd"), seed=0)
