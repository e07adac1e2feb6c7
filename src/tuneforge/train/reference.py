"""Reference log-probabilities (DPO, IPO, KTO): computed once, before the first step, and never again.

The workers compute them on the model as it starts (or with its adapter off, or with a reference run's adapter
loaded beside it for that one pass), each worker its share of the rows; rank 0 sends the table to the driver, which
keeps it in the run directory and in a cache keyed by what determines it (the reference model's files, the rows'
token ids, the precision), so a resumed run, a search's next trial and a rerun of the same config start without
that pass. Every checkpoint carries the table too (8 bytes a pair), so a worker restarted by Ray Train on any node
continues with the reference it started with — never one recomputed from a model that has trained since.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tuneforge.errors import TuneforgeError
from tuneforge.rundir import REFERENCE_FILE


@dataclass
class ReferenceTable:
    key: str
    precision: str
    train: np.ndarray  # [rows, 2] float32: each pair's chosen and rejected summed log-probs (KTO: completion, KL row)
    valid: np.ndarray

    def save(self, path: Path) -> None:
        from safetensors.numpy import save_file

        from tuneforge.atomic import atomic_path

        with atomic_path(path) as tmp:
            save_file({"train": self.train, "valid": self.valid}, str(tmp),
                      metadata={"key": self.key, "precision": self.precision})

    @classmethod
    def load(cls, path: Path) -> ReferenceTable | None:
        """The table at `path`, or None where there is none or it cannot be read (then it is computed again)."""
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="numpy") as file:
                meta = file.metadata() or {}
                return cls(meta["key"], meta["precision"], file.get_tensor("train"), file.get_tensor("valid"))
        except (OSError, KeyError, ValueError, RuntimeError):
            return None


# ---------------------------------------------------------------------------------------------------------------
# driver side
# ---------------------------------------------------------------------------------------------------------------


def reference_key(prepared: Any) -> str | None:
    """What the reference log-probs depend on, hashed; None when the run's loss needs no reference."""
    config = prepared.config
    if not prepared.task.needs_reference(config):
        return None
    digest = hashlib.sha256()
    start = prepared.start
    described = {"model_id": config.model_id, "source": files_digest(prepared.model_source),
                 "init_from": files_digest(start.init_dir) if start.init_dir else None,
                 "reference": config.reference or "init", "lora": config.uses_lora, "precision": config.precision,
                 "reference_files": files_digest(start.reference_dir) if start.reference_dir else None}
    digest.update(json.dumps(described, sort_keys=True).encode())
    for examples in (prepared.data.train, prepared.data.valid):
        digest.update(str(len(examples)).encode())
        for example in examples:
            for part in example.sequences():
                digest.update(np.asarray(part.input_ids, dtype=np.int64).tobytes())
                digest.update(np.asarray(part.target_mask, dtype=np.bool_).tobytes())
    return digest.hexdigest()[:32]


def files_digest(folder: str | Path) -> str:
    """A digest of a model directory's weight and config files by name, size and modification time (hashing a
    multi-GB base model's bytes at every start would cost more than the pass it saves); a hub id stands for itself."""
    path = Path(folder)
    if not path.is_dir():
        return str(folder)
    entries = sorted((file.name, file.stat().st_size, file.stat().st_mtime_ns) for file in path.iterdir()
                     if file.is_file() and file.suffix in (".safetensors", ".json", ".bin"))
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:16]


def cache_file(key: str) -> Path:
    from tuneforge.models.sources import tuneforge_home

    return tuneforge_home() / "reference_logps" / f"{key}.safetensors"


def cached_reference(run_reference_file: Path, key: str | None) -> ReferenceTable | None:
    """The table for `key` from the run directory, else from the cache shared by runs and trials."""
    if key is None:
        return None
    for path in (run_reference_file, cache_file(key)):
        table = ReferenceTable.load(path) if path.is_file() else None
        if table is not None and table.key == key:
            return table
    return None


class ReferenceKeeper:
    """The driver's sink for the workers' "reference" event: the table into the run directory and the cache, and
    where it came from into run.json."""

    def __init__(self, run: Any):
        self.run = run

    def record(self, event: dict[str, Any]) -> None:
        if event.get("type") != "reference":
            return
        self.run.update_state(reference_logps={key: event[key] for key in ("source", "key", "rows", "seconds")
                                               if key in event})
        if "train" not in event:
            return
        table = ReferenceTable(event["key"], event["precision"], np.asarray(event["train"], dtype=np.float32),
                               np.asarray(event["valid"], dtype=np.float32))
        table.save(self.run.reference_file)
        try:
            cache_file(table.key).parent.mkdir(parents=True, exist_ok=True)
            table.save(cache_file(table.key))
        except OSError:  # a read-only home: the run directory's copy is enough for --resume
            pass


# ---------------------------------------------------------------------------------------------------------------
# worker side
# ---------------------------------------------------------------------------------------------------------------


def prepare_reference(loop: Any, resume_dir: Path | None, offered: ReferenceTable | None, key: str | None,
                      ) -> ReferenceTable | None:
    """The run's reference table, attached to every train and validation row: from the checkpoint being resumed,
    else the driver's cache, else computed now on the model as it starts."""
    objective = loop.objective
    if not getattr(objective, "needs_reference", False):
        return None
    table, source = None, "the checkpoint"
    if resume_dir and (resume_dir / REFERENCE_FILE).is_file():
        table = ReferenceTable.load(resume_dir / REFERENCE_FILE)
    if table is None and offered is not None and offered.precision == loop.precision:
        table, source = offered, "the cache"
    if table is not None:
        loop.emit({"type": "reference", "source": f"reused from {source}", "key": table.key,
                   "rows": len(table.train) + len(table.valid)})
    elif loop.start_step > 0 and objective.reference == "init":
        raise TuneforgeError(
            f"the checkpoint of step {loop.start_step} holds no reference log-probabilities, and the model the run "
            "started from is gone (it has trained since); start the run again, or set reference: base")
    else:
        table = compute_reference(loop, key or "uncached")
    attach(loop.data.train, table.train)
    attach(loop.data.valid, table.valid)
    return table


def compute_reference(loop: Any, key: str) -> ReferenceTable:
    from tuneforge.hardware import autocast_context
    from tuneforge.train.worker import gather_objects

    started = time.perf_counter()
    objective = loop.objective
    objective.eval()
    splits = {}
    with objective.reference_model(loop.reference_adapter):
        for name, examples in (("train", loop.data.train), ("valid", loop.data.valid)):
            mine = list(range(loop.rank, len(examples), loop.world_size))
            values = []
            for start in range(0, len(mine), loop.config.eval_batch_size_per_device):
                rows = [examples[i] for i in mine[start:start + loop.config.eval_batch_size_per_device]]
                with autocast_context(loop.precision, loop.device):
                    values.append(objective.reference_logps(loop.to_device(loop.collate(rows))).float().cpu().numpy())
            splits[name] = assemble(gather_objects((mine, values)), len(examples))
    objective.train()
    table = ReferenceTable(key, loop.precision, splits["train"], splits["valid"])
    loop.emit({"type": "reference", "source": "computed", "key": key, "precision": loop.precision,
               "train": table.train.tolist(),
               "valid": table.valid.tolist(), "rows": len(table.train) + len(table.valid),
               "seconds": round(time.perf_counter() - started, 2)})
    return table


def assemble(parts: list[tuple[list[int], list[np.ndarray]]], rows: int) -> np.ndarray:
    table = np.zeros((rows, 2), dtype=np.float32)
    for indices, values in parts:
        if indices:
            table[indices] = np.concatenate(values)
    return table


def attach(examples: list[Any], table: np.ndarray) -> None:
    if len(examples) != len(table):
        raise TuneforgeError(f"the reference log-probabilities cover {len(table)} rows, the data {len(examples)}: "
                             "the data changed since they were computed; start the run again")
    for example, (first, second) in zip(examples, table, strict=True):
        example.set_reference(float(first), float(second))
