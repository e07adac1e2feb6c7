"""What a checkpoint holds, and finding one from a run directory.

A checkpoint directory is self-describing:
- LoRA: `adapter_model.safetensors` + `adapter_config.json` (the adapter only, never the base);
  full fine-tuning: `model.safetensors` + `config.json`;
- the tokenizer (with the pad token training used);
- `tuneforge.json`: task, base model, data shape, labels, stop tokens, step and validation metrics;
- `training_state.pt`: optimizer, LR schedule, RNG and step, for `--resume` (tensors and plain types only, loaded
  with `weights_only=True`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from tuneforge.errors import TuneforgeError

META_FILE = "tuneforge.json"
STATE_FILE = "training_state.pt"
RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train's record of registered checkpoints


class CheckpointError(TuneforgeError):
    """A path that is not a usable run or checkpoint."""


def save_checkpoint(directory: Path, model: torch.nn.Module, tokenizer: Any, meta: dict[str, Any], state: dict[str, Any]) -> None:
    if hasattr(model, "peft_config"):
        model.save_pretrained(directory, safe_serialization=True, save_embedding_layers=False)
    else:
        model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    torch.save(state, directory / STATE_FILE)
    (directory / META_FILE).write_text(json.dumps(meta, indent=2, default=str) + "\n", encoding="utf-8")


def load_training_state(directory: Path) -> dict[str, Any] | None:
    path = directory / STATE_FILE
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def read_meta(directory: Path) -> dict[str, Any]:
    path = Path(directory) / META_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory}: not a tuneforge checkpoint (no {META_FILE})")
    return json.loads(path.read_text(encoding="utf-8"))


def is_checkpoint(path: Path) -> bool:
    return (path / META_FILE).is_file()


DEFAULT_RUNS_DIR = Path("runs")  # output_dir's default: a bare run name is looked up here


def locate_run(path: str | Path) -> Path:
    """A run, experiment or checkpoint directory given as a path, or as a name under ./runs."""
    path = Path(path)
    if path.exists():
        return path
    named = DEFAULT_RUNS_DIR / path
    if not path.is_absolute() and named.exists():
        return named
    also = f" (nor {named})" if not path.is_absolute() and not path.is_relative_to(DEFAULT_RUNS_DIR) else ""
    raise CheckpointError(f"{path}: no such run, experiment or checkpoint directory{also}; "
                          "`tuneforge runs list` shows what there is")


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from a run directory (its best checkpoint, else its latest) or a checkpoint path."""
    path = locate_run(path)
    if is_checkpoint(path):
        return path
    if is_checkpoint(path / "best"):
        return path / "best"
    latest = latest_checkpoint(path)
    if latest is not None:
        return latest
    if not (path / "config.yaml").is_file():
        raise CheckpointError(f"{path}: not a tuneforge run or checkpoint directory (no config.yaml, no {META_FILE}); "
                              "`tuneforge runs list` shows the runs")
    raise CheckpointError(f"{path}: this run has no checkpoint yet (nothing under {path / 'checkpoints'})")


def list_checkpoints(run_dir: Path) -> list[Path]:
    """The run's registered checkpoints, oldest first. Ray Train's snapshot is the authority: a directory a crash
    left behind before Ray registered it is not a checkpoint of the run."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    registered, _ = read_snapshot(folder)
    candidates = [folder / name for name in registered] if registered is not None else folder.iterdir()
    return sorted(p for p in candidates if p.is_dir() and is_checkpoint(p))


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint a resumed run continues from."""
    folder = Path(run_dir) / "checkpoints"
    _, latest = read_snapshot(folder)
    if latest and is_checkpoint(folder / latest):
        return folder / latest
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def read_snapshot(folder: Path) -> tuple[list[str] | None, str | None]:
    """(registered checkpoint names, latest name) from Ray Train's checkpoint-manager snapshot, if readable."""
    try:
        snapshot = json.loads((folder / RAY_SNAPSHOT).read_text(encoding="utf-8"))
        names = [entry["checkpoint_dir_name"] for entry in snapshot["checkpoint_results"]]
        latest = (snapshot.get("latest_checkpoint_result") or {}).get("checkpoint_dir_name")
        return names, latest
    except (OSError, ValueError, KeyError, TypeError):
        return None, None
