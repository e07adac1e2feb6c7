"""Hyperparameter search on Ray Tune: every trial is a full tuneforge run, through the same training loop.

    search_space:                       # any config key, nested ones dotted
      learning_rate: {loguniform: [1.0e-5, 1.0e-3]}
      lora_config.r: {grid: [8, 16]}
    tune:
      search_alg: basic                 # basic (grid/random) | optuna | hyperopt
      scheduler: asha                   # fifo | asha | pbt
      num_samples: 4

A trial is a Tune function that trains one run in `runs/<experiment>/<trial>/` and reports each validation event
(after its checkpoint is on disk) to Tune. The objective, unless `tune.metric` names one, is HF's
`default_compute_objective`: the validation loss when it is the only metric, else the sum of the other quality
metrics (classification: accuracy + precision + recall + F1, maximised).

Resources are planned, not hoped for: each trial holds a sliver of a CPU itself, its Ray Train workers get their
share of the machine, and a search whose single trial cannot fit is refused at once instead of waiting forever.
"""

from __future__ import annotations

import copy
import csv
import functools
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.config import (
    TrainConfig,
    TuneSettings,
    config_keys,
    load_config,
    lora_config_fields,
    suggest,
    validation_metrics,
)
from tuneforge.errors import ConfigError, TuneforgeError
from tuneforge.atomic import write_json, write_text

SPACE_KINDS = ("grid", "choice", "uniform", "loguniform", "randint", "quniform")
TRIAL_CPU = 0.01  # what a trial's own process reserves: it only waits on its Ray Train workers
BEST_RUN_KEYS = frozenset({"run_id", "objective", "metric", "mode", "hyperparameters", "checkpoint"})
NOT_OBJECTIVE = {"step", "epoch", "train_loss", "eval_loss", "eval_seconds", "peak_rss_mb", "eval_perplexity"}
PBT_MIN_KEEP = 3


# ----------------------------------------------------------------------------------------------------------------
# Search space
# ----------------------------------------------------------------------------------------------------------------


def flatten_space(space: dict[str, Any], prefix: str = "") -> dict[str, dict[str, Any]]:
    """{'lora_config': {'r': {'grid': [8]}}} and {'lora_config.r': {'grid': [8]}} both become the latter."""
    flat: dict[str, dict[str, Any]] = {}
    for key, value in space.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and len(value) == 1 and next(iter(value)) in SPACE_KINDS:
            flat[name] = value
        elif isinstance(value, dict) and value:
            flat.update(flatten_space(value, f"{name}."))
        else:
            raise ValueError(f"search_space.{name}: expected one of {', '.join(SPACE_KINDS)}, e.g. {{grid: [1, 2]}}")
    return flat


def check_space_key(key: str, uses_lora: bool = True) -> str | None:
    """None when `key` names a config key a trial may set, else the problem."""
    head, _, rest = key.partition(".")
    if head in ("search_space", "tune", "model_id", "task", "train_path", "valid_path", "output_dir", "run_name"):
        return f"'{head}' cannot be searched over"
    if head in ("num_devices", "worker_resources"):
        return f"'{head}' cannot be searched over: every trial's resources are planned to fit before the search starts"
    if head not in config_keys():
        return f"unknown key '{key}'{suggest(head, config_keys())}"
    if rest:
        if head != "lora_config":
            return f"'{head}' has no sub-keys to search over"
        if rest not in lora_config_fields():
            return f"unknown key '{key}'{suggest(rest, lora_config_fields())}"
        if not uses_lora:
            return f"'{key}': this config fine-tunes fully (no lora_config); add a lora_config to search its keys"
    return None


def check_space_values(kind: str, values: Any) -> list[Any]:
    """The values a spec can take that validation should try (all of a grid/choice, both ends of a range)."""
    if not isinstance(values, list) or not values:
        raise ValueError(f"{kind} needs a non-empty list")
    if kind in ("grid", "choice"):
        return values
    expected = 3 if kind == "quniform" else 2
    if len(values) != expected or not all(isinstance(v, (int, float)) for v in values):
        shape = "[low, high, step]" if kind == "quniform" else "[low, high]"
        raise ValueError(f"{kind} takes {shape} numbers")
    low, high = values[0], values[1]
    if low > high or (kind == "loguniform" and low <= 0):
        raise ValueError(f"{kind} range {values} is empty or not positive")
    return [low, high - 1 if kind == "randint" and high > low else high]


def validate_search(config: TrainConfig) -> dict[str, dict[str, Any]]:
    """Refuse a bad search space before any trial starts: unknown keys (with the nearest valid key), malformed
    specs, and values a trial's config would reject."""
    if not config.search_space:
        raise ConfigError(f"{config.source_of()}: no search_space; tuneforge tune needs one (e.g. "
                          "search_space: {learning_rate: {loguniform: [1.0e-5, 1.0e-3]}})")
    try:
        space = flatten_space(config.search_space)
    except ValueError as exc:
        raise ConfigError(f"{config.source_of('search_space')}: {exc}") from None
    base = config.model_dump(mode="json", exclude={"search_space", "tune"})
    for key, spec in space.items():
        where = config.source_of("search_space", *key.split("."))
        problem = check_space_key(key, config.uses_lora)
        if problem:
            raise ConfigError(f"{where}: search_space: {problem}")
        kind, values = next(iter(spec.items()))
        try:
            samples = check_space_values(kind, values)
        except ValueError as exc:
            raise ConfigError(f"{where}: search_space.{key}: {exc}") from None
        for sample in samples:
            problem = invalid_params(base, {key: sample})
            if problem:
                raise ConfigError(f"{where}: search_space.{key} value {sample!r} is invalid: {problem}")
    settings = config.tune or TuneSettings()
    if settings.search_alg != "basic" and any("grid" in spec for spec in space.values()):
        raise ConfigError(f"{config.source_of('tune', 'search_alg')}: grid values need search_alg: basic; "
                          f"{settings.search_alg} samples, so use choice instead of grid")
    check_metric(config, settings)
    check_points(config, settings, space, base)
    return space


def invalid_params(base: dict[str, Any], params: dict[str, Any]) -> str | None:
    """None when the config dict `base` with dotted `params` set is a valid TrainConfig, else pydantic's reason."""
    try:
        TrainConfig.model_validate(with_params(base, params))
    except ValueError as exc:
        lines = str(exc).splitlines()
        return lines[2].strip() if len(lines) > 2 else str(exc)
    return None


def check_metric(config: TrainConfig, settings: TuneSettings) -> None:
    known = (*validation_metrics(config.task), "train_loss")
    if settings.metric and settings.metric not in known:
        raise ConfigError(f"{config.source_of('tune', 'metric')}: unknown metric '{settings.metric}'"
                          f"{suggest(settings.metric, known, list_when_none_close=False)}; trials report {', '.join(known)}")


def check_points(config: TrainConfig, settings: TuneSettings, space: dict[str, Any], base: dict[str, Any]) -> None:
    """points_to_evaluate name searched keys only (dotted, as in the search space), with values a trial accepts."""
    where = config.source_of("tune", "points_to_evaluate")
    for number, point in enumerate(settings.points_to_evaluate or [], start=1):
        for key in point:
            if key not in space:
                close = suggest(key, space, list_when_none_close=False)
                raise ConfigError(f"{where}: point {number}: '{key}' is not a search_space key{close}")
        problem = invalid_params(base, point)
        if problem:
            raise ConfigError(f"{where}: point {number} is invalid: {problem}")


def with_params(base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """A copy of a config dict with dotted keys set."""
    result = copy.deepcopy(base)
    for key, value in params.items():
        *parents, leaf = key.split(".")
        target = result
        for part in parents:
            if not isinstance(target.get(part), dict):
                target[part] = {}
            target = target[part]
        target[leaf] = value
    return result


def to_domain(kind: str, values: list[Any]) -> Any:
    from ray import tune

    return {
        "grid": lambda: tune.grid_search(values),
        "choice": lambda: tune.choice(values),
        "uniform": lambda: tune.uniform(*values),
        "loguniform": lambda: tune.loguniform(*values),
        "randint": lambda: tune.randint(*values),
        "quniform": lambda: tune.quniform(*values),
    }[kind]()


def mutation_domain(spec: Any) -> Any:
    """PBT mutations: a list of values, or a search-space spec."""
    if isinstance(spec, list):
        return spec
    if isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in SPACE_KINDS and next(iter(spec)) != "grid":
        kind, values = next(iter(spec.items()))
        return to_domain(kind, values)
    raise ConfigError(f"tune.hyperparam_mutations: {spec!r} must be a list of values or {{choice|uniform|...: [...]}}")


# ----------------------------------------------------------------------------------------------------------------
# Objective and resources
# ----------------------------------------------------------------------------------------------------------------


def default_objective(metrics: dict[str, Any]) -> float:
    """HF's `default_compute_objective`: eval_loss if it is the only quality metric, else the sum of the others."""
    others = {k: v for k, v in metrics.items() if k.startswith("eval_") and k not in NOT_OBJECTIVE
              and isinstance(v, (int, float))}
    return float(sum(others.values())) if others else float(metrics["eval_loss"])


def objective_direction(config: TrainConfig, settings: TuneSettings) -> tuple[str, str]:
    """(metric Tune optimises, mode). Without a named metric: 'objective', min for a loss, max for a sum."""
    if settings.metric:
        mode = settings.mode or ("min" if "loss" in settings.metric or "perplexity" in settings.metric else "max")
        return settings.metric, mode
    return "objective", settings.mode or ("max" if config.task == "classification" else "min")


@dataclass(frozen=True)
class ResourcePlan:
    concurrency: int
    cpus_per_worker: float
    threads_per_worker: int
    gpus_per_worker: float


def plan_resources(config: TrainConfig, settings: TuneSettings, cpus: float, gpus: float) -> ResourcePlan:
    """How many trials run at once and what each trial's workers get. A trial holds TRIAL_CPU itself, its
    workers hold the rest; a plan where even one trial cannot fit is refused."""
    workers = config.num_devices
    fixed = dict(config.worker_resources or {})
    gpu_each = fixed.get("GPU", 1.0 if gpus >= 1 else 0.0)
    if gpu_each:
        fits = int(gpus // (workers * gpu_each))
        if fits < 1:
            raise ConfigError(f"one trial needs {workers * gpu_each:g} GPU(s) ({workers} workers) but the cluster has "
                              f"{gpus:g}; lower num_devices")
    else:
        cpu_floor = fixed.get("CPU", 1.0)
        reserve = TRIAL_CPU if "CPU" in fixed else 0.0  # without fixed CPUs the workers absorb the trial's sliver
        fits = int((cpus + 1e-9) // (workers * cpu_floor + reserve))
        if fits < 1 and "CPU" in fixed:
            raise ConfigError(f"one trial needs {workers} x {cpu_floor:g} CPU + {TRIAL_CPU} for the trial itself but "
                              f"the cluster has {cpus:g} CPUs; lower num_devices or worker_resources.CPU")
        fits = max(fits, 1)  # fractional CPUs per worker make one trial fit even with more workers than cores
    concurrency = min(settings.max_concurrent_trials, fits) if settings.max_concurrent_trials else fits
    if "CPU" in fixed:
        per_worker = fixed["CPU"]
    else:
        per_worker = (cpus - concurrency * TRIAL_CPU) / (concurrency * workers)
        per_worker = math.floor(per_worker * 1000) / 1000
    return ResourcePlan(concurrency, per_worker, max(1, int(per_worker)), gpu_each)


# ----------------------------------------------------------------------------------------------------------------
# The trial
# ----------------------------------------------------------------------------------------------------------------


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


def run_trial(params: dict[str, Any], *, base: dict[str, Any], experiment_dir: str, plan: ResourcePlan,
              scheduler: str) -> None:
    """One trial: a full tuneforge run in experiment_dir/<trial id>."""
    from ray import tune

    from tuneforge.train import resume, train

    trial_dir = Path(experiment_dir) / trial_dirname(tune.get_context().get_trial_id())
    config = TrainConfig.model_validate(with_params(base, params))
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
    elif (trial_dir / "config.yaml").is_file():  # an interrupted search being resumed
        resume(trial_dir, reporter=reporter, cpus_per_worker=plan.cpus_per_worker)
    else:
        train(config, run_dir=trial_dir, reporter=reporter, cpus_per_worker=plan.cpus_per_worker)
    reporter.flush()


def trial_dirname(trial_id: str) -> str:
    return f"trial_{trial_id}"


# ----------------------------------------------------------------------------------------------------------------
# The search
# ----------------------------------------------------------------------------------------------------------------


def progress_callback(display: Any) -> Any:
    """A Tune callback that forwards trial results and endings to `display` (trial_result / trial_done)."""
    from ray.tune import Callback

    class SearchProgress(Callback):
        def __init__(self) -> None:
            self.display = display

        def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
            return (Callback, ())  # Tune pickles its run config; the terminal display stays behind

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            self.display.trial_result(trial.trial_id, result)

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.display.trial_done(trial.trial_id, "done")

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.display.trial_done(trial.trial_id, "error")

    return SearchProgress()


@dataclass
class SearchResult:
    experiment_dir: Path
    best: dict[str, Any]
    trials: list[dict[str, Any]]


def search(config: TrainConfig, *, address: str | None = None, resume_dir: Path | None = None,
           display: Any = None, debug: bool = False) -> SearchResult:
    """Run (or resume) a search and write trials.csv, best_run.json and objective_by_trial.png. `display`
    (optional) gets note(message) for what the search changed in the config, then trial_result(trial_id, result)
    and trial_done(trial_id, status) calls as trials progress."""
    from ray import tune

    from tuneforge.cluster import ensure_ray
    from tuneforge.train import prepare_run
    from tuneforge.train.preflight import check_fits, check_writable, worker_resources

    settings = config.tune or TuneSettings()
    space = validate_search(config)
    prepare_run(config)  # data, model id and LoRA targets fail here, before any trial starts
    if not resume_dir:
        check_writable(Path(config.output_dir), config.source_of("output_dir"))
    config, notes = apply_pbt_rules(config, settings)
    if display:
        for note in notes:
            display.note(note)
    metric, mode = objective_direction(config, settings)
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # the runs keep their own metrics and TB
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # tuneforge draws its own progress
    # The dashboard serves Ray's State API, which Ray Train's placement-group cleaner needs: without it a trial
    # stopped by the scheduler leaves its workers' CPUs reserved, and later trials wait for them forever.
    cluster = ensure_ray(address, dashboard=True, debug=debug)
    plan = plan_resources(config, settings, cluster.cpus, cluster.gpus)
    check_fits(config, worker_resources(config, cluster, plan.cpus_per_worker)[0], cluster)  # before any trial
    if resume_dir:
        from tuneforge.rundir import locate

        resume_dir = locate(resume_dir)
    experiment_dir = resume_dir or choose_experiment_dir(config, settings)
    progress = progress_callback(display) if display else None
    if display:
        display.expect(expected_trials(space, settings))
    base = config.model_dump(mode="json", exclude={"search_space", "tune"})
    trainable = tune.with_resources(
        functools.partial(run_trial, base=base, experiment_dir=str(experiment_dir.resolve()), plan=plan,
                          scheduler=settings.scheduler),
        {"cpu": TRIAL_CPU},  # the trial's own bundle; Ray Train puts the workers in a placement group of their own
    )
    if resume_dir:
        tuner = tune.Tuner.restore(str(experiment_dir.resolve()), trainable=trainable, resume_unfinished=True,
                                   resume_errored=True)
    else:
        experiment_dir.mkdir(parents=True, exist_ok=False)
        write_text(experiment_dir / "tune_config.yaml", config.to_yaml())
        write_json(experiment_dir / "search.json", {"metric": metric, "mode": mode, "concurrency": plan.concurrency,
                                                    "cpus_per_worker": plan.cpus_per_worker, "notes": notes})
        tuner = tune.Tuner(
            trainable,
            param_space={key: to_domain(*next(iter(spec.items()))) for key, spec in space.items()},
            tune_config=tune_config(config, settings, metric, mode, plan.concurrency),
            run_config=tune.RunConfig(
                name=experiment_dir.name, storage_path=str(experiment_dir.parent.resolve()), verbose=0,
                callbacks=[progress] if progress else [],
                checkpoint_config=tune.CheckpointConfig(num_to_keep=config.num_checkpoints_to_keep),
            ),
        )
    if resume_dir and progress:
        tuner._local_tuner.get_run_config().callbacks = [progress]  # noqa: SLF001 - restore() takes no callbacks
    grid = tuner.fit()
    return summarize(experiment_dir, grid, metric, mode, space)


def expected_trials(space: dict[str, dict[str, Any]], settings: TuneSettings) -> int:
    """num_samples, times every grid's size (Tune repeats the whole grid per sample)."""
    total = settings.num_samples
    for spec in space.values():
        if "grid" in spec:
            total *= len(spec["grid"])
    return total


def apply_pbt_rules(config: TrainConfig, settings: TuneSettings) -> tuple[TrainConfig, list[str]]:
    """PBT copies checkpoints between trials; with few kept, a donor's may be deleted before it is copied."""
    if settings.scheduler != "pbt" or config.num_checkpoints_to_keep >= PBT_MIN_KEEP:
        return config, []
    note = (f"num_checkpoints_to_keep raised from {config.num_checkpoints_to_keep} to {PBT_MIN_KEEP}: PBT trials "
            "restore from each other's checkpoints, which must outlive the exploit step")
    return config.model_copy(update={"num_checkpoints_to_keep": PBT_MIN_KEEP}), [note]


def tune_config(config: TrainConfig, settings: TuneSettings, metric: str, mode: str, concurrency: int) -> Any:
    from ray import tune

    return tune.TuneConfig(
        metric=metric, mode=mode, num_samples=settings.num_samples, time_budget_s=settings.time_budget_s,
        search_alg=search_algorithm(settings, metric, mode, concurrency),
        scheduler=scheduler_for(config, settings, metric, mode),
        trial_dirname_creator=lambda trial: trial_dirname(trial.trial_id),
        trial_name_creator=lambda trial: trial_dirname(trial.trial_id),
        # A stopped trial's process must exit: the Ray Train controller it owns, and the workers' placement group,
        # only go away with it. A reused process would keep them, and the next trial would wait forever.
        reuse_actors=False,
    )


def search_algorithm(settings: TuneSettings, metric: str, mode: str, concurrency: int) -> Any:
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    points = settings.points_to_evaluate
    if settings.search_alg == "basic":
        # max_concurrent must be given here: TuneConfig's max_concurrent_trials is ignored with an explicit one.
        return BasicVariantGenerator(points_to_evaluate=points, max_concurrent=concurrency)
    if settings.search_alg == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        algorithm = OptunaSearch(metric=metric, mode=mode, points_to_evaluate=points)
    else:
        from ray.tune.search.hyperopt import HyperOptSearch

        algorithm = HyperOptSearch(metric=metric, mode=mode, points_to_evaluate=points)
    return ConcurrencyLimiter(algorithm, max_concurrent=concurrency)


def scheduler_for(config: TrainConfig, settings: TuneSettings, metric: str, mode: str) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

    if settings.scheduler == "asha":
        events = settings.max_t or estimated_events(config)
        return ASHAScheduler(time_attr="training_iteration", max_t=events, grace_period=min(settings.grace_period, events),
                             reduction_factor=settings.reduction_factor)
    if settings.scheduler == "pbt":
        mutations = {key: mutation_domain(spec) for key, spec in (settings.hyperparam_mutations or {}).items()}
        for key in mutations:
            problem = check_space_key(key, config.uses_lora)
            if problem:
                raise ConfigError(f"{config.source_of('tune', 'hyperparam_mutations')}: {problem}")
        if not mutations:
            raise ConfigError(f"{config.source_of('tune')}: scheduler pbt needs tune.hyperparam_mutations")
        return PopulationBasedTraining(time_attr="training_iteration",
                                       perturbation_interval=settings.perturbation_interval,
                                       hyperparam_mutations=mutations)
    return FIFOScheduler()


def estimated_events(config: TrainConfig) -> int:
    """Validation events a trial reports (ASHA's max_t by default), from the plan without reading the data."""
    from tuneforge.plan import event_steps

    if config.num_epochs and config.checkpoint_every_n_epochs:
        return len(event_steps(config, 1, config.num_epochs))
    return config.max_num_checkpoints


def choose_experiment_dir(config: TrainConfig, settings: TuneSettings) -> Path:
    from datetime import datetime

    base = Path(config.output_dir)
    name = settings.experiment_name or f"{config.source_name}-tune"
    path = base / name
    if path.exists():
        path = base / f"{name}-{datetime.now():%Y%m%d-%H%M%S}"
    return path


# ----------------------------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------------------------


def summarize(experiment_dir: Path, grid: Any, metric: str, mode: str, space: dict[str, Any]) -> SearchResult:
    """trials.csv, best_run.json (HF BestRun's shape: run_id, objective, hyperparameters) and a plot."""
    better = min if mode == "min" else max
    statuses = tune_statuses(experiment_dir)
    trials = []
    for result in grid:
        trial_id = Path(result.path).name.removeprefix("trial_")
        run_dir = experiment_dir / trial_dirname(trial_id)
        evals = scored_evals(run_dir, metric)
        finished = statuses.get(trial_id, "TERMINATED") in ("TERMINATED", "ERROR")
        best_value, best_row = better(evals, key=lambda item: item[0]) if evals else (None, {})
        final_value, final_row = evals[-1] if evals else (None, {})
        trials.append({
            "run_id": trial_dirname(trial_id),
            "status": trial_status(result, run_dir) if finished else "interrupted",
            "iterations": len(evals),
            "best_objective": best_value,
            "final_objective": final_value,
            **{f"param.{k}": v for k, v in flatten_params(result.config).items()},
            **metric_columns("best", best_row),
            **metric_columns("final", final_row),
            "run_dir": str(run_dir),
            "error": str(result.error).splitlines()[0] if result.error else "",
        })
    write_trials_csv(experiment_dir / "trials.csv", trials)
    unfinished = [t for t in trials if t["status"] == "interrupted"]
    if unfinished:
        raise TuneforgeError(f"search interrupted with {len(unfinished)} of {len(trials)} trial(s) unfinished; "
                             f"continue it with: tuneforge tune --resume {experiment_dir}")
    scored = [t for t in trials if t["best_objective"] is not None]
    if not scored:
        raise TuneforgeError(f"no trial of {experiment_dir} reported a result; see each trial's run.json")
    best = better(scored, key=lambda t: t["best_objective"])
    checkpoint = best_kept_checkpoint(Path(best["run_dir"]), metric, mode)
    best_run = {"run_id": best["run_id"], "objective": best["best_objective"], "metric": metric, "mode": mode,
                "hyperparameters": {k.removeprefix("param."): v for k, v in best.items() if k.startswith("param.")},
                "checkpoint": str(checkpoint) if checkpoint else None}
    write_json(experiment_dir / "best_run.json", best_run)
    plot_objective(experiment_dir / "objective_by_trial.png", trials, metric)
    return SearchResult(experiment_dir, best_run, trials)


def best_kept_checkpoint(run_dir: Path, metric: str, mode: str) -> Path | None:
    """The trial's kept checkpoint that scores best on the search metric. A trial the scheduler stopped never
    wrote `best/`, and a finished trial's `best/` follows its own `best_metric`, which may not be the search's."""
    from tuneforge.rundir import CheckpointMeta, RunDir

    scored = []
    for path in RunDir(run_dir).checkpoints():
        value = objective_value(CheckpointMeta.read(path).metrics, metric)
        if value is not None:
            scored.append((value, path))
    if not scored:
        return run_dir / "best" if (run_dir / "best").is_dir() else None
    return (min if mode == "min" else max)(scored, key=lambda item: item[0])[1]


def tune_statuses(experiment_dir: Path) -> dict[str, str]:
    """Tune's status of every trial (TERMINATED, ERROR, or RUNNING/PENDING/PAUSED when the search was cut short),
    from the newest experiment-state file Tune keeps for resuming. ResultGrid has no per-trial status."""
    states = sorted(experiment_dir.glob("experiment_state-*.json"))  # names carry the start time; mtimes do not tell
    if not states:
        return {}
    try:
        entries = json.loads(states[-1].read_text(encoding="utf-8"))["trial_data"]
        trials = [json.loads(entry[0] if isinstance(entry, list) else entry) for entry in entries]
        return {trial["trial_id"]: trial["status"] for trial in trials}
    except (ValueError, KeyError, TypeError, IndexError):
        return {}


def scored_evals(run_dir: Path, metric: str) -> list[tuple[float, dict[str, Any]]]:
    """(objective, metrics) at each validation event of a trial's run, from its own metrics.jsonl."""
    from tuneforge.rundir import RunDir

    evals = [row for row in RunDir(run_dir).metrics() if row.get("type") == "eval"]
    return [(value, row) for row in evals if (value := objective_value(row, metric)) is not None]


def objective_value(metrics: dict[str, Any], metric: str) -> float | None:
    """The search metric from one validation event's metrics ('objective': HF's default), if it was reported."""
    if metric == "objective":
        return default_objective(metrics) if "eval_loss" in metrics else None
    value = metrics.get(metric)
    return float(value) if isinstance(value, (int, float)) else None


def metric_columns(prefix: str, row: dict[str, Any]) -> dict[str, Any]:
    """trials.csv columns for the validation metrics of one event: `best.eval_f1`, `final.eval_loss`, ..."""
    return {f"{prefix}.{key}": value for key, value in row.items()
            if (key.startswith("eval_") and key != "eval_seconds") or key == "step"}


def trial_status(result: Any, run_dir: Path) -> str:
    """done / stopped early (by the scheduler, before its last step) / error. A stopped trial's process was
    ended mid-run, so its run.json is corrected here."""
    if result.error:
        return "error"
    path = run_dir / "run.json"
    state = json.loads(path.read_text()) if path.is_file() else {}
    if state.get("status") == "completed":
        return "done"
    if state:
        write_json(path, {**state, "status": "stopped", "error": None, "stopped_by": "scheduler"})
    return "stopped early"


def flatten_params(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in (config or {}).items():
        if isinstance(value, dict):
            flat.update(flatten_params(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def write_trials_csv(path: Path, trials: list[dict[str, Any]]) -> None:
    import io

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


def load_experiment_config(experiment_dir: Path) -> TrainConfig:
    from tuneforge.rundir import locate

    saved = locate(experiment_dir) / "tune_config.yaml"
    if not saved.is_file():
        raise TuneforgeError(f"{experiment_dir}: not a tuneforge experiment (no tune_config.yaml)")
    return load_config(saved)


def read_best_run(experiment_dir: Path) -> dict[str, Any]:
    from tuneforge.rundir import locate

    directory = locate(experiment_dir)
    path = directory / "best_run.json"
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
    if (directory / "tune_config.yaml").is_file():
        return (f"{directory}: no best_run.json (the search has not finished; resume it with "
                f"tuneforge tune --resume {directory})")
    if (directory / "config.yaml").is_file():
        return (f"{directory}: a training run, not a search; its best checkpoint is {directory / 'best'} "
                "(tuneforge runs list shows the searches)")
    return f"{directory}: not a tuneforge search (no tune_config.yaml); tuneforge runs list shows the searches"
