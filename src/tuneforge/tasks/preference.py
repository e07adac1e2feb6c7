"""Preference tuning of a causal LM (DPO, IPO, ORPO, SimPO; KTO on unpaired rows). Trained on pairs of answers to
the same prompt, then used exactly as an SFT run: it generates, evaluates, exports and serves as `causal_lm` does."""

from __future__ import annotations

from typing import Any

from tuneforge.tasks.causal_lm import CausalLM
from tuneforge.taskspec import PREFERENCE

# The loss's keys, the most specific first: the one an error message names is the line it points at.
LOSS_KEYS = ("label_smoothing", "simpo_gamma", "desirable_weight", "undesirable_weight", "beta", "loss_type")


class Preference(CausalLM):
    spec = PREFERENCE

    def prepare_data(self, config: Any, tokenizer: Any, max_length: int | None, progress: Any = None) -> Any:
        from tuneforge.data.preference import prepare_preference

        return prepare_preference(config, tokenizer, max_length, unpaired=config.loss_type == "kto")

    def collate(self, examples: list[Any], pad_id: int, *, padding: str, context_length: int,
                multiple_of: int | None) -> dict[str, Any]:
        from tuneforge.data.preference import collate_preference

        return collate_preference(examples, pad_id, padding=padding, context_length=context_length,
                                  multiple_of=multiple_of)

    def needs_reference(self, config: Any) -> bool:
        from tuneforge.models.preference_losses import NEEDS_REFERENCE

        return (config.loss_type or "dpo") in NEEDS_REFERENCE

    def resolved_keys(self, config: Any) -> dict[str, Any]:
        import dataclasses

        from tuneforge.errors import ConfigError
        from tuneforge.models.preference import loss_settings

        try:
            resolved = dataclasses.asdict(loss_settings(config))
        except ValueError as exc:  # a combination of keys the loss does not take (label_smoothing with ipo, ...)
            key = next((name for name in LOSS_KEYS if name in str(exc)), "loss_type")
            raise ConfigError(f"{config.source_of(key)}: {exc}") from None
        resolved["reference"] = (config.reference or "init") if self.needs_reference(config) else None
        return resolved

    def objective(self, model: Any, meta: Any, config: Any) -> Any:
        from tuneforge.models.preference import PreferenceObjective, loss_settings

        return PreferenceObjective(model, loss_settings(config), config.reference)
