"""The offline losses: DPO variants by hand and against TRL's own code, unlikelihood by hand, SFT masking."""

from __future__ import annotations

import math
import types
from collections import defaultdict

import pytest
import torch
from tiny import tiny_gpt2

from bench.algorithms.dpo import DPO, dpo_loss
from bench.algorithms.unlikelihood import Unlikelihood, unlikelihood_loss
from bench.logprobs import collate
from bench.preference import demonstration_loss


def softplus(x: float) -> float:
    """-log sigmoid(-x) = log(1 + e^x)."""
    return math.log1p(math.exp(x))


# ---- DPO variants against hand-computed values -----------------------------------------------
# Two pairs, beta = 0.5. Log-ratios (policy - reference):
#   pair 1: chosen -1.0 - (-1.5) = 0.5, rejected -2.0 - (-1.5) = -0.5  -> h = 1.0
#   pair 2: chosen -3.0 - (-2.0) = -1.0, rejected -1.0 - (-2.5) = 1.5  -> h = -2.5
POLICY_CHOSEN, POLICY_REJECTED = [-1.0, -3.0], [-2.0, -1.0]
REF_CHOSEN, REF_REJECTED = [-1.5, -2.0], [-1.5, -2.5]
BETA = 0.5
H = [1.0, -2.5]
HAND = {
    # -log sigmoid(beta h) = log(1 + e^(-beta h))
    ("sigmoid", 0.0): [softplus(-0.5), softplus(1.25)],
    # conservative: (1 - eps) * log(1 + e^(-beta h)) + eps * log(1 + e^(beta h))
    ("sigmoid", 0.1): [0.9 * softplus(-0.5) + 0.1 * softplus(0.5), 0.9 * softplus(1.25) + 0.1 * softplus(-1.25)],
    ("sigmoid", 0.3): [0.7 * softplus(-0.5) + 0.3 * softplus(0.5), 0.7 * softplus(1.25) + 0.3 * softplus(-1.25)],
    # (h - 1/(2 beta))^2 = (h - 1)^2
    ("ipo", 0.0): [0.0, 12.25],
    # max(0, 1 - beta h)
    ("hinge", 0.0): [0.5, 2.25],
}


@pytest.mark.parametrize("loss_type,label_smoothing", list(HAND))
def test_dpo_loss_matches_hand_computed_values(loss_type, label_smoothing):
    t = lambda xs: torch.tensor(xs, dtype=torch.float64)  # noqa: E731
    losses, chosen_rewards, rejected_rewards = dpo_loss(
        t(POLICY_CHOSEN),
        t(POLICY_REJECTED),
        t(REF_CHOSEN),
        t(REF_REJECTED),
        beta=BETA,
        loss_type=loss_type,
        label_smoothing=label_smoothing,
    )
    assert losses.tolist() == pytest.approx(HAND[loss_type, label_smoothing], abs=1e-12)
    assert chosen_rewards.tolist() == pytest.approx([0.25, -0.5])  # beta * (0.5, -1.0)
    assert rejected_rewards.tolist() == pytest.approx([-0.25, 0.75])  # beta * (-0.5, 1.5)


def test_literal_value_of_the_dpo_loss():
    # At h = 0 every pair costs log 2, whatever beta; at beta h = 2, log(1 + e^-2) = 0.126928011...
    zero = torch.zeros(3)
    assert dpo_loss(zero, zero, zero, zero, beta=0.1)[0].tolist() == pytest.approx([0.6931471805599453] * 3)
    one = torch.ones(1)
    assert dpo_loss(one * 4, one * 0, one * 0, one * 0, beta=0.5)[0].item() == pytest.approx(0.12692801104297263)


def test_dpo_gradient_raises_chosen_and_lowers_rejected():
    # d loss / d policy_chosen = -beta * sigmoid(-beta h); the rejected gradient is its negative.
    chosen = torch.tensor([-1.0], requires_grad=True)
    rejected = torch.tensor([-2.0], requires_grad=True)
    dpo_loss(chosen, rejected, torch.tensor([-1.5]), torch.tensor([-1.5]), beta=BETA)[0].sum().backward()
    expected = -BETA / (1 + math.exp(BETA * 1.0))
    assert chosen.grad.item() == pytest.approx(expected)
    assert rejected.grad.item() == pytest.approx(-expected)


def test_dpo_loss_rejects_unknown_variants():
    x = torch.zeros(1)
    with pytest.raises(ValueError, match="unknown loss_type"):
        dpo_loss(x, x, x, x, beta=0.1, loss_type="kto")
    with pytest.raises(ValueError, match="sigmoid loss only"):
        dpo_loss(x, x, x, x, beta=0.1, loss_type="ipo", label_smoothing=0.1)


# ---- DPO.loss: what the algorithm feeds dpo_loss -----------------------------------------------


def _out(chosen_tokens: list[list[float]], rejected_tokens: list[list[float]]) -> dict:
    """A concatenated_forward-shaped dict from per-token log-probs of completion tokens (right-padded with 0)."""
    width = max(len(r) for r in chosen_tokens + rejected_tokens)
    out = {}
    for side, rows in (("chosen", chosen_tokens), ("rejected", rejected_tokens)):
        logps = torch.tensor([r + [0.0] * (width - len(r)) for r in rows])
        out[f"{side}_token_logps"] = logps
        out[f"{side}_mask"] = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        out[f"{side}_logps"] = logps.sum(-1)
    return out


def test_ipo_averages_log_ratios_over_completion_tokens():
    # chosen: 2 tokens summing to -1.0 (ref -3.0) -> per-token log-ratio 1.0
    # rejected: 4 tokens summing to -4.0 (ref -2.0) -> per-token log-ratio -0.5
    # h = 1.5; beta = 0.25 -> target 2; loss (1.5 - 2)^2 = 0.25
    out = _out([[-0.5, -0.5]], [[-1.0, -1.0, -1.0, -1.0]])
    loss, metrics = DPO(config=DPO.Config(beta=0.25, loss_type="ipo")).loss(
        out, torch.tensor([-3.0]), torch.tensor([-2.0])
    )
    assert loss.item() == pytest.approx(0.25)
    # Rewards are reported on whole sequences: 0.25 * 2.0 and 0.25 * -2.0
    assert metrics["rewards/chosen"].item() == pytest.approx(0.5)
    assert metrics["rewards/rejected"].item() == pytest.approx(-0.5)


def test_reference_free_uses_zero_reference_logps():
    out = _out([[-0.5, -0.5], [-2.0]], [[-1.0], [-0.25, -0.25]])
    loss, metrics = DPO(config=DPO.Config(beta=0.5, reference_free=True)).loss(out, None, None)
    # h = (-1.0 - -1.0) = 0 and (-2.0 - -0.5) = -1.5 -> log 2 and log(1 + e^0.75)
    assert loss.item() == pytest.approx((math.log(2) + softplus(0.75)) / 2)
    assert metrics["rewards/accuracies"].item() == 0.0  # a tie does not count as correct


@pytest.mark.parametrize(
    "options",
    [{"loss_type": "dpo"}, {"beta": 0.0}, {"label_smoothing": 0.5}, {"loss_type": "hinge", "label_smoothing": 0.1}],
)
def test_bad_dpo_options_are_user_errors(options):
    from bench.errors import UserError

    with pytest.raises(UserError):
        DPO(config=DPO.Config(**options))


# ---- DPO against TRL 1.16's DPOTrainer._compute_loss ---------------------------------------------
# TRL's loss method is called unbound, on a stand-in `self` holding the attributes it reads and a
# stand-in model returning fixed per-token log-probs, with precompute_ref_logps=True so the reference
# log-probs come from the batch. Everything after the forward pass is TRL's own code.
#
# Naming differences (TRL 1.16 vs ours):
# - TRL's `sigmoid` ignores label_smoothing; its conservative form -(1-eps) log s(bh) - eps log s(-bh)
#   survives only inside `aot`, which first sorts policy and reference margins separately. With both
#   sorted in the same order (asserted below) `aot` is exactly conservative DPO, so ours is checked
#   against it. (TRL's `robust` is a different, unbiased estimator.)
# - TRL's `ipo` averages log-ratios over completion tokens; DPO.loss does the same (dpo_loss itself
#   takes whatever log-probs it is given).

B, T = 4, 10


def _fixture():
    g = torch.Generator().manual_seed(0)
    completion_mask = torch.zeros(2 * B, T, dtype=torch.long)
    for row, (start, end) in enumerate([(2, 10), (4, 7), (1, 5), (3, 10), (2, 6), (4, 10), (1, 9), (3, 4)]):
        completion_mask[row, start:end] = 1
    # float64, so the comparison sees formula differences rather than the order of float32 roundings.
    token_logps = -3 * torch.rand(2 * B, T - 1, generator=g, dtype=torch.float64) * completion_mask[:, 1:]
    logps = token_logps.sum(-1)
    margins = logps[:B] - logps[B:]
    ref_rejected = -10 * torch.rand(B, generator=g, dtype=torch.float64)
    # Reference margins in the same order as the policy's (see the note on `aot` above).
    ref_chosen = ref_rejected + 0.5 * margins + 0.3
    return completion_mask, token_logps, ref_chosen, ref_rejected


def _trl_loss(loss_type: str, beta: float, label_smoothing: float):
    from trl.trainer.dpo_trainer import DPOTrainer

    completion_mask, token_logps, ref_chosen, ref_rejected = _fixture()

    class Model:
        training = True

        def __call__(self, **kwargs):
            zeros = torch.zeros_like(token_logps)
            return types.SimpleNamespace(log_probs=token_logps, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool())

    accelerator = types.SimpleNamespace(device=torch.device("cpu"), gather=lambda x: x, gather_for_metrics=lambda x: x)
    trainer = types.SimpleNamespace(
        model=Model(),
        accelerator=accelerator,
        aux_loss_enabled=False,
        ld_alpha=None,
        precompute_ref_logps=True,
        f_divergence_type="reverse_kl",
        loss_types=[loss_type],
        loss_weights=[1.0],
        beta=beta,
        label_smoothing=label_smoothing,
        use_weighting=False,
        _metrics={"train": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
        args=None,
    )
    inputs = {
        "input_ids": torch.zeros(2 * B, T, dtype=torch.long),
        "attention_mask": torch.ones(2 * B, T, dtype=torch.long),
        "completion_mask": completion_mask,
        "ref_chosen_logps": ref_chosen,
        "ref_rejected_logps": ref_rejected,
    }
    loss = DPOTrainer._compute_loss(trainer, trainer.model, inputs, False)
    return loss.item(), {k: v[0] for k, v in trainer._metrics["train"].items()}


def _our_loss(loss_type: str, beta: float, label_smoothing: float):
    completion_mask, token_logps, ref_chosen, ref_rejected = _fixture()
    mask = completion_mask[:, 1:]
    out = {
        "chosen_logps": token_logps[:B].sum(-1),
        "rejected_logps": token_logps[B:].sum(-1),
        "chosen_token_logps": token_logps[:B],
        "chosen_mask": mask[:B],
        "rejected_token_logps": token_logps[B:],
        "rejected_mask": mask[B:],
    }
    config = DPO.Config(beta=beta, loss_type=loss_type, label_smoothing=label_smoothing)
    loss, metrics = DPO(config=config).loss(out, ref_chosen, ref_rejected)
    return loss.item(), {k: float(v) for k, v in metrics.items()}


def test_fixture_orders_policy_and_reference_margins_alike():
    completion_mask, token_logps, ref_chosen, ref_rejected = _fixture()
    logps = token_logps.sum(-1)
    assert torch.equal((logps[:B] - logps[B:]).argsort(), (ref_chosen - ref_rejected).argsort())
    assert 0 < (logps[:B] - ref_chosen - logps[B:] + ref_rejected).gt(0).sum() < B  # both signs of h present


@pytest.mark.parametrize(
    "ours,trl",
    [
        (("sigmoid", 0.1, 0.0), ("sigmoid", 0.1, 0.0)),
        (("sigmoid", 0.5, 0.0), ("sigmoid", 0.5, 0.0)),
        (("sigmoid", 0.1, 0.1), ("aot", 0.1, 0.1)),
        (("sigmoid", 0.5, 0.3), ("aot", 0.5, 0.3)),
        (("ipo", 0.1, 0.0), ("ipo", 0.1, 0.0)),
        (("ipo", 1.0, 0.0), ("ipo", 1.0, 0.0)),
        (("hinge", 0.1, 0.0), ("hinge", 0.1, 0.0)),
        (("hinge", 1.0, 0.0), ("hinge", 1.0, 0.0)),
    ],
)
def test_dpo_matches_trl(ours, trl):
    our_loss, our_metrics = _our_loss(*ours)
    trl_loss, trl_metrics = _trl_loss(*trl)
    assert our_loss == pytest.approx(trl_loss, abs=1e-6, rel=0)
    for name in (
        "rewards/chosen",
        "rewards/rejected",
        "rewards/accuracies",
        "rewards/margins",
        "logps/chosen",
        "logps/rejected",
    ):
        assert our_metrics[name] == pytest.approx(trl_metrics[name], abs=1e-6, rel=0), name


def test_trl_comparison_can_fail():
    """The parity check distinguishes variants: TRL's sigmoid differs from ours with label smoothing."""
    assert _our_loss("sigmoid", 0.5, 0.3)[0] != pytest.approx(_trl_loss("sigmoid", 0.5, 0.0)[0], abs=1e-3)


# ---- unlikelihood ------------------------------------------------------------------------------------


def test_unlikelihood_matches_hand_computed_values():
    # chosen tokens p = 0.5, 0.25 | 0.8 ; rejected tokens p = 0.5, 0.9 | 0.2, (padding)
    out = _out([[math.log(0.5), math.log(0.25)], [math.log(0.8)]], [[math.log(0.5), math.log(0.9)], [math.log(0.2)]])
    likelihood = -(math.log(0.5) + math.log(0.25) + math.log(0.8)) / 3  # mean over the batch's 3 chosen tokens
    unlikelihood = -(math.log(0.5) + math.log(0.1) + math.log(0.8)) / 3  # -log(1 - p) over the 3 rejected tokens
    loss, metrics = Unlikelihood(config=Unlikelihood.Config(alpha=0.5)).loss(out)
    assert loss.item() == pytest.approx(likelihood + 0.5 * unlikelihood, rel=1e-6)
    assert metrics["nll/chosen"].item() == pytest.approx(likelihood, rel=1e-6)
    assert metrics["unlikelihood/rejected"].item() == pytest.approx(unlikelihood, rel=1e-6)
    assert metrics["logps/rejected"].item() == pytest.approx((math.log(0.45) + math.log(0.2)) / 2, rel=1e-6)


def test_unlikelihood_is_finite_for_certain_tokens_and_pushes_rejected_down():
    logps = torch.tensor([[0.0, math.log(0.5)]], requires_grad=True)  # p = 1 exactly, then 0.5
    mask = torch.ones(1, 2, dtype=torch.long)
    loss, _, unlikelihood = unlikelihood_loss(torch.zeros(1, 2), mask, logps, mask, alpha=1.0)
    loss.backward()
    assert unlikelihood.item() == pytest.approx((-math.log(1e-5) - math.log(0.5)) / 2)
    assert torch.isfinite(logps.grad).all()
    # d/dlogp of -log(1 - p) / 2 = p / (1 - p) / 2 = 0.5 at p = 0.5: lowering the rejected log-prob lowers the loss
    assert logps.grad[0, 1].item() == pytest.approx(0.5)


def test_unlikelihood_with_alpha_zero_is_chosen_nll():
    out = _out([[-1.0, -2.0]], [[-0.1, -0.2]])
    loss, _ = Unlikelihood(config=Unlikelihood.Config(alpha=0.0)).loss(out)
    assert loss.item() == pytest.approx(1.5)


# ---- SFT negative log-likelihood -----------------------------------------------------------------------


def test_sft_loss_counts_completion_tokens_only():
    model = tiny_gpt2()
    encoded = [([5, 9, 3, 7, 11], 2), ([4, 8, 6], 1)]  # completions: 3 and 2 tokens; the second row is padded
    batch = collate(encoded, pad_id=0)
    loss, _ = demonstration_loss(model, batch)
    with torch.no_grad():
        terms, all_terms = [], []
        for ids, n_prompt in encoded:
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
            row = [-logp[t - 1, ids[t]].item() for t in range(1, len(ids))]
            terms += row[n_prompt - 1 :]
            all_terms += row
    assert loss.item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)
    assert loss.item() != pytest.approx(sum(all_terms) / len(all_terms), rel=1e-3)  # prompt tokens would change it
