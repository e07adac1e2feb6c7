"""Loading a trained checkpoint for inference (generate, predict, eval, export): base + adapter, unmerged.

The caller says which model class to build (a Generator a causal LM, a Predictor a classifier): this module knows
checkpoints, not tasks, so that tasks can use it without an import cycle."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.errors import TuneforgeError
from tuneforge.models.sources import ModelError, load_model_config, resolve_model
from tuneforge.models.tokenizers import load_tokenizer, match_vocab
from tuneforge.rundir import CheckpointMeta, resolve_checkpoint


@dataclass
class LoadedCheckpoint:
    model: Any
    tokenizer: Any
    meta: CheckpointMeta
    path: Path


def base_model_source(meta: CheckpointMeta) -> str:
    """Where the base weights are now: the model id resolved again (a bundled alias converts on a new machine),
    else the directory recorded at training time."""
    try:
        source = resolve_model(meta.model_id)
    except ModelError as exc:
        if not (meta.model_source and Path(meta.model_source).is_dir()):
            raise ModelError(f"base model of this checkpoint: {exc}") from None
        source = meta.model_source
    try:  # a hub id that is gone or unreachable: one line here rather than a traceback from deep in the loader
        load_model_config(source, meta.model_id, meta.trust_remote_code)
    except ModelError as exc:
        raise ModelError(f"base model of this checkpoint: {exc}") from None
    return source


def no_head(labels: list[str]) -> dict[str, Any]:
    return {}


def label_head(labels: list[str]) -> dict[str, Any]:
    """from_pretrained arguments for a classification head over `labels` (a fresh head of that size replaces
    whatever head the weights had)."""
    return {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
            "label2id": {label: i for i, label in enumerate(labels)}, "ignore_mismatched_sizes": True}


def load_checkpoint(path: str | Path, *, task: str, auto_model: Any,
                    head: Callable[[list[str]], dict[str, Any]] = no_head, dtype: Any = None) -> LoadedCheckpoint:
    """The checkpoint of a run (best/, else the latest) or a checkpoint directory, ready for inference, built with
    `auto_model` (a transformers Auto class). A checkpoint of another `task` is refused."""
    import torch

    checkpoint = resolve_checkpoint(path)
    meta = CheckpointMeta.read(checkpoint)
    if meta.task != task:
        raise TuneforgeError(f"{path}: this is a {meta.task} run; the command needs a {task} run")
    tokenizer = load_tokenizer(str(checkpoint), trust_remote_code=meta.trust_remote_code)
    kwargs = {"dtype": dtype or torch.float32, "trust_remote_code": meta.trust_remote_code}
    auto = auto_model
    if meta.lora:
        from peft import PeftModel

        base = auto.from_pretrained(base_model_source(meta), **head(meta.labels), **kwargs)
        match_vocab(base, tokenizer)
        model = PeftModel.from_pretrained(base, str(checkpoint))
    else:
        model = auto.from_pretrained(str(checkpoint), **kwargs)
    model.eval()
    return LoadedCheckpoint(model, tokenizer, meta, checkpoint)
