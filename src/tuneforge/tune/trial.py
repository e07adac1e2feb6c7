"""One trial: a Tune function that trains a full tuneforge run in `<experiment>/trial_<id>/`, through the same
training loop as `tuneforge train`, and reports each validation event (after its checkpoint is on disk) to Tune."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneforge.config import TrainConfig
from tuneforge.metrics import default_objective
from tuneforge.rundir import ExperimentDir, RunDir
from tuneforge.tune.resources import ResourcePlan
from tuneforge.tune.space import trial_params, with_params


class TuneReporter:
    """Inside a trial: turns each persisted checkpoint event into a Tune result (with the objective), and for PBT
    into a Tune checkpoint that other trials can take over."""

    def __init__(self, with_checkpoints: bool):
        self.with_checkpoints = with_checkpoints
        self.total_steps: int | None = None
        self.final: dict[str, Any] | None = None

    def phase(self, message: str) -> None:
        pass

    def note(self, message: str) -> None:
        pass

    def event(self, event: dict[str, Any]) -> None:
        if event.get("type") == "start":
            self.total_steps = event["total_steps"]
        elif event.get("type") == "checkpoint":
            if self.total_steps is not None and event["step"] >= self.total_steps:
                # A scheduler may stop a trial at its last result. Hold that result back until the run has
                # written best/ and results.json, so a trial that trained to the end is never left half-done.
                self.final = event
            else:
                self.report(event)

    def flush(self) -> None:
        if self.final is not None:
            self.report(self.final)
            self.final = None

    def report(self, event: dict[str, Any]) -> None:
        from ray import tune

        metrics = {k: v for k, v in event.items() if k not in ("type", "time") and isinstance(v, (int, float, str))}
        if "eval_loss" in metrics:
            metrics["objective"] = default_objective(metrics)
        checkpoint = tune.Checkpoint.from_directory(event["path"]) if self.with_checkpoints else None
        tune.report(metrics, checkpoint=checkpoint)


def train_trial(params: dict[str, Any], *, base: dict[str, Any], experiment_dir: str, plan: ResourcePlan,
                scheduler: str, derived: dict[str, float | None] | None = None) -> None:
    """One trial: a full tuneforge run in experiment_dir/trial_<id> with the trial's (dotted) params set."""
    from ray import tune

    from tuneforge.train import resume, train

    trial_dir = ExperimentDir(experiment_dir).trial(trial_dirname(tune.get_context().get_trial_id())).path
    config = TrainConfig.model_validate(with_params(base, trial_params(params, **(derived or {}))))
    reporter = TuneReporter(with_checkpoints=scheduler == "pbt")
    donor = tune.get_checkpoint()
    if donor is not None:  # PBT: continue from another trial's checkpoint with this trial's (mutated) params
        import shutil
        import tempfile

        with donor.as_directory() as path, tempfile.TemporaryDirectory(prefix="tuneforge-donor-") as copy_dir:
            # A private copy: Tune may prune the donor's checkpoints while this trial starts from them.
            start = Path(shutil.copytree(path, Path(copy_dir) / "checkpoint"))
            train(config, run_dir=trial_dir, reporter=reporter, init_checkpoint=start,
                  cpus_per_worker=plan.cpus_per_worker)
    elif RunDir(trial_dir).is_run():  # an interrupted search being resumed
        resume(trial_dir, reporter=reporter, cpus_per_worker=plan.cpus_per_worker)
    else:
        train(config, run_dir=trial_dir, reporter=reporter, cpus_per_worker=plan.cpus_per_worker)
    reporter.flush()


def trial_dirname(trial_id: str) -> str:
    return f"trial_{trial_id}"


def trial_name(trial: Any) -> str:
    """Tune's name and directory for a trial: the same as its run directory, so the two never disagree."""
    return trial_dirname(trial.trial_id)
