"""What a search leaves behind, read back through Ray's public ResultGrid and each trial's own run directory:
trials.csv, best_run.json (HF BestRun's shape: run_id, objective, hyperparameters) and objective_by_trial.png."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from tuneforge.atomic import write_json, write_text
from tuneforge.config import TrainConfig, load_config
from tuneforge.errors import TuneforgeError
from tuneforge.metrics import Mode, better, objective_value
from tuneforge.rundir import CheckpointMeta, ExperimentDir, RunDir, locate
from tuneforge.tune.space import dotted

BEST_RUN_KEYS = frozenset({"run_id", "objective", "metric", "mode", "hyperparameters", "checkpoint"})


@dataclass
class SearchResult:
    experiment_dir: Path
    best: dict[str, Any]
    trials: list[dict[str, Any]]


def summarize(experiment_dir: Path, grid: Iterable[Any], metric: str, mode: Mode, *,
              budget_spent: bool = False) -> SearchResult:
    """trials.csv, best_run.json and the plot from Tune's results (`grid`: a ResultGrid, or any Results). An
    interrupted search writes trials.csv, then says how to continue it."""
    experiment = ExperimentDir(experiment_dir)
    trials = [trial_row(experiment_dir, result, metric, mode, budget_spent) for result in grid]
    write_trials_csv(experiment.trials_file, trials)
    unfinished = [t for t in trials if t["status"] == "interrupted"]
    if unfinished:
        raise TuneforgeError(f"search interrupted with {len(unfinished)} of {len(trials)} trial(s) unfinished; "
                             f"continue it with: tuneforge tune --resume {experiment_dir}")
    scored = [(t["best_objective"], t) for t in trials if t["best_objective"] is not None]
    if not scored:
        raise TuneforgeError(f"no trial of {experiment_dir} reported a result; see each trial's run.json")
    best = best_scored(scored, mode)[1]
    checkpoint = best_kept_checkpoint(Path(best["run_dir"]), metric, mode)
    best_run = {"run_id": best["run_id"], "objective": best["best_objective"], "metric": metric, "mode": mode,
                "hyperparameters": {k.removeprefix("param."): v for k, v in best.items() if k.startswith("param.")},
                "checkpoint": str(checkpoint) if checkpoint else None}
    write_json(experiment.best_run_file, best_run)
    plot_objective(experiment.objective_plot, trials, metric)
    return SearchResult(experiment_dir, best_run, trials)


def trial_row(experiment_dir: Path, result: Any, metric: str, mode: Mode, budget_spent: bool) -> dict[str, Any]:
    """One trials.csv row: a Tune Result (status, params, error) joined with its run's own metrics.jsonl."""
    run = ExperimentDir(experiment_dir).trial(Path(result.path).name)  # Tune's trial directory is the run directory
    evals = scored_evals(run, metric)
    best_value, best_row = best_scored(evals, mode) if evals else (None, {})
    final_value, final_row = evals[-1] if evals else (None, {})
    return {
        "run_id": run.name,
        "status": trial_status(result, run, budget_spent),
        "iterations": len(evals),
        "best_objective": best_value,
        "final_objective": final_value,
        **{f"param.{k}": v for k, v in dotted(result.config).items()},
        **metric_columns("best", best_row),
        **metric_columns("final", final_row),
        "run_dir": str(run.path),
        "error": str(result.error).splitlines()[0] if result.error else "",
    }


def trial_status(result: Any, run: RunDir, budget_spent: bool) -> str:
    """done / stopped early / error / interrupted. Tune marks a result `done` when it ended the trial (the function
    returned, or the scheduler stopped it); a trial without it, and without an error, was cut short by an
    interrupted search, unless the search's time budget ran out, which stops every trial for good."""
    if result.error:
        return "error"
    ended_by_tune = bool((result.metrics or {}).get("done"))
    if not ended_by_tune and not budget_spent:
        return "interrupted"
    if run.state().status == "completed":
        return "done"
    run.mark_stopped(by="scheduler" if ended_by_tune else "time_budget_s")  # its process was ended mid-run
    return "stopped early"


def scored_evals(run: RunDir, metric: str) -> list[tuple[float, dict[str, Any]]]:
    """(objective, metrics) at each validation event of a trial's run, from its own metrics.jsonl."""
    evals = [row for row in run.metrics() if row.get("type") == "eval"]
    return [(value, row) for row in evals if (value := objective_value(row, metric)) is not None]


def metric_columns(prefix: str, row: dict[str, Any]) -> dict[str, Any]:
    """trials.csv columns for the validation metrics of one event: `best.eval_f1`, `final.eval_loss`, ..."""
    return {f"{prefix}.{key}": value for key, value in row.items()
            if (key.startswith("eval_") and key != "eval_seconds") or key == "step"}


def best_kept_checkpoint(run_dir: Path, metric: str, mode: Mode) -> Path | None:
    """The trial's kept checkpoint that scores best on the search metric. A trial the scheduler stopped never
    wrote `best/`, and a finished trial's `best/` follows its own `best_metric`, which may not be the search's."""
    run = RunDir(run_dir)
    scored = []
    for path in run.checkpoints():
        value = objective_value(CheckpointMeta.read(path).metrics, metric)
        if value is not None:
            scored.append((value, path))
    if not scored:
        return run.best_dir if run.best_dir.is_dir() else None
    return best_scored(scored, mode)[1]


def best_scored(scored: list[tuple[float, Any]], mode: Mode) -> tuple[float, Any]:
    """The best (score, item) of a run's evals, of trials, or of checkpoints. Not Ray's `ResultGrid.get_best_result`:
    the scores are the runs' own metrics.jsonl and checkpoint metadata, which hold the final eval even when Tune never
    got it (TuneReporter reports it only once best/ is written), and `summarize` ranks any Results, not only a
    ResultGrid. As there (filter_nan_and_inf), a NaN or infinite score (a diverged run) never beats a finite one, and
    ties go to the first."""
    finite = [item for item in scored if math.isfinite(item[0])]
    return better(mode)(finite or scored, key=lambda item: item[0])


def write_trials_csv(path: Path, trials: list[dict[str, Any]]) -> None:
    columns: list[str] = []
    for trial in trials:
        columns.extend(key for key in trial if key not in columns)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(trials)
    write_text(path, buffer.getvalue())


def plot_objective(path: Path, trials: list[dict[str, Any]], metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tuneforge.atomic import atomic_path

    names = [t["run_id"].removeprefix("trial_") for t in trials]
    values = [t["best_objective"] if t["best_objective"] is not None else float("nan") for t in trials]
    colours = ["tab:green" if t["status"] == "done" else "tab:orange" if t["status"] == "stopped early" else "tab:red"
               for t in trials]
    figure, axes = plt.subplots(figsize=(max(5, 0.6 * len(trials) + 2), 3.4), dpi=110)
    axes.bar(range(len(trials)), values, color=colours)
    axes.set_xticks(range(len(trials)), names, rotation=45, ha="right", fontsize=7)
    axes.set_ylabel(f"best {metric}")
    axes.set_title("objective by trial (green: done, orange: stopped early, red: error)", fontsize=9)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)


# ----------------------------------------------------------------------------------------------------------------
# Reading an experiment back (tuneforge tune --resume, tuneforge runs best)
# ----------------------------------------------------------------------------------------------------------------


def load_experiment_config(experiment_dir: Path) -> TrainConfig:
    saved = ExperimentDir(locate(experiment_dir))
    if not saved.is_experiment():
        raise TuneforgeError(f"{experiment_dir}: not a tuneforge experiment (no {saved.config_file.name})")
    return load_config(saved.config_file)


def read_best_run(experiment_dir: Path) -> dict[str, Any]:
    directory = locate(experiment_dir)
    path = ExperimentDir(directory).best_run_file
    if not path.is_file():
        raise TuneforgeError(missing_best_run(directory))
    rewrite = f"write it again with tuneforge tune --resume {directory}"
    try:
        best = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        raise TuneforgeError(f"{path}: not valid JSON, probably cut short; {rewrite}") from None
    if not isinstance(best, dict) or not BEST_RUN_KEYS <= best.keys():
        raise TuneforgeError(f"{path}: incomplete, it needs {', '.join(sorted(BEST_RUN_KEYS))}; {rewrite}")
    return best


def missing_best_run(directory: Path) -> str:
    if ExperimentDir(directory).is_experiment():
        return (f"{directory}: no best_run.json (the search has not finished; resume it with "
                f"tuneforge tune --resume {directory})")
    if RunDir(directory).is_run():
        return (f"{directory}: a training run, not a search; its best checkpoint is {RunDir(directory).best_dir} "
                "(tuneforge runs list shows the searches)")
    return f"{directory}: not a tuneforge search (no tune_config.yaml); tuneforge runs list shows the searches"
