"""The shared training loop, offline and online: determinism, resume, log windows, extra state, accumulation,
warmup, failure paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bench.errors import UserError
from bench.train import (
    CHECKPOINT,
    STATE_FILE,
    TrainConfig,
    example_order,
    load_checkpoint,
    train_loop,
    train_online,
    window_row,
)

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


def _stopped_after(step: int, checkpoint_dir: Path) -> None:
    """A run with a checkpoint every 3 steps, stopped once `step` is done (KeyboardInterrupt, as Ctrl-C)."""

    def stop(done, total, model):
        if done == step:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_loop(
            _model(),
            _examples(),
            _collate,
            _loss,
            _cfg(checkpoint_every=3),
            seed=0,
            checkpoint_dir=checkpoint_dir,
            on_step=stop,
        )


def test_interrupted_training_resumes_to_the_same_weights(tmp_path):
    full = train_loop(_model(), _examples(), _collate, _loss, _cfg(checkpoint_every=3), seed=0)
    _stopped_after(7, tmp_path)
    assert json.loads((tmp_path / STATE_FILE).read_text()) == {"step": 6}
    resumed = train_loop(
        _model(), _examples(), _collate, _loss, _cfg(checkpoint_every=3), seed=0, checkpoint_dir=tmp_path
    )
    torch.testing.assert_close(resumed.weight, full.weight, rtol=0, atol=0)


def test_a_checkpoint_of_sharded_weights_is_not_resumed_by_a_run_that_replicates_them(tmp_path):
    """A checkpoint says how its run held the weights (FSDP2 "sharded", else "replicated"); a run of the other
    kind stops with one line rather than load a state dict of another layout."""
    _stopped_after(4, tmp_path)
    state = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert state["layout"] == "replicated"
    torch.save({**state, "layout": "sharded"}, tmp_path / CHECKPOINT)
    with pytest.raises(UserError, match="weights were sharded .* this run's are replicated; resume it with the launch"):
        train_loop(_model(), _examples(), _collate, _loss, _cfg(checkpoint_every=3), seed=0, checkpoint_dir=tmp_path)


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


def test_a_resumed_window_logs_the_rows_of_an_uninterrupted_one(tmp_path):
    # Checkpoints every 3 steps, logs every 4: the checkpoint at step 6 falls inside the window 5..8.
    full = []
    train_loop(_model(), _examples(), _collate, _loss, _cfg(checkpoint_every=3), seed=0, log=full.append)

    def stop_at_7(step, total, model):
        if step == 7:
            raise KeyboardInterrupt

    resumed = []
    with pytest.raises(KeyboardInterrupt):
        train_loop(
            _model(),
            _examples(),
            _collate,
            _loss,
            _cfg(checkpoint_every=3),
            seed=0,
            log=resumed.append,
            checkpoint_dir=tmp_path,
            on_step=stop_at_7,
        )
    train_loop(
        _model(),
        _examples(),
        _collate,
        _loss,
        _cfg(checkpoint_every=3),
        seed=0,
        log=resumed.append,
        checkpoint_dir=tmp_path,
    )
    assert resumed == full and [r["step"] for r in full] == [4, 8, 12]


def test_window_rows_sum_counts_average_metrics_and_keep_the_last_position():
    rows = [
        {"loss": 1.0, "tokens": 10, "episodes": 4, "sampled_tokens": 7, "lr": 0.1, "epoch": 0.5},
        {"loss": 2.0, "tokens": 5, "episodes": 4, "sampled_tokens": 3, "lr": 0.2, "epoch": 1.0, "kl": 6.0},
    ]
    assert window_row(rows) == {
        "loss": 1.5,
        "tokens": 15,
        "episodes": 8,
        "sampled_tokens": 10,
        "lr": 0.2,
        "epoch": 1.0,
        "kl": 6.0,  # averaged over the rows that have it
    }


class Counting:
    """An online step with extra state: each update is one minibatch epoch on the data, scaled by its own counter."""

    def __init__(self, stop_at: int | None = None):
        self.scale, self.stop_at = 1.0, stop_at

    def __call__(self, update, loop):
        if update == self.stop_at:
            raise KeyboardInterrupt
        self.scale *= 1.5  # state the step carries from update to update, which a resume must restore

        def loss(model, batch):
            value, metrics = _loss(model, batch)
            return self.scale * value, metrics

        metrics = loop.minibatch_epochs(_examples(), _collate, loss, epochs=1, seed=update)
        return {**metrics, "scale": self.scale, "episodes": len(X)}

    def state_dict(self):
        return {"scale": self.scale, "tensor": torch.tensor([self.scale])}

    def load_state_dict(self, state):
        assert torch.equal(state["tensor"], torch.tensor([state["scale"]]))
        self.scale = state["scale"]


def _online(step, tmp_path=None, rows=None):
    cfg = _cfg(max_steps=0, log_every=2, checkpoint_every=3, warmup_steps=0, batch_size=16)
    return train_online(
        _model(), step, cfg, updates=7, seed=0, log=None if rows is None else rows.append, checkpoint_dir=tmp_path
    )


def test_an_online_step_resumes_with_its_extra_state_to_the_same_weights_and_log(tmp_path):
    full_rows = []
    full = _online(Counting(), rows=full_rows)
    assert [r["step"] for r in full_rows] == [2, 4, 6, 7]
    assert full_rows[0]["episodes"] == 2 * len(X)  # counts summed over the window
    assert full_rows[0]["scale"] == (1.5 + 1.5**2) / 2  # the rest averaged
    # Three minibatch steps of 16, 16 and 8 examples per update, all non-padding tokens counted: none here.
    assert full_rows[0]["tokens"] == 0 and "grad_norm" in full_rows[0]

    rows = []
    with pytest.raises(KeyboardInterrupt):
        _online(Counting(stop_at=3), tmp_path, rows)
    assert json.loads((tmp_path / STATE_FILE).read_text()) == {"step": 3}
    state = load_checkpoint(tmp_path / CHECKPOINT)  # tensors and plain data only: loads with weights_only=True
    assert state["extra"]["scale"] == 1.5**3 and [row["scale"] for row in state["window"]] == [1.5**3]
    resumed = _online(Counting(), tmp_path, rows)
    torch.testing.assert_close(resumed.weight, full.weight, rtol=0, atol=0)
    assert rows == full_rows


def test_a_nan_loss_in_an_online_update_names_the_update():
    def step(update, loop):
        def loss(model, batch):
            value, metrics = _loss(model, batch)
            return value * (float("nan") if update == 2 else 1.0), metrics

        return loop.minibatch_epochs(_examples(), _collate, loss, epochs=1, seed=update)

    with pytest.raises(UserError, match="online: the loss became nan at step 3; lower train.lr"):
        train_online(_model(), step, _cfg(warmup_steps=0), updates=5, seed=0, desc="online")


def test_activation_checkpointing_recomputes_layers_and_trains_to_the_same_weights():
    from tiny import tiny_gpt2

    ids = torch.randint(0, 64, (16, 12), generator=torch.Generator().manual_seed(3))

    def lm_loss(model, batch):
        return model(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss, {}

    def fit(checkpointing: bool):
        model = tiny_gpt2(seed=4)
        calls, forward = [], model.transformer.h[0].mlp.forward
        model.transformer.h[0].mlp.forward = lambda *args, **kwargs: (calls.append(1), forward(*args, **kwargs))[1]
        cfg = _cfg(activation_checkpointing=checkpointing, max_steps=3, batch_size=4)
        trained = train_loop(model, list(range(16)), lambda idx: {"input_ids": ids[idx]}, lm_loss, cfg, seed=0)
        return trained, len(calls)

    plain, plain_calls = fit(False)
    recomputed, recomputed_calls = fit(True)
    assert plain_calls == 3 and recomputed_calls == 6  # each step's layer forward runs again in backward
    assert not recomputed.transformer.h[0].gradient_checkpointing  # switched off again for evaluation
    for a, b in zip(plain.parameters(), recomputed.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_activation_checkpointing_on_a_model_without_it_is_a_user_error():
    with pytest.raises(UserError, match="train.activation_checkpointing=false"):
        train_loop(_model(), _examples(), _collate, _loss, _cfg(activation_checkpointing=True), seed=0)


def test_checkpoints_keep_each_gpus_random_state(monkeypatch):
    from bench import train

    saved, restored = [torch.tensor([1, 2], dtype=torch.uint8), torch.tensor([3], dtype=torch.uint8)], []
    monkeypatch.setattr(train.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(train.torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(train.torch.cuda, "get_rng_state_all", lambda: saved)
    monkeypatch.setattr(train.torch.cuda, "set_rng_state_all", restored.append)
    state = train.rng_state()
    assert state["cuda_rng"] is saved and torch.equal(state["rng"], torch.get_rng_state())
    train.set_rng_state(state)
    assert restored == [saved]
    monkeypatch.setattr(train.torch.cuda, "device_count", lambda: 1)  # resumed on another number of GPUs
    train.set_rng_state(state)
    train.set_rng_state({"rng": state["rng"]})  # a checkpoint from before GPU states were kept
    assert restored == [saved]
    monkeypatch.setattr(train.torch.cuda, "is_available", lambda: False)
    assert train.rng_state()["cuda_rng"] == []
