"""Loading a trained checkpoint for inference (generate, predict, eval, export): base + adapter, unmerged."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.errors import TuneforgeError
from tuneforge.models import ModelError, load_model_config, load_tokenizer, match_vocab, resolve_model
from tuneforge.train.checkpoints import read_meta, resolve_checkpoint


@dataclass
class LoadedCheckpoint:
    model: Any
    tokenizer: Any
    meta: dict[str, Any]
    path: Path


def base_model_source(meta: dict[str, Any]) -> str:
    """Where the base weights are now: the model id resolved again (a bundled alias converts on a new machine),
    else the directory recorded at training time."""
    try:
        source = resolve_model(meta["model_id"])
    except ModelError as exc:
        recorded = meta.get("model_source")
        if not (recorded and Path(recorded).is_dir()):
            raise ModelError(f"base model of this checkpoint: {exc}") from None
        source = recorded
    try:  # a hub id that is gone or unreachable: one line here rather than a traceback from deep in the loader
        load_model_config(source, meta["model_id"], meta.get("trust_remote_code", False))
    except ModelError as exc:
        raise ModelError(f"base model of this checkpoint: {exc}") from None
    return source


def load_checkpoint(path: str | Path, *, task: str | None = None, dtype: Any = None) -> LoadedCheckpoint:
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    checkpoint = resolve_checkpoint(path)
    meta = read_meta(checkpoint)
    if task and meta.get("task") != task:
        raise TuneforgeError(f"{path}: this is a {meta.get('task')} run; the command needs a {task} run")
    tokenizer = load_tokenizer(str(checkpoint), trust_remote_code=meta.get("trust_remote_code", False))
    auto = AutoModelForSequenceClassification if meta.get("task") == "classification" else AutoModelForCausalLM
    kwargs = {"dtype": dtype or torch.float32, "trust_remote_code": meta.get("trust_remote_code", False)}
    if meta.get("lora"):
        from peft import PeftModel

        base = auto.from_pretrained(base_model_source(meta), **classification_kwargs(meta), **kwargs)
        match_vocab(base, tokenizer)
        model = PeftModel.from_pretrained(base, str(checkpoint))
    else:
        model = auto.from_pretrained(str(checkpoint), **kwargs)
    model.eval()
    return LoadedCheckpoint(model, tokenizer, meta, checkpoint)


def classification_kwargs(meta: dict[str, Any]) -> dict[str, Any]:
    labels = meta.get("labels") or []
    if meta.get("task") != "classification":
        return {}
    return {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
            "label2id": {label: i for i, label in enumerate(labels)}, "ignore_mismatched_sizes": True}
