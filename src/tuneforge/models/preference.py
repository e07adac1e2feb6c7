"""The objective of preference tuning: both answers of every pair in one forward pass, each answer's summed
log-probability, and the loss of `models.preference_losses` on them (DPO, IPO, ORPO, SimPO; KTO on unpaired rows).

A batch holds 2n rows (data.preference.collate_preference): the n chosen answers then the n rejected ones (KTO: the
n completions then their n mismatched KL rows), padded or end to end. The reference model's log-probabilities come
in the batch (`ref_*_logps`): they are computed once before training (`reference_logps`, under
`reference_model()`), cached with the run and its checkpoints, so a step costs one policy forward and backward.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from tuneforge.models.objectives import CausalLMObjective
from tuneforge.models.preference_losses import (
    NEEDS_REFERENCE,
    PreferenceLossSettings,
    kto_losses,
    pair_losses,
)

REFERENCE_ADAPTER = "tuneforge_reference"  # the name a reference run's adapter is loaded under, for one pass


def loss_settings(config: Any) -> PreferenceLossSettings:
    """The config's preference keys, each loss's defaults where a key is unset."""
    given = {key: getattr(config, key) for key in ("loss_type", "beta", "label_smoothing", "simpo_gamma",
                                                   "desirable_weight", "undesirable_weight")}
    return PreferenceLossSettings(**{key: value for key, value in given.items() if value is not None})


class PreferenceObjective(nn.Module):
    """Preference loss summed over the batch's pairs (KTO: rows); the loop divides by the pairs of the whole step."""

    def __init__(self, model: nn.Module, settings: PreferenceLossSettings, reference: str | None = None):
        super().__init__()
        self.model = model
        self.settings = settings
        self.reference = reference or "init"
        self.token_scorer = CausalLMObjective(model)

    @property
    def needs_reference(self) -> bool:
        return self.settings.loss_type in NEEDS_REFERENCE

    @property
    def unpaired(self) -> bool:
        return self.settings.loss_type == "kto"

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor, **extra: Any,
                ) -> tuple[torch.Tensor, torch.Tensor]:
        losses, _ = self.scored(input_ids, attention_mask, labels, **extra)
        return losses.sum(), torch.tensor(float(len(losses)), device=losses.device)

    def scored(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
               position_ids: torch.Tensor | None = None, row_lengths: torch.Tensor | None = None,
               **extra: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Per-pair (KTO: per-row) losses, and the per-row quantities validation reports."""
        logps, tokens = self.row_logps(input_ids, attention_mask, labels, position_ids, row_lengths)
        first, second = logps.chunk(2)
        first_tokens, second_tokens = tokens.chunk(2)
        if self.unpaired:
            desirable = extra["desirable"].bool()
            losses, rewards, _ = kto_losses(self.settings, first, self.reference_of(extra, "ref_logps"), desirable,
                                            second, self.reference_of(extra, "ref_kl_logps"))
            chosen, rejected = rewards[desirable], rewards[~desirable]
            return losses, {"rewards_chosen": chosen, "rewards_rejected": rejected,
                            "logps_chosen": first[desirable].detach(), "logps_rejected": first[~desirable].detach(),
                            "correct": torch.cat([chosen > 0, rejected < 0])}
        scored = pair_losses(self.settings, first, second, first_tokens, second_tokens,
                             self.reference_of(extra, "ref_chosen_logps"),
                             self.reference_of(extra, "ref_rejected_logps"))
        return scored.losses, {"rewards_chosen": scored.chosen_rewards, "rewards_rejected": scored.rejected_rewards,
                               "logps_chosen": first.detach(), "logps_rejected": second.detach(),
                               "correct": scored.chosen_rewards > scored.rejected_rewards}

    def reference_of(self, extra: dict[str, torch.Tensor], key: str) -> torch.Tensor | None:
        if not self.needs_reference:
            return None
        if key not in extra:
            raise RuntimeError(f"this batch carries no reference log-probabilities ({key}); they are computed before "
                               "the first step")
        return extra[key].float()

    def row_logps(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                  position_ids: torch.Tensor | None, row_lengths: torch.Tensor | None,
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's summed log-probability of its target tokens (fp32), and its number of targets."""
        losses, selected = self.token_scorer.token_losses(input_ids, attention_mask, labels, position_ids, row_lengths)
        if row_lengths is None:
            rows, count = selected.nonzero(as_tuple=True)[0], selected.shape[0]
        else:  # one [1, tokens] sequence: a target at position p predicts token p + 1, which lies in its own row
            ends = torch.cumsum(row_lengths.to(selected.device), 0)
            positions = selected[0].nonzero(as_tuple=True)[0] + 1
            rows, count = torch.searchsorted(ends, positions, right=True), len(row_lengths)
        logps = torch.zeros(count, dtype=torch.float32, device=losses.device).index_add(0, rows, -losses)
        return logps, torch.bincount(rows, minlength=count).to(torch.float32)

    # --- validation -------------------------------------------------------------------------------------------
    def eval_batch(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        losses, parts = self.scored(**batch)
        sums = {f"{name}_sum": float(values.float().sum()) for name, values in parts.items() if name != "correct"}
        sums.update({f"{name}_count": float(len(values)) for name, values in parts.items() if name != "correct"})
        sums["correct_sum"], sums["correct_count"] = float(parts["correct"].float().sum()), float(len(parts["correct"]))
        return losses.sum(), torch.tensor(float(len(losses))), sums

    @staticmethod
    def target_count(batch: dict[str, torch.Tensor]) -> float:
        return float(len(batch["input_ids"]) // 2 if batch.get("row_lengths") is None else len(batch["row_lengths"]) // 2)

    @staticmethod
    def summarize(loss_sum: float, count: float, extra: dict[str, Any]) -> dict[str, float]:
        sums = extra.get("sums", {})

        def mean(name: str) -> float:
            return sums.get(f"{name}_sum", 0.0) / max(sums.get(f"{name}_count", 0.0), 1.0)

        chosen, rejected = mean("rewards_chosen"), mean("rewards_rejected")
        return {"eval_loss": loss_sum / max(count, 1.0), "eval_rewards_chosen": chosen,
                "eval_rewards_rejected": rejected, "eval_rewards_accuracy": mean("correct"),
                "eval_rewards_margin": chosen - rejected, "eval_logps_chosen": mean("logps_chosen"),
                "eval_logps_rejected": mean("logps_rejected")}

    # --- the reference model ------------------------------------------------------------------------------------
    @torch.no_grad()
    def reference_logps(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """[n, 2]: each pair's chosen and rejected (KTO: completion and KL row) summed log-probabilities."""
        logps, _ = self.row_logps(batch["input_ids"], batch["attention_mask"], batch["labels"],
                                  batch.get("position_ids"), batch.get("row_lengths"))
        return torch.stack(logps.chunk(2), dim=1)

    @contextlib.contextmanager
    def reference_model(self, reference_dir: str | None = None) -> Iterator[None]:
        """The policy turned into the reference for one pass: as it is (init), its adapter off (base), or a
        reference run's adapter loaded beside the trained one and removed afterwards — never a second copy of the
        base in memory."""
        if self.reference == "init":
            yield
        elif self.reference == "base":
            with self.model.disable_adapter():
                yield
        else:
            yield from self.with_adapter(reference_dir or self.reference)

    def with_adapter(self, adapter_dir: str) -> Iterator[None]:
        trained = self.model.active_adapter
        self.model.load_adapter(adapter_dir, adapter_name=REFERENCE_ADAPTER, is_trainable=False)
        try:
            self.model.set_adapter(REFERENCE_ADAPTER)
            yield
        finally:
            self.model.set_adapter(trained)
            self.model.delete_adapter(REFERENCE_ADAPTER)
