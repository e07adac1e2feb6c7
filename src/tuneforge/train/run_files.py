"""What a training run leaves in its directory around the Ray part: the directory chosen and laid out at the start
(config, plan with the data files' hashes, validation samples, LR plot: one rename), and at the end the best
checkpoint copied to best/, results.json written (a run is complete when it exists) and best/'s model card."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from tuneforge.atomic import atomic_dir
from tuneforge.card import CardFacts, write_card
from tuneforge.config import TrainConfig
from tuneforge.errors import ConfigError
from tuneforge.metrics import better, mean_throughput
from tuneforge.plan import plot_learning_rates
from tuneforge.rundir import RunDir
from tuneforge.train.preflight import PreparedRun


@dataclass
class RunResult:
    run_dir: Path
    best_checkpoint: Path | None
    best_metrics: dict[str, Any]
    final_metrics: dict[str, Any]
    results: dict[str, Any]
    report: Path | None = None  # the run's report.html, refreshed at the end


def choose_run_dir(config: TrainConfig, overwrite: bool) -> RunDir:
    base = Path(config.output_dir)
    if config.run_name:
        run_dir = base / config.run_name
        if run_dir.exists() and not overwrite:
            raise ConfigError(
                f"run directory {run_dir} already exists; continue it with --resume {run_dir}, "
                "replace it with --overwrite, or pick another run_name"
            )
        return RunDir(run_dir)
    run_dir = base / config.source_name
    if run_dir.exists() and not overwrite:
        run_dir = base / f"{config.source_name}-{datetime.now():%Y%m%d-%H%M%S}"
    return RunDir(run_dir)


def start_run_dir(run: RunDir, prepared: PreparedRun, *, continuing: bool = False) -> None:
    """Create the run directory with its config, plan, samples and schedule plot, all in one rename (an old run of
    the same name, with --overwrite, is replaced only now that the new one is known to be valid).

    `continuing` (a run taking over another checkpoint's lineage, as a PBT trial does) keeps the directory and
    its metrics history, and drops only what belonged to the abandoned lineage: its checkpoints and results."""
    if continuing and run.path.is_dir():
        run.drop_lineage()
        write_run_files(run, prepared)
        return
    with atomic_dir(run.path) as staged:
        write_run_files(RunDir(staged), prepared)


def write_run_files(run: RunDir, prepared: PreparedRun) -> None:
    data = {**data_summary(prepared.data), "files": data_files(prepared.config)}
    run.write_files(config_yaml=prepared.config.to_yaml(), plan={**prepared.plan.to_dict(), "data": data},
                    samples=prepared.samples)
    plot_learning_rates(prepared.config, prepared.plan, run.lr_plot)


def data_files(config: TrainConfig) -> dict[str, list[dict[str, Any]]]:
    """The files each split was read from, hashed as training starts: what the model card names."""
    from tuneforge.data.sources import file_digests

    paths = {"train": config.train_path, "valid": config.valid_path}
    return {split: file_digests(path, split) for split, path in paths.items() if path}


def data_summary(data: Any) -> dict[str, Any]:
    stats = {name: vars(value) for name, value in data.stats.items()}
    return {"shape": data.shape, "context_length": data.context_length, "stats": stats, "labels": data.labels,
            "notes": data.notes, "answer_schema": getattr(data, "answer_schema", None)}


def data_counts(data: Any) -> dict[str, Any]:
    """Rows training uses, and how many were truncated to context_length or dropped (no target tokens left)."""
    counts = {name: {"rows": s.rows, "truncated": s.truncated, "dropped": s.dropped} for name, s in data.stats.items()}
    return {**counts["train"], "valid": counts["valid"]}


def finalize(run: RunDir, prepared: PreparedRun, result: Any, seconds: float) -> RunResult:
    """Copy the best checkpoint to best/ and write results.json (both atomically), then best/'s model card."""
    config = prepared.config
    ranked = list(result.best_checkpoints or [])
    best, best_metrics = pick_best(ranked, config)
    best_path = checkpoint_address(best, config) if best is not None else None
    if best is not None:
        copy_checkpoint(best, run.best_dir)
    history = run.metrics()
    steps = [row for row in history if row.get("type") == "step"]
    evals = [row for row in history if row.get("type") == "eval"]
    results = {
        "run_dir": str(run.path),
        "task": config.task,
        "model_id": config.model_id,
        "best_checkpoint": str(run.best_dir) if best_path else None,
        "best_checkpoint_source": str(best_path) if best_path else None,
        "best_metric": config.best_metric,
        "best_metrics": best_metrics,
        "final_metrics": evals[-1] if evals else {},
        "checkpoints": [checkpoint_address(checkpoint, config) for checkpoint, _ in ranked],
        "steps": prepared.plan.total_steps,
        "epochs": prepared.plan.num_epochs,
        "data": data_counts(prepared.data),
        "train_seconds": round(seconds, 2),
        "tokens_per_second": mean_throughput(steps),
        "first_train_loss": steps[0]["loss"] if steps else None,
        "last_train_loss": steps[-1]["loss"] if steps else None,
    }
    run.write_results(results)
    best = run.best_dir if best_path else None
    if best:
        write_card(best, "checkpoint", CardFacts.read(run, best))
    return RunResult(run.path, best, best_metrics, results["final_metrics"], results)


def pick_best(ranked: list[tuple[Any, dict[str, Any]]], config: TrainConfig) -> tuple[Any, dict[str, Any]]:
    scored = [(path, metrics) for path, metrics in ranked if config.best_metric in metrics]
    if not scored:
        return (ranked[-1][0], ranked[-1][1]) if ranked else (None, {})
    return better(config.best_mode)(scored, key=lambda item: item[1][config.best_metric])


def copy_checkpoint(checkpoint: Any, target: Path) -> None:
    """A Ray Train checkpoint, from wherever it is stored, into a local directory (whole, or not at all)."""
    with atomic_dir(target) as staged:
        checkpoint.to_directory(str(staged))


def checkpoint_address(checkpoint: Any, config: TrainConfig) -> str:
    """Where a checkpoint is, as the user would write it: a local path, or a URI in the config's storage."""
    storage = config.storage_path or ""
    return f"{storage.split('://', 1)[0]}://{checkpoint.path}" if "://" in storage else str(checkpoint.path)
