"""Direct Preference Optimization (Rafailov et al., 2023) with its conservative, IPO and hinge variants.

    loss = -log sigmoid(beta * [(log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x))])

log pi(y|x) is the sum of the completion's token log-probs (prompt masked out), and
beta * (log pi(y|x) - log pi_ref(y|x)) is the implicit reward the training log reports.

Two ways in, one loss (`DPO.loss`, built on `dpo_loss`) on one forward (`concatenated_forward`):

    bench run --algo dpo --task sentiment --set dpo.beta=0.5        # the harness: DPO(config=...).fit(ctx)

    dpo = DPO(model, ref_model, beta=0.1, learning_rate=1e-4)      # your own models and token ids
    stats = dpo.train_step(prompt=prompt_ids, chosen=chosen_ids, rejected=rejected_ids)
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.checks import between, one_of, positive, require
from bench.logprobs import collate_pairs, concatenated_forward
from bench.preference import fit_on_pairs, pair_metrics

LOSS_TYPES = ("sigmoid", "ipo", "hinge")


@dataclass
class Config:
    beta: float = 0.1
    """Strength of the pull toward the reference (the paper's beta: 0.1; 0.5 for TL;DR; swept 0.05-5)."""
    loss_type: str = "sigmoid"
    """sigmoid (DPO), ipo (squared loss toward 1/(2 beta) on per-token mean log-ratios, as TRL) or hinge."""
    label_smoothing: float = 0.0
    """Conservative DPO: the assumed share of flipped labels, in [0, 0.5); sigmoid loss only."""
    reference_free: bool = False
    """Take log pi_ref = 0 (a reference that rates every completion alike): no reference forward at all."""

    def check(self, section: str = "dpo") -> None:
        """One line naming the first option out of range (apply_overrides and the constructor call it)."""
        one_of(self, section, "loss_type", LOSS_TYPES)
        positive(self, section, "beta", "the paper's 0.1; swept 0.05 to 5")
        between(self, section, "label_smoothing", 0, 0.5, "[)", "the assumed share of flipped labels")
        require(
            not self.label_smoothing or self.loss_type == "sigmoid",
            section,
            "label_smoothing",
            self.label_smoothing,
            f"applies to {section}.loss_type=sigmoid only, not {self.loss_type}",
        )


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses and implicit rewards, each [B], from log-probs of chosen and rejected completions.

    With h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected):
      sigmoid  -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)   (eps = label_smoothing;
               eps > 0 is conservative DPO: the Bradley-Terry likelihood when a share eps of labels is flipped)
      ipo      (h - 1/(2 beta))^2                                           (Azar et al. 2023, eq. 17)
      hinge    max(0, 1 - beta h)                                           (SLiC's rank calibration)
    The rewards are beta * (policy - ref) for chosen and rejected, detached.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"dpo_loss: unknown loss_type {loss_type!r}; use one of {', '.join(LOSS_TYPES)}")
    if label_smoothing and loss_type != "sigmoid":
        raise ValueError(f"dpo_loss: label_smoothing applies to the sigmoid loss only, not {loss_type!r}")
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    h = chosen_logratios - rejected_logratios
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        losses = torch.relu(1 - beta * h)
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


class DPO:
    name = "dpo"
    description = (
        "Direct Preference Optimization: logistic loss on the implicit-reward margin (also conservative, IPO, hinge)"
    )
    Config = Config
    # The common small-model recipe (Adam, lr 1e-4, one epoch); the paper's 1e-6 is for billion-parameter models.
    train_defaults = {"lr": 1e-4, "epochs": 1.0}

    def __init__(
        self,
        model=None,
        ref_model=None,
        *,
        config: Config | None = None,
        learning_rate: float = 1e-4,
        max_grad_norm: float = 1.0,
        pad_token_id: int | None = None,
        **options,
    ):
        """Harness: `DPO(config=Config(...))`, then `fit(ctx)`.

        Python API: `DPO(model, ref_model, beta=0.1, loss_type="sigmoid", label_smoothing=0.0,
        reference_free=False, learning_rate=1e-4, max_grad_norm=1.0, pad_token_id=None)`, then
        `train_step(...)`; `options` are Config fields. `ref_model` is frozen in place (eval mode, no
        gradients); without it, the reference is a frozen copy of `model` as it is now. Steps use their
        own Adam optimizer and gradient-norm clipping.
        """
        self.config = dataclasses.replace(config or Config(), **options)
        c = self.config
        c.check(self.name)
        self.model, self.ref_model = model, ref_model
        self.max_grad_norm, self.pad_token_id = max_grad_norm, pad_token_id
        if model is not None:
            if ref_model is None and not c.reference_free:
                self.ref_model = copy.deepcopy(model)
            if self.ref_model is not None:
                self.ref_model.eval().requires_grad_(False)
            self.optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=learning_rate)

    def loss(self, out: dict, ref_chosen_logps: torch.Tensor | None, ref_rejected_logps: torch.Tensor | None):
        """Mean loss over the batch and TRL-named metrics (a bench.contracts.PairLoss): from a PairForward of the
        policy and the reference log-probs."""
        c = self.config
        chosen, rejected = out["chosen_logps"], out["rejected_logps"]
        if c.reference_free:
            ref_chosen_logps, ref_rejected_logps = torch.zeros_like(chosen), torch.zeros_like(rejected)
        n_chosen = n_rejected = 1
        if c.loss_type == "ipo":
            # IPO's target margin 1/(2 beta) is meant per token: like TRL (which checked this with the IPO
            # authors) we average log-ratios over completion tokens, so beta means the same at any length.
            n_chosen = out["chosen_mask"].sum(-1).clamp(min=1)
            n_rejected = out["rejected_mask"].sum(-1).clamp(min=1)
        losses, _, _ = dpo_loss(
            chosen / n_chosen,
            rejected / n_rejected,
            ref_chosen_logps / n_chosen,
            ref_rejected_logps / n_rejected,
            beta=c.beta,
            loss_type=c.loss_type,
            label_smoothing=c.label_smoothing,
        )
        # Rewards are reported on whole-sequence log-ratios for every loss type, as TRL does.
        chosen_rewards = c.beta * (chosen - ref_chosen_logps).detach()
        rejected_rewards = c.beta * (rejected - ref_rejected_logps).detach()
        return losses.mean(), pair_metrics(chosen_rewards, rejected_rewards, chosen, rejected)

    def fit(self, ctx):
        return fit_on_pairs(ctx, self.loss, needs_reference=not self.config.reference_free, desc="dpo")

    def implicit_reward(self, logps: torch.Tensor, ref_logps: torch.Tensor, n_tokens: torch.Tensor) -> torch.Tensor:
        """beta * (log pi - log pi_ref), the reward the training log reports; with reference_free, beta * log pi.

        Held-out pair accuracy ranks pairs by it (bench.contracts.ImplicitReward).
        """
        return self.config.beta * (logps if self.config.reference_free else logps - ref_logps)

    def train_step(
        self,
        prompt: torch.Tensor,
        chosen: torch.Tensor,
        rejected: torch.Tensor,
        *,
        prompt_mask: torch.Tensor | None = None,
        chosen_mask: torch.Tensor | None = None,
        rejected_mask: torch.Tensor | None = None,
        pad_token_id: int | None = None,
    ) -> dict[str, float]:
        """One optimizer step on a batch of pairs given as token ids: [B, T] tensors, or 1-D for a single pair.

        Padding, anywhere in a row: pass 0/1 masks (1 = real token), or `pad_token_id` (here or to the
        constructor) to drop every position holding it. If pad equals eos and completions end in eos,
        pass masks. Returns loss, chosen_reward, rejected_reward, reward_margin, reward_accuracy,
        chosen_logps, rejected_logps (batch means) and grad_norm (before clipping).
        """
        if self.model is None:
            raise RuntimeError("train_step needs a model: construct DPO(model, ref_model, ...)")
        pad = pad_token_id if pad_token_id is not None else self.pad_token_id
        rows = [
            _rows(ids, mask, pad)
            for ids, mask in ((prompt, prompt_mask), (chosen, chosen_mask), (rejected, rejected_mask))
        ]
        if len({len(r) for r in rows}) != 1:
            raise ValueError(
                f"train_step: prompt, chosen and rejected hold {[len(r) for r in rows]} rows; they must match"
            )
        if any(not p for p in rows[0]):
            raise ValueError("train_step: every prompt needs at least one token (the first token is never scored)")
        pairs = [
            {"chosen": (p + c, len(p)), "rejected": (p + r, len(p)), "index": i}
            for i, (p, c, r) in enumerate(zip(*rows))
        ]
        device = next(self.model.parameters()).device
        # Padding positions are masked out, so which id fills them does not matter.
        batch = {k: v.to(device) for k, v in collate_pairs(pairs, pad if pad is not None else 0).items()}

        ref = (None, None)
        if not self.config.reference_free:
            with torch.no_grad():
                ref_out = concatenated_forward(self.ref_model, batch)
            ref = (ref_out["chosen_logps"], ref_out["rejected_logps"])
        self.model.train()
        loss, metrics = self.loss(concatenated_forward(self.model, batch), *ref)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        grad_norm = torch.nn.utils.clip_grad_norm_(
            params, self.max_grad_norm if self.max_grad_norm > 0 else float("inf")
        )
        self.optimizer.step()
        return {
            "loss": loss.item(),
            "chosen_reward": float(metrics["rewards/chosen"]),
            "rejected_reward": float(metrics["rewards/rejected"]),
            "reward_margin": float(metrics["rewards/margins"]),
            "reward_accuracy": float(metrics["rewards/accuracies"]),
            "chosen_logps": float(metrics["logps/chosen"]),
            "rejected_logps": float(metrics["logps/rejected"]),
            "grad_norm": float(grad_norm),
        }


def _rows(ids: torch.Tensor, mask: torch.Tensor | None, pad_token_id: int | None) -> list[list[int]]:
    """Token-id rows without padding, from a [B, T] (or [T]) tensor and an optional 0/1 mask."""
    ids = torch.as_tensor(ids)
    if ids.dim() == 1:
        ids = ids[None]
        mask = None if mask is None else torch.as_tensor(mask)[None]
    if mask is not None:
        return [row[m.bool()].tolist() for row, m in zip(ids.cpu(), torch.as_tensor(mask).cpu())]
    rows = ids.tolist()
    if pad_token_id is not None:
        rows = [[t for t in row if t != pad_token_id] for row in rows]
    return rows
