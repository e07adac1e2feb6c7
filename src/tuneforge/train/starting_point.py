"""Where a run starts and what it is compared with, checked before anything loads: `init_from` (a trained run or
checkpoint whose adapter keeps training, or whose fully fine-tuned weights become the base) and, for preference
losses with a reference model, `reference` (init, base, or a run holding a LoRA adapter of the same base)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tuneforge.config import TrainConfig
from tuneforge.errors import ConfigError, TuneforgeError
from tuneforge.rundir import CheckpointMeta, resolve_checkpoint
from tuneforge.taskspec import get_spec


@dataclass(frozen=True)
class StartingPoint:
    init_dir: Path | None = None  # a checkpoint whose LoRA adapter the run continues
    base_dir: Path | None = None  # a fully fine-tuned checkpoint that is the run's base weights
    reference_dir: Path | None = None  # a checkpoint whose LoRA adapter is the reference model

    @property
    def tokenizer_dir(self) -> Path | None:
        """The tokenizer (with the pad token) the starting run trained with."""
        return self.init_dir or self.base_dir


def starting_point(config: TrainConfig) -> StartingPoint:
    init_dir = base_dir = reference_dir = None
    if config.init_from:
        checkpoint, meta = trained_checkpoint(config, "init_from")
        if meta.lora:
            if not config.uses_lora:
                raise ConfigError(f"{config.source_of('init_from')}: init_from: {config.init_from} holds a LoRA "
                                  "adapter; add lora_config to keep training it, or export it merged "
                                  "(tuneforge export RUN --format merged) and give that folder as model_id")
            check_same_base(config, meta, "init_from")
            init_dir = checkpoint
        else:
            base_dir = checkpoint
    reference = config.reference
    if reference not in (None, "init", "base"):
        checkpoint, meta = trained_checkpoint(config, "reference")
        if not (meta.lora and config.uses_lora):
            raise ConfigError(f"{config.source_of('reference')}: reference: only a run holding a LoRA adapter can be "
                              "the reference of a LoRA run (it is loaded beside the trained adapter for one pass); "
                              "use reference: init or base")
        check_same_base(config, meta, "reference")
        reference_dir = checkpoint
    if reference == "base" and not config.uses_lora and base_dir is not None:
        raise ConfigError(f"{config.source_of('reference')}: reference: base with a full fine-tune that starts from "
                          "init_from needs a second copy of the model; use reference: init (the model init_from "
                          "names)")
    return StartingPoint(init_dir, base_dir, reference_dir)


def trained_checkpoint(config: TrainConfig, key: str) -> tuple[Path, CheckpointMeta]:
    where = config.source_of(key)
    given = getattr(config, key)
    try:
        checkpoint = resolve_checkpoint(given)
        meta = CheckpointMeta.read(checkpoint)
    except TuneforgeError as exc:
        raise ConfigError(f"{where}: {key}: {exc}") from None
    if get_spec(meta.task).auto_model != get_spec(config.task).auto_model:
        raise ConfigError(f"{where}: {key}: {given} is a {meta.task} run; a {config.task} run starts from a model of "
                          f"the same kind ({get_spec(config.task).auto_model})")
    return checkpoint.resolve(), meta


def check_same_base(config: TrainConfig, meta: CheckpointMeta, key: str) -> None:
    if meta.model_id != config.model_id:
        raise ConfigError(f"{config.source_of(key)}: {key}: {getattr(config, key)} holds an adapter of "
                          f"{meta.model_id}, this config trains {config.model_id}; set model_id: {meta.model_id}")
