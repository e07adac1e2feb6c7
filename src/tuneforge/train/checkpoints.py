"""Writing a checkpoint's contents and reading its training state back. (Where checkpoints live, and their
metadata, belong to `tuneforge.rundir`.)

A checkpoint directory is self-describing:
- LoRA: `adapter_model.safetensors` + `adapter_config.json` (the adapter only, never the base);
  full fine-tuning: `model.safetensors` + `config.json`;
- the tokenizer (with the pad token training used);
- `tuneforge.json`: a `CheckpointMeta` (task, base model, data shape, labels, stop tokens, step, metrics, and the
  size of every other file, so that a copy cut short is never taken for a checkpoint);
- `training_state.pt`: optimizer, LR schedule, RNG and step, for `--resume` (tensors and plain types only, loaded
  with `weights_only=True`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tuneforge.rundir import STATE_FILE, CheckpointMeta, card_file


def save_checkpoint(directory: Path, model: torch.nn.Module, tokenizer: Any, meta: CheckpointMeta,
                    state: dict[str, Any]) -> None:
    if hasattr(model, "peft_config"):
        model.save_pretrained(directory, safe_serialization=True, save_embedding_layers=False)
    else:
        model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    # PEFT saves a template card of placeholders; best/ gets the run's own card when training ends (tuneforge.card)
    card_file(directory).unlink(missing_ok=True)
    torch.save(state, directory / STATE_FILE)
    files = {str(path.relative_to(directory)): path.stat().st_size for path in sorted(directory.rglob("*"))
             if path.is_file()}
    meta.model_copy(update={"files": files}).write(directory)


def load_training_state(directory: Path) -> dict[str, Any] | None:
    path = directory / STATE_FILE
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)
