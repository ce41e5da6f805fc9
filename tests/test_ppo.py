"""PPO's pieces against hand-computed values, its loss, bad input, and an interrupted run resuming exactly."""

from __future__ import annotations

import json
import math

import pytest
import torch

from bench import online
from bench.algorithms import ppo
from bench.errors import UserError
from bench.runner import RunSpec, execute
from bench.train import CHECKPOINT, STATE_FILE, load_checkpoint

TINY = ["task.scale=tiny"]


def test_gae_matches_hand_computed_values():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.5, -1.0, 9.0]])
    values = torch.tensor([[0.5, 0.6, 0.7], [0.2, 0.4, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # the second completion has two tokens
    advantages, returns = ppo.gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # Row 1: deltas d_t = r_t + 0.9 V_{t+1} - V_t, then A_t = d_t + 0.9 * 0.8 * A_{t+1}.
    d2, d1, d0 = 1.0 - 0.7, 0.9 * 0.7 - 0.6, 0.9 * 0.6 - 0.5
    a2 = d2
    a1 = d1 + 0.72 * a2
    a0 = d0 + 0.72 * a1
    # Row 2 ends after its second token: the value after it is 0, the masked entries are ignored.
    e1, e0 = -1.0 - 0.4, 0.5 + 0.9 * 0.4 - 0.2
    b1 = e1
    b0 = e0 + 0.72 * b1
    torch.testing.assert_close(advantages, torch.tensor([[a0, a1, a2], [b0, b1, 0.0]]))
    torch.testing.assert_close(returns, torch.tensor([[a0 + 0.5, a1 + 0.6, a2 + 0.7], [b0 + 0.2, b1 + 0.4, 0.0]]))


def test_gae_with_gamma_and_lambda_one_is_the_return_minus_the_value():
    rewards, values = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[0.3, 0.2, 0.1]])
    advantages, returns = ppo.gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=1.0)
    torch.testing.assert_close(returns, torch.tensor([[6.0, 5.0, 3.0]]))
    torch.testing.assert_close(advantages, torch.tensor([[5.7, 4.8, 2.9]]))


def test_whitening_matches_hand_computed_values():
    values = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    # Over the three unmasked entries: mean 2, unbiased variance ((1 + 0 + 1) / 2) = 1.
    out = ppo.whiten(values, mask)
    torch.testing.assert_close(out[0, :3], torch.tensor([-1.0, 0.0, 1.0]), rtol=1e-6, atol=1e-6)
    kept = ppo.whiten(values, mask, shift_mean=False)
    torch.testing.assert_close(kept[0, :3], torch.tensor([1.0, 2.0, 3.0]), rtol=1e-6, atol=1e-6)
    plain = ppo.whiten(torch.tensor([2.0, 4.0, 6.0, 8.0]))  # mean 5, variance 20/3
    torch.testing.assert_close(
        plain, (torch.tensor([2.0, 4.0, 6.0, 8.0]) - 5) / math.sqrt(20 / 3), rtol=1e-5, atol=1e-6
    )


def test_adaptive_kl_controller_follows_the_proportional_rule():
    ctl = ppo.AdaptiveKLController(0.1, target=6.0, horizon=1000)
    assert ctl.update(6.6, 64) == pytest.approx(0.1 * (1 + 0.1 * 64 / 1000))  # 10% above target
    ctl = ppo.AdaptiveKLController(0.1, target=6.0, horizon=1000)
    assert ctl.update(60.0, 64) == pytest.approx(0.1 * (1 + 0.2 * 64 / 1000))  # error clipped at +0.2
    ctl = ppo.AdaptiveKLController(0.1, target=6.0, horizon=1000)
    assert ctl.update(0.0, 500) == pytest.approx(0.1 * (1 - 0.2 * 500 / 1000))  # and at -0.2
    value = ctl.value
    assert ctl.update(6.0, 64) == value  # on target: unchanged


def test_clipped_losses_match_hand_computed_values():
    algo = ppo.PPO(ppo.Config(cliprange=0.2, cliprange_value=0.5, vf_coef=0.1))
    new_logps, entropy, new_values = (
        torch.log(torch.tensor([[1.5, 0.5, 1.1]])),
        torch.ones(1, 3),
        torch.tensor([[2.0, 0.0, 1.0]]),
    )

    def model(batch):
        return new_logps, entropy, new_values

    batch = {
        "old_logps": torch.zeros(1, 3),
        "old_values": torch.tensor([[1.0, 0.2, 0.0]]),
        "advantages": torch.tensor([[1.0, -1.0, 2.0]]),
        "returns": torch.tensor([[3.0, 1.0, 0.0]]),
        "mask": torch.tensor([[1.0, 1.0, 0.0]]),
    }  # the third token is padding
    loss, metrics = algo._loss(model, batch)
    # ratios 1.5 and 0.5: max(-A r, -A clip(r)) = max(-1.5, -1.2) = -1.2 and max(0.5, 0.8) = 0.8.
    policy_loss = (-1.2 + 0.8) / 2
    # values 2.0 (clipped to 1.5) and 0.0 (within 0.5 of 0.2): max(1, 2.25) and max(1, 1).
    value_loss = 0.5 * (2.25 + 1.0) / 2
    assert metrics["loss/policy"].item() == pytest.approx(policy_loss)
    assert metrics["loss/value"].item() == pytest.approx(value_loss)
    assert loss.item() == pytest.approx(policy_loss + 0.1 * value_loss)
    assert metrics["policy/clipfrac"].item() == pytest.approx(1.0)
    assert metrics["val/clipfrac"].item() == pytest.approx(0.5)
    assert metrics["policy/approxkl"].item() == pytest.approx(0.5 * (math.log(1.5) ** 2 + math.log(0.5) ** 2) / 2)


def test_bad_settings_and_a_task_without_gold_reward_are_user_errors(cache_dir, tmp_path, monkeypatch):
    with pytest.raises(UserError, match="target_kl=0"):
        ppo.PPO(ppo.Config(target_kl=0))
    from bench.tasks.sentiment import Sentiment

    monkeypatch.setattr(Sentiment, "gold_reward", None)
    with pytest.raises(UserError, match="ppo-gt needs a gold reward and the task 'sentiment' has none"):
        execute(
            RunSpec(algo="ppo-gt", task="sentiment", sets=TINY),
            results=tmp_path,
            cache_dir=cache_dir,
            echo=lambda _: None,
        )
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_an_interrupted_run_resumes_and_ends_like_an_uninterrupted_one(cache_dir, tmp_path, monkeypatch):
    sets = TINY + [
        "train.max_steps=4",
        "train.checkpoint_every=2",
        "train.log_every=1",
        "train.batch_size=8",
        "ppo-gt.rollout_batch_size=16",
        "ppo-gt.ppo_epochs=2",
        "eval.max_prompts=8",
        "run.save_model=false",
    ]
    spec = RunSpec(algo="ppo-gt", task="sentiment", seed=3, sets=sets)
    whole = execute(spec, results=tmp_path / "whole", cache_dir=cache_dir, echo=lambda _: None)

    calls = []
    sample = online.sample  # the rollouts' sampler (bench.online.sample_and_score)

    def killed_in_the_fourth_rollout(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # update 4 starts; the last checkpoint is from update 2
            raise KeyboardInterrupt
        return sample(*args, **kwargs)

    monkeypatch.setattr(online, "sample", killed_in_the_fourth_rollout)
    with pytest.raises(KeyboardInterrupt):
        execute(spec, results=tmp_path / "resumed", cache_dir=cache_dir, echo=lambda _: None)
    partial = next((tmp_path / "resumed" / ".partial").iterdir())
    assert json.loads((partial / "checkpoints" / STATE_FILE).read_text()) == {"step": 2}
    # PPO's own state (the KL weight, the score statistics) is in the shared loop's checkpoint, as plain data.
    extra = load_checkpoint(partial / "checkpoints" / CHECKPOINT)["extra"]
    assert set(extra) == {"kl_coef", "score_mean", "score_std"} and extra["kl_coef"] != 0.1
    monkeypatch.setattr(online, "sample", sample)
    messages = []
    resumed = execute(spec, results=tmp_path / "resumed", cache_dir=cache_dir, echo=messages.append)
    assert any("resuming from step 2" in m for m in messages)

    assert (resumed / "metrics.json").read_text() == (whole / "metrics.json").read_text()
    assert (resumed / "train_log.jsonl").read_text() == (whole / "train_log.jsonl").read_text()
    log = [json.loads(line) for line in (whole / "train_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == [1, 2, 3, 4]
    assert {
        "objective/kl",
        "objective/scores",
        "objective/rlhf_reward",
        "objective/kl_coef",
        "policy/entropy",
        "policy/clipfrac",
        "policy/approxkl",
        "loss/value",
        "loss",
    } <= set(log[0])
    assert log[2]["objective/kl_coef"] == extra["kl_coef"]  # the weight update 3 used, restored on resume
    cost = json.loads((whole / "cost.json").read_text())
    assert cost["sampled_tokens"] == sum(row["sampled_tokens"] for row in log) > 0
