"""What a run and its checkpoints say about themselves: the file names of the layout, CheckpointMeta
(tuneforge.json) and RunState (run.json), and reading JSON files back."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tuneforge.atomic import write_text
from tuneforge.errors import TuneforgeError

META_FILE = "tuneforge.json"
STATE_FILE = "training_state.pt"  # a checkpoint's optimizer, scheduler and RNG state (train/checkpoints.py)
RESULTS_FILE = "results.json"  # a run's, and an evaluation's
REFERENCE_FILE = "reference_logps.safetensors"  # a preference run's and its checkpoints' (train/reference.py)
REPORT_FILE = "report.html"  # a run's, and a search's
CARD_FILE = "README.md"  # a model folder's card, named as the Hugging Face Hub names it
# An lm-eval evaluation's results.json (tuneforge.benchmarks): `TASK/METRIC` scores, TASK/documents counts, and
# lm-eval's own output under this key
BENCHMARK_KEY = "lm_eval"
BENCHMARK_DOCUMENTS = "documents"
CHECKPOINTS_DIR = "checkpoints"
BEST_DIR = "best"
STEP_PREFIX = "step-"  # checkpoints/step-NNNNNN
RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train's record of registered checkpoints
DEFAULT_RUNS_DIR = Path("runs")  # output_dir's default: a bare run name is looked up here
MLFLOW_RUN_FILE = "mlflow_run.json"  # a run's or a search's MLflow run: store, experiment and run id
MLFLOW_STORE = "mlflow.db"  # the default MLflow store (SQLite) of an output_dir, beside its runs
MLFLOW_ARTIFACTS = "mlartifacts"  # beside the default store: the artifacts of its runs


class CheckpointError(TuneforgeError):
    """A path that is not a usable run or checkpoint."""


class CheckpointMeta(BaseModel):
    """What a checkpoint's `tuneforge.json` holds: enough to load, run, evaluate and export it without the data or
    the config it was trained from. Written by training (and by export for merged models), read everywhere."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=())  # older or newer tuneforge fields are skipped

    tuneforge_version: str = "unknown"
    task: str = "causal_lm"
    model_id: str
    model_source: str | None = None  # where the base weights were at training time
    lora: bool = False
    trust_remote_code: bool = False
    shape: str | None = None  # chat | prompt_completion | text | classification
    labels: list[str] = []
    context_length: int | None = None
    # causal LM
    stop_token_ids: list[int] | None = None
    system_prompt: str | None = None  # the system message every training row shared, if one
    answer_schema: dict[str, Any] | None = None  # the JSON Schema every training target satisfies (data.schema)
    # classification
    text_fields: list[str] | None = None
    label_field: str | None = None
    class_weights: list[float] | None = None
    # token classification
    tag_scheme: str | None = None  # IOB2 | IOBES
    tokens_field: str | None = None
    tags_field: str | None = None
    # the event that saved it
    step: int = 0
    epoch: float = 0.0
    metrics: dict[str, Any] = {}
    precision: str | None = None
    merged_from: str | None = None  # a merged export: the base model the adapter was merged into
    # Every other file of the checkpoint and its size, written last: a copy cut short (a kill while Ray uploads it)
    # is told from a whole one. None in checkpoints written before it existed, and in exports.
    files: dict[str, int] | None = None

    @classmethod
    def read(cls, checkpoint: str | Path) -> CheckpointMeta:
        path = Path(checkpoint) / META_FILE
        if not path.is_file():
            raise CheckpointError(f"{checkpoint}: not a tuneforge checkpoint (no {META_FILE})")
        try:
            return cls.model_validate_json(path.read_text(encoding="utf-8"))
        except (ValidationError, ValueError) as exc:
            raise CheckpointError(f"{path}: unreadable checkpoint metadata ({str(exc).splitlines()[0]})") from None

    def write(self, checkpoint: str | Path) -> None:
        write_text(Path(checkpoint) / META_FILE, self.model_dump_json(indent=2) + "\n")


class RunState(BaseModel):
    """run.json: where a run is in its life."""

    model_config = ConfigDict(extra="ignore")

    status: Literal["created", "running", "completed", "failed", "interrupted", "stopped", "unknown"] = "unknown"
    created: str | None = None
    started: str | None = None
    ended: str | None = None
    error: str | None = None
    resumed_from_step: int | None = None
    started_from: str | None = None  # a checkpoint of another lineage this run continued (a PBT donor)
    workers: int | None = None
    stopped_by: str | None = None
    stopped_at_step: int | None = None  # a graceful stop (SIGTERM): the step its last checkpoint holds
    startup: dict[str, float] | None = None  # seconds per phase before the first step (tuneforge.train.startup)
    # This invocation's worker groups: the first, then one per restart after a failure (max_failures), each with
    # the step it started from and its rank-0 worker's pid and node.
    attempts: list[dict[str, Any]] = Field(default_factory=list)
    driver: dict[str, Any] | None = None  # {node, pid, started} of the process that runs it
    # Preference runs: where this invocation's reference log-probabilities came from ("computed in N s", "reused
    # from the cache", "from the checkpoint"), and their key (train/reference.py).
    reference_logps: dict[str, Any] | None = None


def now() -> str:
    return datetime.now().isoformat(timespec="seconds")



def read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """A JSONL file's object rows ([] when it is missing); a line cut short by a crash is skipped."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows

__all__ = [
    "BENCHMARK_DOCUMENTS",
    "BENCHMARK_KEY",
    "BEST_DIR",
    "CARD_FILE",
    "CHECKPOINTS_DIR",
    "CheckpointError",
    "CheckpointMeta",
    "DEFAULT_RUNS_DIR",
    "META_FILE",
    "MLFLOW_ARTIFACTS",
    "MLFLOW_RUN_FILE",
    "MLFLOW_STORE",
    "RAY_SNAPSHOT",
    "REFERENCE_FILE",
    "REPORT_FILE",
    "RESULTS_FILE",
    "RunState",
    "STATE_FILE",
    "STEP_PREFIX",
    "now",
    "read_json",
    "read_jsonl",
]
