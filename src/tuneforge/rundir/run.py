"""A run directory (RunDir) and its checkpoints, exports and evaluations (EvalDir): every path and status change
of runs/<name>/ goes through here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tuneforge.atomic import write_json, write_jsonl, write_text
from tuneforge.rundir.meta import (
    BEST_DIR,
    CARD_FILE,
    CHECKPOINTS_DIR,
    DEFAULT_RUNS_DIR,
    META_FILE,
    MLFLOW_RUN_FILE,
    RAY_SNAPSHOT,
    REFERENCE_FILE,
    REPORT_FILE,
    RESULTS_FILE,
    STEP_PREFIX,
    CheckpointError,
    CheckpointMeta,
    RunState,
    now,
    read_json,
    read_jsonl,
)


class Folder:
    """A directory laid out here (a run's, an evaluation's, a search's): its path and name; the layout's paths are
    the subclass's properties."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

    @property
    def name(self) -> str:
        return self.path.name


class Entry:
    """A file or folder of a Folder, by name: `results_file = Entry(RESULTS_FILE)` reads as `folder.path / name`."""

    def __init__(self, name: str):
        self.name = name

    def __get__(self, folder: Folder | None, owner: type | None = None) -> Any:
        return self if folder is None else folder.path / self.name




class RunDir(Folder):
    """One run's directory. Paths are properties; changes are methods that write atomically."""

    @classmethod
    def locate(cls, path: str | Path) -> RunDir:
        return cls(locate(path))

    @classmethod
    def of_checkpoint(cls, checkpoint: str | Path) -> RunDir | None:
        """The run a checkpoint belongs to (best/ and checkpoints/step-N/ both live under it), if any."""
        checkpoint = Path(checkpoint)
        for candidate in (checkpoint, checkpoint.parent, checkpoint.parent.parent):
            if cls(candidate).is_run():
                return cls(candidate)
        return None

    @classmethod
    def holding(cls, checkpoint: str | Path) -> RunDir | None:
        """The run a checkpoint path names by its place in the layout (RUN/best, RUN/checkpoints/step-N, RUN/step-N),
        read from the path alone: a checkpoint store under storage_path has no run files beside it."""
        checkpoint = Path(checkpoint)
        if checkpoint.parent.name == CHECKPOINTS_DIR:
            return cls(checkpoint.parent.parent)
        if checkpoint.name == BEST_DIR or checkpoint.name.startswith(STEP_PREFIX):
            return cls(checkpoint.parent)
        return None

    @classmethod
    def of_file(cls, path: str | Path) -> RunDir | None:
        """The run a file in one of its folders belongs to (RUN/export/model-q8_0.gguf), if that is a run that
        started (it has run.json)."""
        run = cls(Path(path).parent.parent)
        return run if run.state_file.is_file() else None

    # --- paths ---------------------------------------------------------------------------------------------------
    config_file = Entry("config.yaml")
    plan_file = Entry("plan.json")
    lr_plot = Entry("lr_schedule.png")
    state_file = Entry("run.json")
    samples_file = Entry("validation_samples.jsonl")
    metrics_file = Entry("metrics.jsonl")
    # Each validation event's generated answers (eval_generate), one JSON row per answer.
    generation_samples_file = Entry("eval_samples.jsonl")
    reference_file = Entry(REFERENCE_FILE)  # a preference run's reference log-probabilities (train/reference.py)
    tensorboard_dir = Entry("tensorboard")
    checkpoints_dir = Entry(CHECKPOINTS_DIR)
    best_dir = Entry(BEST_DIR)
    results_file = Entry(RESULTS_FILE)
    report_file = Entry(REPORT_FILE)
    export_dir = Entry("export")
    evals_dir = Entry("eval")
    mlflow_file = Entry(MLFLOW_RUN_FILE)  # with trackers: [..., mlflow]: the MLflow run --resume and eval continue

    @property
    def export_report_file(self) -> Path:
        return export_report_file(self.export_dir)

    def eval_dir(self, name: str) -> Path:
        return self.evals_dir / name

    def evals(self) -> list[EvalDir]:
        """The run's evaluations (`tuneforge eval` without --output), by name."""
        if not self.evals_dir.is_dir():
            return []
        return [EvalDir(path) for path in sorted(self.evals_dir.iterdir()) if path.is_dir()]

    def is_run(self) -> bool:
        return self.config_file.is_file()

    # --- what it says --------------------------------------------------------------------------------------------
    @property
    def task(self) -> str:
        """The run's task, from its results or its config (a run that never finished has no results)."""
        task = read_json(self.results_file).get("task")
        if task:
            return task
        import yaml

        try:
            return (yaml.safe_load(self.config_file.read_text(encoding="utf-8")) or {}).get("task") or "causal_lm"
        except (OSError, yaml.YAMLError):
            return "unknown"

    def config(self) -> dict[str, Any]:
        """config.yaml as saved, every key ({} when it is missing or unreadable)."""
        import yaml

        try:
            return yaml.safe_load(self.config_file.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            return {}

    def state(self) -> RunState:
        return RunState.model_validate(read_json(self.state_file))

    def results(self) -> dict[str, Any]:
        return read_json(self.results_file)

    def metrics(self) -> list[dict[str, Any]]:
        """metrics.jsonl's rows (a line cut short by a crash is skipped)."""
        return read_jsonl(self.metrics_file)

    def validation_samples(self) -> list[dict[str, Any]]:
        if not self.samples_file.is_file():
            raise CheckpointError(f"{self.path}: no {self.samples_file.name} (a run from an older tuneforge); "
                                  "train it again to export with fidelity checks")
        return [json.loads(line) for line in self.samples_file.read_text(encoding="utf-8").splitlines() if line.strip()]

    # --- changes -------------------------------------------------------------------------------------------------
    def write_files(self, *, config_yaml: str, plan: dict[str, Any], samples: list[dict[str, Any]]) -> None:
        """The files a run starts with (the plot of the schedule is written by the caller into lr_plot)."""
        write_text(self.config_file, config_yaml)
        write_json(self.plan_file, plan)
        write_jsonl(self.samples_file, samples)
        self.set_state(RunState(status="created", created=now()))

    def set_state(self, state: RunState) -> None:
        write_json(self.state_file, state.model_dump(exclude_none=True))

    def update_state(self, **changes: Any) -> RunState:
        state = self.state().model_copy(update=changes)
        self.set_state(state)
        return state

    def mark_stopped(self, by: str) -> None:
        """A run whose process was ended from outside before its last step (a search scheduler stopping a trial)."""
        if self.state_file.is_file() and self.state().status != "completed":
            self.update_state(status="stopped", error=None, stopped_by=by)

    def write_results(self, results: dict[str, Any]) -> None:
        write_json(self.results_file, results)

    def drop_lineage(self) -> None:
        """Forget checkpoints and results (a run taking over another checkpoint's lineage, as a PBT trial does)."""
        import shutil

        for stale in (self.checkpoints_dir, self.best_dir):
            shutil.rmtree(stale, ignore_errors=True)
        self.results_file.unlink(missing_ok=True)

    # --- checkpoints ---------------------------------------------------------------------------------------------
    def checkpoints(self) -> list[Path]:
        """Registered checkpoints, oldest first. Ray Train's snapshot is the authority: a directory a crash left
        behind before Ray registered it is not a checkpoint of the run."""
        folder = self.checkpoints_dir
        if not folder.is_dir():
            return []
        registered, _ = read_snapshot(folder)
        candidates = [folder / name for name in registered] if registered is not None else folder.iterdir()
        return sorted(p for p in candidates if p.is_dir() and is_whole_checkpoint(p))

    def latest_checkpoint(self) -> Path | None:
        """The checkpoint a resumed run continues from."""
        _, latest = read_snapshot(self.checkpoints_dir)
        if latest and is_whole_checkpoint(self.checkpoints_dir / latest):
            return self.checkpoints_dir / latest
        found = self.checkpoints()
        return found[-1] if found else None

    def latest_step(self) -> int:
        """The step training continues from: the latest registered checkpoint's, or 0."""
        latest = self.latest_checkpoint()
        return CheckpointMeta.read(latest).step if latest else 0

    def checkpoint(self) -> Path:
        """The checkpoint to use from this run: best/, else the latest."""
        if is_checkpoint(self.best_dir):
            return self.best_dir
        latest = self.latest_checkpoint()
        if latest is not None:
            return latest
        if not self.is_run():
            raise CheckpointError(f"{self.path}: not a tuneforge run or checkpoint directory (no config.yaml, no "
                                  f"{META_FILE}); `tuneforge runs list` shows the runs")
        raise CheckpointError(f"{self.path}: this run has no checkpoint yet (nothing under {self.checkpoints_dir})")



def is_checkpoint(path: Path) -> bool:
    return (path / META_FILE).is_file()


def is_whole_checkpoint(path: Path) -> bool:
    """A checkpoint with every file its metadata lists, at the listed size."""
    try:
        listed = CheckpointMeta.read(path).files
    except CheckpointError:
        return False
    return all((path / name).is_file() and (path / name).stat().st_size == size for name, size in (listed or {}).items())


def checkpoint_name(step: int) -> str:
    """The directory name of the checkpoint saved at `step` (checkpoints/step-NNNNNN)."""
    return f"{STEP_PREFIX}{step:06d}"


def checkpoint_store(run_path: Path, storage_path: str | None) -> str:
    """Where Ray Train keeps a run's checkpoints: the run's own checkpoints/ folder, or
    <storage_path>/<run name>/checkpoints (a shared directory or a pyarrow URI such as s3://bucket/prefix)."""
    if not storage_path:
        return str(RunDir(run_path.resolve()).checkpoints_dir)
    base = storage_path.rstrip("/") if "://" in storage_path else str(Path(storage_path).resolve())
    return f"{base}/{run_path.name}/{CHECKPOINTS_DIR}"


def stored_latest_step(store: str) -> int:
    """The step of the latest checkpoint Ray registered in a store that may be remote (0 when there is none)."""
    from pyarrow import fs

    try:
        filesystem, base = fs.FileSystem.from_uri(store) if "://" in store else (fs.LocalFileSystem(), store)
        with filesystem.open_input_stream(f"{base}/{RAY_SNAPSHOT}") as stream:
            snapshot = json.loads(stream.read())
        latest = snapshot["latest_checkpoint_result"]["checkpoint_dir_name"]
        with filesystem.open_input_stream(f"{base}/{latest}/{META_FILE}") as stream:
            return CheckpointMeta.model_validate_json(stream.read()).step
    except (OSError, ValueError, KeyError, TypeError, ValidationError):
        return 0


def snapshot_is_damaged(folder: Path) -> bool:
    """Ray Train's snapshot is there but unreadable: a kill while Ray rewrote it (Ray writes it in place)."""
    return (folder / RAY_SNAPSHOT).is_file() and read_snapshot(folder) == (None, None)


def locate(path: str | Path) -> Path:
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
    found = locate(path)
    return found if is_checkpoint(found) else RunDir(found).checkpoint()


def read_snapshot(folder: Path) -> tuple[list[str] | None, str | None]:
    """(registered checkpoint names, latest name) from Ray Train's checkpoint-manager snapshot, if readable."""
    try:
        snapshot = json.loads((folder / RAY_SNAPSHOT).read_text(encoding="utf-8"))
        names = [entry["checkpoint_dir_name"] for entry in snapshot["checkpoint_results"]]
        latest = (snapshot.get("latest_checkpoint_result") or {}).get("checkpoint_dir_name")
        return names, latest
    except (OSError, ValueError, KeyError, TypeError):
        return None, None


def export_report_file(out: Path) -> Path:
    """The report of what an export folder holds (RUN/export, or `tuneforge export --output`)."""
    return Path(out) / "export_report.json"


def card_file(folder: Path) -> Path:
    """The model card of a model folder (best/, an export folder, merged weights)."""
    return Path(folder) / CARD_FILE


def record_export(out: Path, artifact: str, report: dict[str, Any]) -> None:
    """Add one artifact's report to `out/export_report.json` (other artifacts' reports are kept)."""
    path = export_report_file(out)
    existing = read_json(path)
    existing[artifact] = report
    write_json(path, existing)


# ----------------------------------------------------------------------------------------------------------------
# An evaluation's folder and a search's experiment directory
# ----------------------------------------------------------------------------------------------------------------


class EvalDir(Folder):
    """One evaluation's folder (RUN/eval/<name>/, or `tuneforge eval --output`): results.json, then per task
    confusion_matrix.png (classifiers, taggers) or samples.jsonl (causal LMs; base_samples.jsonl with
    --compare-base)."""

    results_file = Entry(RESULTS_FILE)
    confusion_plot = Entry("confusion_matrix.png")
    samples_file = Entry("samples.jsonl")
    base_samples_file = Entry("base_samples.jsonl")

    def results(self) -> dict[str, Any]:
        return read_json(self.results_file)

__all__ = [
    "Entry",
    "EvalDir",
    "Folder",
    "RunDir",
    "card_file",
    "checkpoint_name",
    "checkpoint_store",
    "export_report_file",
    "is_checkpoint",
    "is_whole_checkpoint",
    "locate",
    "read_snapshot",
    "record_export",
    "resolve_checkpoint",
    "snapshot_is_damaged",
    "stored_latest_step",
]
