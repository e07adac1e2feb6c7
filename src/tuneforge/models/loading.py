"""Loading a trained checkpoint for inference (generate, predict, eval, export): base + adapter, unmerged."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.errors import TuneforgeError
from tuneforge.models.sources import ModelError, load_model_config, resolve_model
from tuneforge.models.tokenizers import load_tokenizer, match_vocab
from tuneforge.rundir import CheckpointMeta, resolve_checkpoint
from tuneforge.tasks import get_task


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


def load_checkpoint(path: str | Path, *, task: str | None = None, dtype: Any = None) -> LoadedCheckpoint:
    """The checkpoint of a run (best/, else the latest) or a checkpoint directory, ready for inference.
    `task` refuses a checkpoint of another task (a command that only makes sense for one)."""
    import torch

    checkpoint = resolve_checkpoint(path)
    meta = CheckpointMeta.read(checkpoint)
    if task and meta.task != task:
        raise TuneforgeError(f"{path}: this is a {meta.task} run; the command needs a {task} run")
    model_task = get_task(meta.task)
    tokenizer = load_tokenizer(str(checkpoint), trust_remote_code=meta.trust_remote_code)
    kwargs = {"dtype": dtype or torch.float32, "trust_remote_code": meta.trust_remote_code}
    auto = model_task.auto_model()
    if meta.lora:
        from peft import PeftModel

        base = auto.from_pretrained(base_model_source(meta), **model_task.model_kwargs(meta.labels), **kwargs)
        match_vocab(base, tokenizer)
        model = PeftModel.from_pretrained(base, str(checkpoint))
    else:
        model = auto.from_pretrained(str(checkpoint), **kwargs)
    model.eval()
    return LoadedCheckpoint(model, tokenizer, meta, checkpoint)
