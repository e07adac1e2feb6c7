"""A search's experiment directory (ExperimentDir) and the listing of runs and searches (`tuneforge runs`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.errors import TuneforgeError
from tuneforge.rundir.meta import MLFLOW_ARTIFACTS, MLFLOW_RUN_FILE, MLFLOW_STORE, REPORT_FILE, read_json
from tuneforge.rundir.run import Entry, Folder, RunDir


class ExperimentDir(Folder):
    """One search's directory (`tuneforge tune`): its own files, and one run directory per trial (`trial_<id>`,
    Tune's trial directory too). Ray Tune keeps its experiment state beside them."""

    @classmethod
    def of_trial(cls, run_dir: str | Path) -> ExperimentDir | None:
        """The search a run directory is a trial of, if it is one."""
        search = cls(Path(run_dir).parent)
        return search if search.is_experiment() else None

    # --- paths ---------------------------------------------------------------------------------------------------
    # The search's config, search_space and tune blocks included: what --resume reloads.
    config_file = Entry("tune_config.yaml")
    search_file = Entry("search.json")  # search.json: metric, mode, and what --auto built.
    trials_file = Entry("trials.csv")
    best_run_file = Entry("best_run.json")
    objective_plot = Entry("objective_by_trial.png")
    report_file = Entry(REPORT_FILE)
    mlflow_file = Entry(MLFLOW_RUN_FILE)  # the search's parent MLflow run, which each trial's run nests under

    def trial(self, run_id: str) -> RunDir:
        """A trial's run directory, by its run id (its directory name)."""
        return RunDir(self.path / run_id)

    def is_experiment(self) -> bool:
        return self.config_file.is_file()

    # --- what it says --------------------------------------------------------------------------------------------
    def trial_runs(self) -> list[RunDir]:
        """The trials' run directories, by name (a trial whose run has no config.yaml yet is left out)."""
        if not self.path.is_dir():
            return []
        return [run for run in map(RunDir, sorted(self.path.iterdir())) if run.is_run()]

    def search(self) -> dict[str, Any]:
        """search.json ({} when it is missing or unreadable)."""
        return read_json(self.search_file)

    def best_run(self) -> dict[str, Any]:
        """best_run.json ({} until the search has finished, or when it is unreadable)."""
        return read_json(self.best_run_file)


# ----------------------------------------------------------------------------------------------------------------
# Listing what is under an output directory
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class RunEntry:
    name: str
    kind: str  # run | search
    status: str
    task: str
    best: str
    path: Path


def describe_run(run: RunDir) -> RunEntry:
    results = run.results()
    best = ""
    if results:
        metric = results.get("best_metric", "eval_loss")
        value = (results.get("best_metrics") or {}).get(metric)
        best = f"{metric} {value:.4f}" if isinstance(value, (int, float)) else ""
    return RunEntry(run.name, "run", run.state().status, run.task, best, run.path)


def describe_search(search: ExperimentDir) -> RunEntry:
    best = search.best_run()
    trials = len(search.trial_runs())
    shown = f"{best['metric']} {best['objective']:.4f} ({best['run_id']})" if best else ""
    status = f"done, {trials} trials" if best else f"incomplete, {trials} trials"
    return RunEntry(search.name, "search", status, "", shown, search.path)


def mlflow_store(output_dir: str | Path) -> Path:
    """The SQLite file of an output_dir's default MLflow store (absolute: trials and resumes may run elsewhere)."""
    return Path(output_dir).expanduser().resolve() / MLFLOW_STORE


def mlflow_artifacts(store: Path) -> Path:
    """Where the runs of a local MLflow store keep their artifacts: beside it (MLflow's own default is ./mlruns,
    wherever the process happens to run)."""
    return store.parent / MLFLOW_ARTIFACTS


def list_runs(directory: str | Path) -> list[RunEntry]:
    """Every run and search directly under `directory` (an output_dir)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise TuneforgeError(f"{directory}: no such directory")
    entries = []
    for child in sorted(directory.iterdir()):
        run, search = RunDir(child), ExperimentDir(child)
        if search.is_experiment():
            entries.append(describe_search(search))
        elif run.is_run() and run.state_file.is_file():
            entries.append(describe_run(run))
    return entries

__all__ = [
    "ExperimentDir",
    "RunEntry",
    "describe_run",
    "describe_search",
    "list_runs",
    "mlflow_artifacts",
    "mlflow_store",
]
