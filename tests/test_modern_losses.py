"""SimPO, ORPO and KTO: by hand, and against TRL 1.16's own functions on the same log-probs."""

from __future__ import annotations

import math
import os
import types
from collections import defaultdict

import pytest
import torch

from bench.algorithms.kto import KTO, kto_loss
from bench.algorithms.orpo import ORPO, log1mexp, odds_ratio_term
from bench.algorithms.simpo import SimPO, simpo_loss
from bench.errors import UserError

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # CPO and ORPO live in trl.experimental in TRL 1.16

B, T = 4, 10


def _out():
    """A PairForward of B pairs on T positions, in float64 so comparisons see formulas, not roundings."""
    g = torch.Generator().manual_seed(1)
    mask = torch.zeros(2 * B, T - 1, dtype=torch.long)
    for row, (start, end) in enumerate([(1, 9), (3, 6), (0, 4), (2, 9), (1, 5), (3, 9), (0, 8), (2, 3)]):
        mask[row, start:end] = 1
    token_logps = -2 * torch.rand(2 * B, T - 1, generator=g, dtype=torch.float64) * mask
    return {
        "chosen_logps": token_logps[:B].sum(-1),
        "rejected_logps": token_logps[B:].sum(-1),
        "chosen_token_logps": token_logps[:B],
        "chosen_mask": mask[:B],
        "rejected_token_logps": token_logps[B:],
        "rejected_mask": mask[B:],
    }


def _means(out):
    return (
        out["chosen_logps"] / out["chosen_mask"].sum(-1),
        out["rejected_logps"] / out["rejected_mask"].sum(-1),
    )


ACCELERATOR = types.SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda x: x)


# ---- SimPO ---------------------------------------------------------------------------------------


def test_simpo_by_hand():
    # beta 2, gamma 1: margin of mean log-probs 0.5 -> -log sigmoid(2 * 0.5 - 1) = log 2.
    losses = simpo_loss(torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0]), beta=2.0, gamma=1.0)
    assert losses.tolist() == pytest.approx([math.log(2), math.log1p(math.exp(3.0))], abs=1e-7)


@pytest.mark.parametrize("beta,ratio", [(2.0, 0.5), (10.0, 0.3), (2.5, 0.0)])
def test_simpo_matches_trl_cpo_simpo(beta, ratio):
    from trl.experimental.cpo.cpo_trainer import CPOTrainer

    out = _out()
    loss, metrics = SimPO(SimPO.Config(beta=beta, gamma_beta_ratio=ratio)).loss(out)
    trainer = types.SimpleNamespace(
        alpha=0.0, loss_type="simpo", simpo_gamma=ratio * beta, beta=beta, label_smoothing=0.0, accelerator=ACCELERATOR
    )
    # CPO scores average_log_prob log-probs for loss_type="simpo"; cpo_alpha=0 adds no NLL term.
    losses, chosen_rewards, rejected_rewards = CPOTrainer.cpo_loss(trainer, *_means(out))
    assert loss.item() == pytest.approx(losses.mean().item(), abs=1e-6, rel=0)
    assert metrics["rewards/chosen"].item() == pytest.approx(chosen_rewards.mean().item(), abs=1e-6, rel=0)
    assert metrics["rewards/rejected"].item() == pytest.approx(rejected_rewards.mean().item(), abs=1e-6, rel=0)


def test_simpo_comparison_can_fail():
    """Without the length normalisation the loss is another one, and the check would see it."""
    from trl.experimental.cpo.cpo_trainer import CPOTrainer

    out = _out()
    trainer = types.SimpleNamespace(
        alpha=0.0, loss_type="simpo", simpo_gamma=1.0, beta=2.0, label_smoothing=0.0, accelerator=ACCELERATOR
    )
    summed = CPOTrainer.cpo_loss(trainer, out["chosen_logps"], out["rejected_logps"])[0].mean()
    assert SimPO().loss(out)[0].item() != pytest.approx(summed.item(), abs=1e-3)


# ---- ORPO ----------------------------------------------------------------------------------------


def test_log1mexp_is_exact_at_both_ends():
    x = torch.tensor([-1e-10, -1e-3, -0.5, -0.7, -5.0, -50.0], dtype=torch.float64)
    expected = [math.log(-math.expm1(v)) for v in x.tolist()]
    assert log1mexp(x).tolist() == pytest.approx(expected, rel=1e-12)


def test_orpo_by_hand():
    # Mean log-probs log(0.5) and log(0.25): odds 1 and 1/3, log odds ratio log 3.
    ratio, log_odds = odds_ratio_term(torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)]))
    assert log_odds.item() == pytest.approx(math.log(3), abs=1e-6)
    assert ratio.item() == pytest.approx(math.log(3 / 4), abs=1e-6)  # log sigmoid(log 3) = log(3 / 4)
    out = _out()
    loss, metrics = ORPO(ORPO.Config(lam=0.2)).loss(out)
    nll = -(out["chosen_token_logps"].sum() / out["chosen_mask"].sum())
    chosen, rejected = _means(out)
    # The odds-ratio term is taken in float32, as TRL does.
    assert loss.item() == pytest.approx((nll - 0.2 * odds_ratio_term(chosen, rejected)[0].mean()).item(), abs=1e-6)
    assert metrics["nll_loss"].item() == pytest.approx(nll.item(), abs=1e-12)


@pytest.mark.parametrize("lam", [0.1, 0.5])
def test_orpo_odds_ratio_term_matches_trl(lam):
    from trl.experimental.orpo.orpo_trainer import ORPOTrainer

    out = _out()
    _, metrics = ORPO(ORPO.Config(lam=lam)).loss(out)
    trainer = types.SimpleNamespace(beta=lam, accelerator=ACCELERATOR)
    losses, chosen_rewards, rejected_rewards, ratio, log_odds = ORPOTrainer.odds_ratio_loss(trainer, *_means(out))
    ours_ratio, ours_log_odds = odds_ratio_term(*_means(out))
    # TRL's loss is policy_nll_loss - losses.mean(), losses = beta * log sigmoid(log odds).
    assert (lam * ours_ratio).tolist() == pytest.approx(losses.tolist(), abs=1e-6, rel=0)
    assert metrics["log_odds_ratio"].item() == pytest.approx(ratio.item(), abs=1e-6, rel=0)
    assert metrics["log_odds_chosen"].item() == pytest.approx(log_odds.item(), abs=1e-6, rel=0)
    assert metrics["rewards/chosen"].item() == pytest.approx(chosen_rewards.mean().item(), abs=1e-6, rel=0)
    assert metrics["rewards/rejected"].item() == pytest.approx(rejected_rewards.mean().item(), abs=1e-6, rel=0)
    assert ours_log_odds.tolist() == pytest.approx(
        [
            (c - r) - (math.log(-math.expm1(c)) - math.log(-math.expm1(r)))
            for c, r in zip(*(t.tolist() for t in _means(out)))
        ],
        abs=1e-12,
    )


# ---- KTO -----------------------------------------------------------------------------------------


def _kto_inputs():
    out = _out()
    g = torch.Generator().manual_seed(2)
    ref_chosen = out["chosen_logps"] + torch.randn(B, generator=g, dtype=torch.float64)
    ref_rejected = out["rejected_logps"] + torch.randn(B, generator=g, dtype=torch.float64)
    out["mismatched_logps"] = -8 - torch.rand(B, generator=g, dtype=torch.float64)
    out["ref_mismatched_logps"] = out["mismatched_logps"] - 0.3 - torch.rand(B, generator=g, dtype=torch.float64)
    return out, ref_chosen, ref_rejected


def test_kto_by_hand():
    # z0 = max(0, mean(0.4, 0.2)) = 0.3; beta 1.
    loss, z0 = kto_loss(torch.tensor([1.3]), torch.tensor([0.3]), torch.tensor([0.4, 0.2]), beta=1.0)
    assert z0.item() == pytest.approx(0.3)
    assert loss.item() == pytest.approx(((1 - 1 / (1 + math.exp(-1.0))) + 0.5) / 2, abs=1e-7)
    # A negative batch KL estimate is clamped to 0; weights scale each side.
    loss, z0 = kto_loss(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([-1.0]), beta=1.0, desirable_weight=2.0)
    assert z0.item() == 0.0 and loss.item() == pytest.approx((2 * 0.5 + 0.5) / 2)


def _trl_kto(out, ref_chosen, ref_rejected, beta, desirable_weight, undesirable_weight):
    """TRL 1.16's KTOTrainer._compute_loss on the same log-probs: B desirable then B undesirable examples."""
    from trl.trainer.kto_trainer import KTOTrainer

    logps = torch.cat([out["chosen_token_logps"], out["rejected_token_logps"]])
    mask = torch.cat([out["chosen_mask"], out["rejected_mask"]])
    kl_ids = torch.zeros(2 * B, 3, dtype=torch.long)
    # Each example's KL sequence: TRL averages 2B of them; two copies of our B give the same mean.
    kl_logps = torch.cat([out["mismatched_logps"], out["mismatched_logps"]])
    ref_kl = torch.cat([out["ref_mismatched_logps"], out["ref_mismatched_logps"]])

    class Model:
        training = True

        def __call__(self, input_ids, **kwargs):
            if input_ids is kl_ids:  # the mismatched sequences: one log-prob per row, in its last column
                per_token = torch.zeros(2 * B, 2, dtype=torch.float64)
                per_token[:, -1] = kl_logps
                return types.SimpleNamespace(log_probs=per_token)
            zeros = torch.zeros_like(logps)
            return types.SimpleNamespace(log_probs=logps, entropy=zeros, mean_logits=zeros)

    trainer = types.SimpleNamespace(
        model=Model(),
        accelerator=ACCELERATOR,
        calculate_KL=True,
        precompute_ref_logps=True,
        aux_loss_enabled=False,
        loss_type="kto",
        beta=beta,
        desirable_weight=desirable_weight,
        undesirable_weight=undesirable_weight,
        _metrics={"train": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    trainer._compute_kl_logps = lambda model, batch: KTOTrainer._compute_kl_logps(trainer, model, batch)
    inputs = {
        "input_ids": torch.zeros(2 * B, T, dtype=torch.long),
        "attention_mask": torch.ones(2 * B, T, dtype=torch.long),
        "completion_mask": torch.cat([torch.zeros(2 * B, 1, dtype=torch.long), mask], dim=1),
        "KL_input_ids": kl_ids,
        "KL_attention_mask": torch.ones(2 * B, 3, dtype=torch.long),
        "KL_completion_mask": torch.tensor([[0, 0, 1]] * (2 * B)),
        "label": torch.tensor([True] * B + [False] * B),
        "ref_logps": torch.cat([ref_chosen, ref_rejected]),
        "ref_KL_logps": ref_kl,
    }
    loss = KTOTrainer._compute_loss(trainer, trainer.model, inputs, False)
    return loss.item(), {k: v[-1] for k, v in trainer._metrics["train"].items()}


@pytest.mark.parametrize("beta,wd,wu", [(0.1, 1.0, 1.0), (0.5, 1.33, 1.0), (2.0, 1.0, 0.5)])
def test_kto_matches_trl(beta, wd, wu):
    out, ref_chosen, ref_rejected = _kto_inputs()
    loss, metrics = KTO(KTO.Config(beta=beta, desirable_weight=wd, undesirable_weight=wu)).loss(
        out, ref_chosen, ref_rejected
    )
    trl_loss, trl_metrics = _trl_kto(out, ref_chosen, ref_rejected, beta, wd, wu)
    assert loss.item() == pytest.approx(trl_loss, abs=1e-6, rel=0)
    assert metrics["kl"].item() == pytest.approx(trl_metrics["kl"], abs=1e-6, rel=0) and trl_metrics["kl"] > 0
    for name in ("rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected"):
        assert metrics[name].item() == pytest.approx(trl_metrics[name], abs=1e-6, rel=0), name


def test_kto_comparison_can_fail():
    """Without the reference point (z0 = 0) TRL's value differs: the check sees the KL term."""
    out, ref_chosen, ref_rejected = _kto_inputs()
    trl_loss, _ = _trl_kto(out, ref_chosen, ref_rejected, 0.5, 1.0, 1.0)
    no_kl = dict(out, mismatched_logps=out["ref_mismatched_logps"])
    assert KTO(KTO.Config(beta=0.5)).loss(no_kl, ref_chosen, ref_rejected)[0].item() != pytest.approx(
        trl_loss, abs=1e-4
    )


@pytest.mark.parametrize(
    "cls,kwargs,message",
    [
        (SimPO, {"beta": 0.0}, "simpo.beta=0"),
        (SimPO, {"gamma_beta_ratio": -1.0}, "simpo.gamma_beta_ratio=-1"),
        (ORPO, {"lam": -0.1}, "orpo.lam=-0.1"),
        (KTO, {"beta": -1.0}, "kto.beta=-1"),
        (KTO, {"desirable_weight": 0.0, "undesirable_weight": 0.0}, "kto.undesirable_weight=0"),
    ],
)
def test_bad_options_are_one_line_user_errors(cls, kwargs, message):
    with pytest.raises(UserError, match=message.replace(".", r"\.")):
        cls(cls.Config(**kwargs))
