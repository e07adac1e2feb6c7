"""Preference-optimisation losses: DPO, IPO, ORPO, SimPO (pairs of answers) and KTO (single answers, labelled).

They take what one forward pass gives for any model: each answer's SUMMED log-prob over its target tokens (fp32) and
its target-token count. They return one loss per pair (per row for KTO), unreduced: the training loop sums them and
divides by the pair count of the whole optimizer step, across micro-batches and workers.

Each equals TRL 1.16's loss of the same name within 1e-5 in fp32 (tests/test_preference_losses.py calls TRL's own
code): DPO is `DPOTrainer`'s "sigmoid", IPO its "ipo", ORPO `ORPOTrainer.odds_ratio_loss` plus its NLL term, SimPO
`CPOTrainer`'s "simpo" (alpha 0, cpo_alpha 0), KTO `KTOTrainer`'s "kto". The differences are stated where they are.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

LOSS_TYPES = ("dpo", "ipo", "orpo", "simpo", "kto")
NEEDS_REFERENCE = frozenset({"dpo", "ipo", "kto"})  # orpo and simpo need no reference model
AVERAGES_LOGPS = frozenset({"ipo", "orpo", "simpo"})  # per-token averaged log-probs (ipo: of the log-ratios)
SMOOTHABLE = frozenset({"dpo", "simpo"})  # the two that take label_smoothing (as TRL: cDPO, CPO's simpo)

# ORPO takes log(1 - p) of an answer's mean token probability p = exp(avg logp). As avg logp -> 0 that is -inf and
# its gradient inf, NaN through torch.where's other branch (TRL issue #1473). Clamped here, the log-odds stay finite;
# nothing changes for an answer whose mean token probability is below 1 - 1e-6.
_MAX_AVG_LOGP = -1e-6


@dataclass(frozen=True)
class PreferenceLossSettings:
    loss_type: str = "dpo"
    beta: float = 0.1
    label_smoothing: float = 0.0  # dpo (conservative DPO) and simpo only
    simpo_gamma: float = 0.5  # SimPO's target reward margin
    desirable_weight: float = 1.0  # KTO's weights of desirable and undesirable rows
    undesirable_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {', '.join(LOSS_TYPES)}, got {self.loss_type!r}")
        if not self.beta > 0:  # also refuses NaN
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if not 0 <= self.label_smoothing < 0.5:  # 0.5 makes the preference a coin flip: nothing to learn
            raise ValueError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if self.label_smoothing and self.loss_type not in SMOOTHABLE:
            raise ValueError(f"label_smoothing applies to {' and '.join(sorted(SMOOTHABLE))} only, "
                             f"not loss_type {self.loss_type!r}")
        for key in ("desirable_weight", "undesirable_weight"):
            if not getattr(self, key) > 0:
                raise ValueError(f"{key} must be > 0, got {getattr(self, key)}")


@dataclass
class PairLosses:
    """One entry per pair. The rewards are what TRL logs as rewards/chosen and rewards/rejected, detached."""

    losses: Tensor
    chosen_rewards: Tensor
    rejected_rewards: Tensor


def pair_losses(settings: PreferenceLossSettings, chosen_logps: Tensor, rejected_logps: Tensor,
                chosen_tokens: Tensor, rejected_tokens: Tensor, ref_chosen_logps: Tensor | None = None,
                ref_rejected_logps: Tensor | None = None) -> PairLosses:
    """The loss of each pair, shape [pairs], for dpo, ipo, orpo and simpo.

    chosen_logps / rejected_logps: summed log-probs of each answer's target tokens, fp32, shape [pairs];
    chosen_tokens / rejected_tokens: their target-token counts; ref_*: the same sums under the reference model
    (dpo, ipo). ORPO's NLL term is the chosen answer's mean token NLL, -chosen_logps / chosen_tokens, per pair, so
    that the loss is a sum over pairs. TRL's is one token-weighted mean over all of the batch's chosen tokens, prompt
    tokens included; the two agree when the prompts are left out and the chosen answers are equally long.
    """
    loss_type = settings.loss_type
    if loss_type == "kto":
        raise ValueError("loss_type 'kto' scores single labelled answers, not pairs: use kto_losses")
    chosen, rejected = chosen_logps, rejected_logps
    if loss_type in NEEDS_REFERENCE:
        _require_reference(loss_type, ref_chosen_logps=ref_chosen_logps, ref_rejected_logps=ref_rejected_logps)
        chosen, rejected = chosen - ref_chosen_logps, rejected - ref_rejected_logps
    summed = chosen, rejected
    if loss_type in AVERAGES_LOGPS:
        # clamp: an empty answer averages to 0 instead of NaN, as TRL's IPO does
        chosen, rejected = chosen / chosen_tokens.clamp(min=1), rejected / rejected_tokens.clamp(min=1)
    losses = _PAIR_LOSSES[loss_type](settings, chosen, rejected)
    # As TRL logs them: DPOTrainer beta * the summed log-ratios (for IPO too), ORPO and CPO beta * the averaged logps
    rewarded = summed if loss_type in NEEDS_REFERENCE else (chosen, rejected)
    return PairLosses(losses, settings.beta * rewarded[0].detach(), settings.beta * rewarded[1].detach())


def kto_losses(settings: PreferenceLossSettings, logps: Tensor, ref_logps: Tensor, desirable: Tensor,
               kl_logps: Tensor, ref_kl_logps: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """KTO's loss of each row, its reward (detached) and the batch's KL estimate, in row order.

    logps / ref_logps: summed log-probs of each row's answer under the policy and the reference, shape [rows];
    desirable: bool, shape [rows]; kl_logps / ref_kl_logps: the same sums for the batch's mismatched (prompt, other
    row's answer) pairs. TRL averages the KL estimate across processes; this is the estimate of the rows given.
    """
    if settings.loss_type != "kto":
        raise ValueError(f"kto_losses needs loss_type 'kto', got {settings.loss_type!r}: use pair_losses")
    _require_reference("kto", ref_logps=ref_logps, ref_kl_logps=ref_kl_logps)
    beta = settings.beta
    logratios = logps - ref_logps
    # KTO's reference point: detached (TRL computes it under no_grad), and never below 0 as a KL can't be
    kl = (kl_logps - ref_kl_logps).mean().detach().clamp(min=0)
    losses = torch.where(
        desirable,
        settings.desirable_weight * (1 - torch.sigmoid(beta * (logratios - kl))),
        settings.undesirable_weight * (1 - torch.sigmoid(beta * (kl - logratios))),
    )
    return losses, beta * logratios.detach(), kl


def _require_reference(loss_type: str, **refs: Tensor | None) -> None:
    missing = [name for name, value in refs.items() if value is None]
    if missing:
        raise ValueError(f"loss_type {loss_type!r} needs the reference model's log-probs: pass {', '.join(missing)}")


def _dpo(settings: PreferenceLossSettings, chosen: Tensor, rejected: Tensor) -> Tensor:
    # With label_smoothing > 0 this is conservative DPO (cDPO), what TRL's "sigmoid" computed before 1.x dropped it
    return _smoothed_logistic(settings.beta * (chosen - rejected), settings.label_smoothing)


def _ipo(settings: PreferenceLossSettings, chosen: Tensor, rejected: Tensor) -> Tensor:
    # chosen, rejected: per-token averaged log-ratios, so beta means the same at any answer length (TRL's choice)
    return ((chosen - rejected) - 1 / (2 * settings.beta)) ** 2


def _orpo(settings: PreferenceLossSettings, chosen: Tensor, rejected: Tensor) -> Tensor:
    log_odds = (chosen - rejected) - (_log1mexp(chosen) - _log1mexp(rejected))
    return -chosen - settings.beta * F.logsigmoid(log_odds)  # -chosen: the mean token NLL of the chosen answer


def _simpo(settings: PreferenceLossSettings, chosen: Tensor, rejected: Tensor) -> Tensor:
    margin = (chosen - rejected) - settings.simpo_gamma / settings.beta
    return _smoothed_logistic(settings.beta * margin, settings.label_smoothing)


def _smoothed_logistic(logits: Tensor, label_smoothing: float) -> Tensor:
    """-log sigmoid(logits), with the preference taken as flipped with probability label_smoothing."""
    return -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)


def _log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)), finite with a finite gradient for any x (see _MAX_AVG_LOGP)."""
    x = x.clamp(max=_MAX_AVG_LOGP)
    # Branch at -ln 2 (Maechler, as TRL): each form is free of cancellation on its side
    return torch.where(x < -math.log(2), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


_PAIR_LOSSES: dict[str, Callable[[PreferenceLossSettings, Tensor, Tensor], Tensor]] = {
    "dpo": _dpo, "ipo": _ipo, "orpo": _orpo, "simpo": _simpo,
}
