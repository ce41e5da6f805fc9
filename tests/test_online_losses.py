"""RLOO, GRPO and online DPO: advantages and losses by hand, and TRL 1.16's _compute_loss on the same tensors."""

from __future__ import annotations

import math
import types
from collections import defaultdict

import pytest
import torch

from bench.algorithms.grpo import GRPO, grpo_advantages, grpo_loss
from bench.algorithms.online_dpo import OnlineDPO, best_and_worst
from bench.algorithms.rloo import RLOO, rloo_advantages, rloo_loss
from bench.errors import UserError

N, T = 6, 5  # completions (3 prompts x k = 2, or 2 prompts x k = 3) x completion positions


def _tensors():
    g = torch.Generator().manual_seed(3)
    mask = torch.zeros(N, T, dtype=torch.long)
    for row, end in enumerate([5, 3, 4, 1, 5, 2]):
        mask[row, :end] = 1
    logps = -2 * torch.rand(N, T, generator=g, dtype=torch.float64) * mask
    old = logps - 0.4 * (torch.rand(N, T, generator=g, dtype=torch.float64) - 0.5) * mask  # ratios around 1 +- 0.2
    ref = logps - 0.5 * torch.rand(N, T, generator=g, dtype=torch.float64) * mask
    advantages = torch.tensor([1.0, -0.5, 0.3, -1.2, 0.8, -0.1], dtype=torch.float64)
    return logps, old, ref, advantages, mask


ACCELERATOR = types.SimpleNamespace(
    device=torch.device("cpu"),
    gather=lambda x: x,
    gather_for_metrics=lambda x: x,
    reduce=lambda x, reduction="sum": x,
    sync_gradients=True,
    num_processes=1,
)


def _trl_inputs(mask, **extra):
    return {
        "prompt_ids": torch.zeros(N, 2, dtype=torch.long),
        "prompt_mask": torch.ones(N, 2, dtype=torch.long),
        "completion_ids": torch.zeros(N, T, dtype=torch.long),
        "completion_mask": mask,
        **extra,
    }


def _trainer(logps, **attributes):
    """A stand-in for a TRL trainer: the attributes its _compute_loss reads, and the log-probs its model gives."""
    trainer = types.SimpleNamespace(
        model=types.SimpleNamespace(training=True),
        accelerator=ACCELERATOR,
        aux_loss_enabled=False,
        _metrics={"train": defaultdict(list)},
        **attributes,
    )
    trainer._get_per_token_logps_and_entropies = lambda *a, **k: (logps, torch.zeros_like(logps), None)
    return trainer


# ---- RLOO ----------------------------------------------------------------------------------------


def test_rloo_advantage_is_the_reward_minus_the_mean_of_the_others():
    rewards = torch.tensor([1.0, 2.0, 6.0, 0.0, 0.0, 3.0])  # two prompts, k = 3
    assert rloo_advantages(rewards, 3).tolist() == pytest.approx([1 - 4, 2 - 3.5, 6 - 1.5, -1.5, -1.5, 3.0])
    # The same as k / (k - 1) x (reward - group mean): centred per group, scaled up by the left-out one.
    centred = (rewards.view(2, 3) - rewards.view(2, 3).mean(-1, keepdim=True)).flatten() * 3 / 2
    assert rloo_advantages(rewards, 3).tolist() == pytest.approx(centred.tolist())
    normalized = rloo_advantages(rewards, 3, normalize=True)
    assert normalized.mean().item() == pytest.approx(0, abs=1e-6)
    assert normalized.std().item() == pytest.approx(1, abs=1e-3)


@pytest.mark.parametrize("epsilon", [0.2, 0.05])
def test_rloo_loss_matches_trl(epsilon):
    from trl.trainer.rloo_trainer import RLOOTrainer

    logps, old, _, advantages, mask = _tensors()
    ours, clipped = rloo_loss((logps * mask).sum(-1), (old * mask).sum(-1), advantages, epsilon)
    trainer = _trainer(logps, epsilon_low=epsilon, epsilon_high=epsilon)
    inputs = _trl_inputs(mask, old_logps=(old * mask).sum(-1), advantages=advantages)
    trl = RLOOTrainer._compute_loss(trainer, trainer.model, inputs)
    assert ours.item() == pytest.approx(trl.item(), abs=1e-6, rel=0)
    assert clipped.item() == pytest.approx(trainer._metrics["train"]["clip_ratio/region_mean"][0], abs=1e-6)
    # By hand: a sequence is clipped where its ratio left [1 - eps, 1 + eps] in its advantage's direction.
    ratio = torch.exp(((logps - old) * mask).sum(-1))
    by_hand = ((ratio < 1 - epsilon) & (advantages < 0)) | ((ratio > 1 + epsilon) & (advantages > 0))
    assert clipped.item() == pytest.approx(by_hand.float().mean().item(), abs=1e-6)
    if epsilon == 0.05:  # this range clips some sequences and not others, so both branches are exercised
        assert 0 < clipped.item() < 1


def test_rloo_with_one_pass_is_reinforce_with_the_baseline():
    """ratio = 1 at the sampling policy: the gradient is -mean(A_i * grad log pi(y_i))."""
    logps, _, _, advantages, mask = _tensors()
    seq = (logps * mask).sum(-1).clone().requires_grad_(True)
    rloo_loss(seq, seq.detach(), advantages, 0.2)[0].backward()
    assert seq.grad.tolist() == pytest.approx((-advantages / N).tolist(), abs=1e-12)


# ---- GRPO ----------------------------------------------------------------------------------------


def test_grpo_advantages_by_hand():
    rewards = torch.tensor([1.0, 3.0, 0.0, 0.0, 2.0, 4.0])  # three prompts, k = 2
    # group std of (1, 3) is sqrt(2); of (0, 0) is 0; of (2, 4) is sqrt(2).
    s = math.sqrt(2) + 1e-4
    assert grpo_advantages(rewards, 2).tolist() == pytest.approx([-1 / s, 1 / s, 0, 0, -1 / s, 1 / s], abs=1e-6)
    assert grpo_advantages(rewards, 2, "none").tolist() == pytest.approx([-1, 1, 0, 0, -1, 1])
    b = rewards.std().item() + 1e-4
    assert grpo_advantages(rewards, 2, "batch").tolist() == pytest.approx([-1 / b, 1 / b, 0, 0, -1 / b, 1 / b])


def _trl_grpo(loss_type, beta, epsilon, max_new_tokens):
    from trl.trainer.grpo_trainer import GRPOTrainer

    logps, old, ref, advantages, mask = _tensors()
    trainer = _trainer(
        logps,
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
        importance_sampling_level="token",
        beta=beta,
        epsilon_low=epsilon,
        epsilon_high=epsilon,
        loss_type=loss_type,
        use_vllm=False,
        current_gradient_accumulation_steps=1,
        _entropy_bonus_enabled=False,
        max_completion_length=max_new_tokens,
        args=types.SimpleNamespace(use_bias_correction_kl=False, delta=None),
    )
    inputs = _trl_inputs(mask, advantages=advantages, old_per_token_logps=old, ref_per_token_logps=ref)
    loss = GRPOTrainer._compute_loss(trainer, trainer.model, inputs)
    return loss.item(), {k: v[-1] for k, v in trainer._metrics["train"].items()}


@pytest.mark.parametrize(
    "loss_type,beta,epsilon",
    [("grpo", 0.04, 0.2), ("grpo", 0.0, 0.2), ("bnpo", 0.04, 0.1), ("dr_grpo", 0.1, 0.2), ("dr_grpo", 0.0, 0.05)],
)
def test_grpo_loss_matches_trl(loss_type, beta, epsilon):
    logps, old, ref, advantages, mask = _tensors()
    ours, metrics = grpo_loss(
        logps, old, ref, advantages, mask.double(), beta=beta, epsilon=epsilon, loss_type=loss_type, max_new_tokens=T
    )
    trl, trl_metrics = _trl_grpo(loss_type, beta, epsilon, T)
    assert ours.item() == pytest.approx(trl, abs=1e-6, rel=0)
    assert metrics["clip_ratio/region_mean"].item() == pytest.approx(trl_metrics["clip_ratio/region_mean"], abs=1e-6)
    if beta:
        assert metrics["kl"].item() == pytest.approx(trl_metrics["kl"], abs=1e-6, rel=0) and metrics["kl"] > 0


def test_grpo_comparison_can_fail():
    """The aggregation matters: grpo's per-completion mean is not bnpo's token mean on ragged lengths."""
    logps, old, ref, advantages, mask = _tensors()
    ours = grpo_loss(logps, old, ref, advantages, mask.double(), beta=0.04, epsilon=0.2, loss_type="grpo")[0]
    assert ours.item() != pytest.approx(_trl_grpo("bnpo", 0.04, 0.2, T)[0], abs=1e-4)


# ---- online DPO ----------------------------------------------------------------------------------


def test_best_and_worst_of_each_group():
    scores = torch.tensor([0.2, 0.9, 0.5, 0.7, 0.7, 0.1, 0.3, 0.3, 0.3])  # three prompts, k = 3
    chosen, rejected = best_and_worst(scores, 3)
    assert chosen.tolist() == [1, 3, 6] and rejected.tolist() == [0, 5, 7]  # a full tie still pairs two rows
    chosen, rejected = best_and_worst(torch.tensor([0.4, 0.4]), 2)
    assert chosen.tolist() == [0] and rejected.tolist() == [1]


@pytest.mark.parametrize(
    "cls,kwargs,message",
    [
        (RLOO, {"k": 1}, "rloo.k=1"),
        (RLOO, {"reward": "oracle"}, "rloo.reward=oracle"),
        (GRPO, {"loss_type": "dapo"}, "grpo.loss_type=dapo"),
        (GRPO, {"scale_rewards": "yes"}, "grpo.scale_rewards=yes"),
        (GRPO, {"epsilon": 0.0}, "grpo.epsilon=0"),
        (OnlineDPO, {"beta": 0.0}, "online-dpo.beta=0"),
        (OnlineDPO, {"prompts_per_update": 0}, "online-dpo.prompts_per_update=0"),
    ],
)
def test_bad_options_are_one_line_user_errors(cls, kwargs, message):
    with pytest.raises(UserError, match=message.replace(".", r"\.")):
        cls(cls.Config(**kwargs))
