"""Loading a trained checkpoint for inference (generate, predict, eval, export): base + adapter, unmerged.

The model class comes from the checkpoint's task spec (tuneforge.taskspec); the caller says which capability it
needs (a Generator a model that generates, a Predictor one that classifies texts), never a task's name."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.errors import TuneforgeError
from tuneforge.models.sources import ModelError, load_model_config, resolve_model
from tuneforge.models.tokenizers import load_tokenizer, match_vocab
from tuneforge.rundir import CheckpointMeta, resolve_checkpoint
from tuneforge.taskspec import TaskSpec, get_spec

CAPABILITIES = {"generates": "a run that generates text", "classifies_texts": "a text classification run",
                "tags_words": "a token classification run"}


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


def model_class(spec: TaskSpec) -> Any:
    """The transformers Auto class that builds a model of this task."""
    import transformers

    return getattr(transformers, spec.auto_model)


def head_kwargs(spec: TaskSpec, labels: list[str]) -> dict[str, Any]:
    """Extra from_pretrained arguments: a label head's size and names for tasks that have one."""
    return label_head(labels) if spec.label_head else {}


def skeleton_config(spec: TaskSpec, model_config: Any, labels: list[str]) -> Any:
    """The HF config to build a weightless copy of the model from (LoRA targets are checked on it)."""
    if spec.label_head:
        model_config.num_labels = max(len(labels), 2)
    return model_config


def label_head(labels: list[str]) -> dict[str, Any]:
    """from_pretrained arguments for a classification head over `labels` (a fresh head of that size replaces
    whatever head the weights had)."""
    return {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
            "label2id": {label: i for i, label in enumerate(labels)}, "ignore_mismatched_sizes": True}


def load_checkpoint(path: str | Path, *, needs: str, dtype: Any = None) -> LoadedCheckpoint:
    """The checkpoint of a run (best/, else the latest) or a checkpoint directory, ready for inference. `needs` is
    the capability the caller uses (a TaskSpec flag, see CAPABILITIES): a checkpoint of a task without it is refused."""
    import torch

    checkpoint = resolve_checkpoint(path)
    meta = CheckpointMeta.read(checkpoint)
    spec = get_spec(meta.task)
    if not getattr(spec, needs):
        raise TuneforgeError(f"{path}: this is a {meta.task} run; the command needs {CAPABILITIES[needs]}")
    tokenizer = load_tokenizer(str(checkpoint), trust_remote_code=meta.trust_remote_code)
    kwargs = {"dtype": dtype or torch.float32, "trust_remote_code": meta.trust_remote_code}
    auto = model_class(spec)
    if meta.lora:
        from peft import PeftModel

        base = auto.from_pretrained(base_model_source(meta), **head_kwargs(spec, meta.labels), **kwargs)
        match_vocab(base, tokenizer)
        model = PeftModel.from_pretrained(base, str(checkpoint))
    else:
        model = auto.from_pretrained(str(checkpoint), **kwargs)
    model.eval()
    return LoadedCheckpoint(model, tokenizer, meta, checkpoint)
