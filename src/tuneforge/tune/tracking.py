"""A search's MLflow run (`trackers: [..., mlflow]`): the parent of its trials' runs, which nest under it (each
trial's run finds it through the experiment directory, train/tracking.py). It holds the search's config as params,
then the best trial's objective and the search's files."""

from __future__ import annotations

import contextlib
import time
from typing import Any, Iterator

from tuneforge.config import TrainConfig, tracking_keys
from tuneforge.errors import TuneforgeError
from tuneforge.rundir import ExperimentDir


class SearchTracking:
    """What the search tells its MLflow run while it runs: the best trial, once the search is summarized."""

    def __init__(self, mlflow: Any, experiment: ExperimentDir):
        self.mlflow, self.experiment = mlflow, experiment
        self.best: dict[str, Any] | None = None

    def finish(self, status: str) -> None:
        if self.best:
            self.mlflow.log_metrics([(f"best/{self.best['metric']}", float(self.best["objective"]),
                                      int(1000 * time.time()), 0)])
            self.mlflow.set_tags({"best_trial": self.best["run_id"]})
        files = self.experiment
        self.mlflow.log_artifacts([files.config_file, files.search_file, files.trials_file, files.best_run_file,
                                   files.objective_plot])
        self.mlflow.end(status)


@contextlib.contextmanager
def search_run(experiment: ExperimentDir, config: TrainConfig) -> Iterator[SearchTracking | None]:
    """Around the trials: the search's MLflow run, opened before the first trial starts (a resumed search reopens
    its own) and ended with the search. None without MLflow."""
    if "mlflow" not in config.trackers:
        yield None
        return
    tracking = SearchTracking(open_search_run(experiment, config), experiment)
    try:
        yield tracking
    except BaseException as exc:
        with contextlib.suppress(TuneforgeError):  # the search's own error is the one to show
            tracking.finish("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    tracking.finish("FINISHED")


def open_search_run(experiment: ExperimentDir, config: TrainConfig) -> Any:
    from tuneforge.observe.mlflow_runs import open_run, run_tags

    keys = tracking_keys(config)
    mlflow = open_run(experiment.mlflow_file, keys["mlflow_tracking_uri"], keys["mlflow_experiment"], experiment.name,
                      run_tags(config.task, config.model_id, experiment.path))
    mlflow.log_config(experiment.config_file)
    return mlflow
