"""MLflow beside TensorBoard (`trackers: [tensorboard, mlflow]`), written with `MlflowClient` alone.

Ray's own MLflow integrations are not used: `MLflowLoggerCallback` ignores `tracking_uri` (ray #36257) and
`setup_mlflow` records no runs (ray #45456). The process that writes a run's metrics.jsonl (the training driver, or
a search trial's function) logs to MLflow too; the Ray Train workers never do. Where a run's MLflow run is, is kept
in its directory (`mlflow_run.json`), so that `--resume` and `tuneforge eval` add to the same run."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

from tuneforge.atomic import write_json
from tuneforge.errors import ConfigError, TuneforgeError
from tuneforge.rundir import mlflow_artifacts, read_json

INSTALL = "pip install 'tuneforge[mlflow]'"
PARAM_VALUE_LIMIT = 6000  # MLflow's longest param value
PARAMS_PER_BATCH, METRICS_PER_BATCH = 100, 1000  # MLflow's log_batch limits
REACH_TIMEOUT_S = 3.0
SQLITE = "sqlite:///"


def installed() -> bool:
    return importlib.util.find_spec("mlflow") is not None


def check_tracking(uri: str, trackers_at: str, uri_at: str) -> None:
    """Before anything starts: the package is there, and a tracking server answers (any HTTP reply will do:
    an auth error still means it is there). `*_at`: where the config set trackers and the URI."""
    if not installed():
        raise ConfigError(f"{trackers_at}: trackers names mlflow, but the mlflow package is not installed; {INSTALL}")
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=REACH_TIMEOUT_S):
            pass
    except urllib.error.HTTPError:
        pass
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise ConfigError(f"{uri_at}: the MLflow tracking server {uri} does not answer ({reason}); start it, or fix "
                          "mlflow_tracking_uri") from None


def ui_command(uri: str) -> str:
    """What opens MLflow's UI on a store: a server is its own UI."""
    if uri.startswith(("http://", "https://")):
        return uri
    return f"mlflow ui --backend-store-uri {uri}"


def flat_params(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A config as MLflow params: nested keys dotted, strings as they are, everything else as JSON."""
    params: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            params.update(flat_params(value, f"{name}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value)
            params[name] = text if len(text) <= PARAM_VALUE_LIMIT else text[: PARAM_VALUE_LIMIT - 1] + "…"
    return params


@dataclass
class RunRecord:
    """Where a run's MLflow run is: what `mlflow_run.json` holds."""

    tracking_uri: str
    experiment_id: str
    run_id: str

    @classmethod
    def read(cls, path: Path) -> RunRecord | None:
        record = read_json(path)
        return cls(**record) if set(record) == {"tracking_uri", "experiment_id", "run_id"} else None

    def write(self, path: Path) -> None:
        write_json(path, asdict(self))


class MlflowRun:
    """One MLflow run, written in batches. Errors from MLflow become one-line TuneforgeErrors."""

    def __init__(self, client: Any, record: RunRecord):
        self.client, self.record = client, record

    @property
    def run_id(self) -> str:
        return self.record.run_id

    @classmethod
    def start(cls, uri: str, experiment: str, name: str, tags: dict[str, str],
              parent: RunRecord | None = None) -> MlflowRun:
        client = make_client(uri)
        with mlflow_errors(uri):
            found = client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found else client.create_experiment(
                experiment, artifact_location=local_artifacts(uri))
            if parent is not None:
                tags = {**tags, "mlflow.parentRunId": parent.run_id}
            run = client.create_run(experiment_id, tags=tags, run_name=name)
        return cls(client, RunRecord(uri, experiment_id, run.info.run_id))

    @classmethod
    def find(cls, record: RunRecord) -> MlflowRun | None:
        """The run a record names; None when its store no longer has it (deleted, or another store)."""
        from mlflow.exceptions import MlflowException

        client = make_client(record.tracking_uri)
        with mlflow_errors(record.tracking_uri):
            try:
                run = client.get_run(record.run_id)
            except MlflowException as exc:
                if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                    return None
                raise
        return cls(client, record) if run.info.lifecycle_stage != "deleted" else None

    @classmethod
    def reopen(cls, record: RunRecord) -> MlflowRun | None:
        """The run a record names, marked running again."""
        mlflow = cls.find(record)
        if mlflow is not None:
            with mlflow_errors(record.tracking_uri):
                mlflow.client.update_run(record.run_id, status="RUNNING")
        return mlflow

    def logged_params(self) -> dict[str, str]:
        with mlflow_errors(self.record.tracking_uri):
            return dict(self.client.get_run(self.run_id).data.params)

    def last_steps(self) -> dict[str, int]:
        """The last step logged of each metric."""
        with mlflow_errors(self.record.tracking_uri):
            keys = self.client.get_run(self.run_id).data.metrics
            return {key: max(m.step for m in self.client.get_metric_history(self.run_id, key)) for key in keys}

    def log_config(self, path: Path) -> None:
        """A YAML config file (config.yaml, tune_config.yaml) as params."""
        import yaml

        self.log_params(flat_params(yaml.safe_load(path.read_text(encoding="utf-8"))))

    def log_params(self, params: dict[str, str]) -> None:
        """MLflow refuses to change a logged param: those already logged are kept (a resumed run's overrides stay
        in its config.yaml)."""
        from mlflow.entities import Param

        new = [Param(key, value) for key, value in params.items() if key not in self.logged_params()]
        with mlflow_errors(self.record.tracking_uri):
            for start in range(0, len(new), PARAMS_PER_BATCH):
                self.client.log_batch(self.run_id, params=new[start : start + PARAMS_PER_BATCH])

    def log_metrics(self, rows: list[tuple[str, float, int, int]]) -> None:
        """(name, value, timestamp in ms, step) rows, in as few calls as MLflow allows."""
        from mlflow.entities import Metric

        metrics = [Metric(name, value, timestamp, step) for name, value, timestamp, step in rows]
        with mlflow_errors(self.record.tracking_uri):
            for start in range(0, len(metrics), METRICS_PER_BATCH):
                self.client.log_batch(self.run_id, metrics=metrics[start : start + METRICS_PER_BATCH])

    def log_artifacts(self, paths: list[Path], folder: str | None = None) -> None:
        """Files and directories that exist (a directory goes under its own name)."""
        with mlflow_errors(self.record.tracking_uri):
            for path in paths:
                if path.is_dir():
                    self.client.log_artifacts(self.run_id, str(path), f"{folder}/{path.name}" if folder else path.name)
                elif path.is_file():
                    self.client.log_artifact(self.run_id, str(path), folder)

    def set_tags(self, tags: dict[str, str]) -> None:
        with mlflow_errors(self.record.tracking_uri):
            for key, value in tags.items():
                self.client.set_tag(self.run_id, key, value)

    def end(self, status: str) -> None:
        """FINISHED, FAILED or KILLED."""
        with mlflow_errors(self.record.tracking_uri):
            self.client.set_terminated(self.run_id, status)


def open_run(record_file: Path, uri: str, experiment: str, name: str, tags: dict[str, str],
             parent_file: Path | None = None) -> MlflowRun:
    """The MLflow run a run's or search's directory names in `record_file`, reopened; else a new one, then named
    there (nested under the run `parent_file` names, if it names one)."""
    record = RunRecord.read(record_file)
    mlflow = MlflowRun.reopen(record) if record else None
    if mlflow is None:
        parent = RunRecord.read(parent_file) if parent_file else None
        mlflow = MlflowRun.start(uri, experiment, name, tags, parent)
        mlflow.record.write(record_file)
    return mlflow


def run_tags(task: str, model_id: str, directory: Path) -> dict[str, str]:
    from tuneforge import __version__

    return {"task": task, "model": model_id, "tuneforge_version": __version__, "run_dir": str(directory.resolve())}


def make_client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    with mlflow_errors(uri):
        return MlflowClient(tracking_uri=uri)


def local_artifacts(uri: str) -> str | None:
    """A new experiment's artifact location: beside a SQLite store; a server chooses its own."""
    if not uri.startswith(SQLITE):
        return None
    return mlflow_artifacts(Path(uri.removeprefix(SQLITE))).as_uri()


@contextlib.contextmanager
def mlflow_errors(uri: str) -> Iterator[None]:
    """MLflow's exceptions (a refused request, a store that cannot be opened or reached) as one line naming the
    store; anything else is a bug and keeps its traceback."""
    try:
        yield
    except TuneforgeError:
        raise
    except Exception as exc:
        from mlflow.exceptions import MlflowException

        if not isinstance(exc, (MlflowException, OSError)) and not type(exc).__module__.startswith("sqlalchemy"):
            raise
        lines = str(getattr(exc, "message", None) or exc).strip().splitlines()
        raise TuneforgeError(f"MLflow at {uri}: {lines[0] if lines else type(exc).__name__}") from exc
