"""Running a search on Ray Tune: the objective and its direction, the search algorithm and scheduler, the
experiment directory, and the progress shown while trials run."""

from __future__ import annotations

import contextlib
import functools
import os
import time
from pathlib import Path
from typing import Any, Iterator

from tuneforge.atomic import write_json, write_text
from tuneforge.config import TrainConfig, TuneSettings, tracking_keys, validation_metrics
from tuneforge.errors import ConfigError, Stopped, TuneforgeError
from tuneforge.metrics import default_objective_mode, metric_mode
from tuneforge.rundir import ExperimentDir, locate
from tuneforge.tune.resources import TRIAL_CPU, ResourcePlan, plan_resources
from tuneforge.tune.results import SearchResult, summarize
from tuneforge.tune.space import (
    SpaceSpec,
    check_fixed_workers,
    check_space_key,
    expected_trials,
    flatten_space,
    mutation_domain,
    to_domain,
    validate_search,
)
from tuneforge.tune.tracking import search_run
from tuneforge.tune.trial import train_trial, trial_name

PBT_MIN_KEEP = 3


def search(config: TrainConfig, *, address: str | None = None, resume_dir: Path | None = None,
           display: Any = None, debug: bool = False, auto: bool = False,
           budget_s: float | None = None) -> SearchResult:
    """Run (or resume) a search and write trials.csv, best_run.json and objective_by_trial.png. `display`
    (optional) gets note(message) for what the search changed in the config, then trial_result(trial_id, result)
    and trial_done(trial_id, status) calls as trials progress. `auto` builds the search itself (tune.auto) and
    keeps it within `budget_s` seconds of wall-clock time (default 30 minutes); `display.auto_plan(plan)` is shown
    what it built before Ray starts."""
    from tuneforge.cluster import ensure_ray
    from tuneforge.train import prepare_run
    from tuneforge.train.driver import start_ray_for_data
    from tuneforge.train.preflight import SilentReporter, check_fits, check_trackers, check_writable, worker_resources

    started = time.monotonic()
    check_trackers(config)
    check_fixed_workers(config)  # before --auto's probe trains anything
    deadline = None
    auto_plan = None
    if auto:
        budget_s = budget_s or DEFAULT_BUDGET_S
        auto_plan = plan_auto(config, budget_s, resume_dir)
        config = auto_plan.config
        deadline = time.time() + budget_s - (time.monotonic() - started)  # the probe counts against the budget
        if display:
            display.auto_plan(auto_plan)
    elif budget_s:
        raise ConfigError("--budget sets the time of an --auto search; add --auto, or set tune.time_budget_s")
    settings = config.tune or TuneSettings()
    space = validate_search(config)
    # Data, model id and LoRA targets fail here, before any trial starts; streamed data is tokenized here once, while
    # every CPU is free, into the cache the trials then read.
    start_ray_for_data(config, SilentReporter(), address, True, debug)
    prepare_run(config)
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
    experiment_dir = locate(resume_dir) if resume_dir else choose_experiment_dir(config, settings)
    if display:
        display.expect(auto_plan.trials_fit if auto_plan else expected_trials(space, settings))
    trainable = trial_trainable(config, experiment_dir, plan, settings.scheduler)
    started = time.monotonic()
    with progress_shown_by(display):
        if resume_dir:
            tuner = restored_tuner(experiment_dir, trainable)
        else:
            info = {"metric": metric, "mode": mode, "concurrency": plan.concurrency,
                    "cpus_per_worker": plan.cpus_per_worker, "notes": notes}
            if auto_plan:
                info["auto"] = {"budget_s": auto_plan.budget_s, "trials_fit": auto_plan.trials_fit,
                                "plan": [list(row) for row in auto_plan.rows()], "notes": auto_plan.notes}
            start_experiment(experiment_dir, config, info)
            tuner = new_tuner(experiment_dir, trainable, config, settings, space, metric, mode, plan, display,
                              local=cluster.local,
                              deadline=(deadline, auto_plan.speed.first_event_seconds()) if auto_plan else None)
        with search_run(ExperimentDir(experiment_dir), config) as tracking, sigterm_as_tune_stop() as signalled:
            grid = tuner.fit()
            # Tune stops every trial when the time budget runs out, as it does when the search is interrupted; only
            # the clock tells the two apart (trial_status).
            budget = budget_s if auto else settings.time_budget_s
            budget_spent = budget is not None and time.monotonic() - started >= budget
            try:
                result = summarize(experiment_dir, grid, metric, mode, budget_spent=budget_spent)
            except TuneforgeError as exc:
                if signalled:  # honoured, as a run's SIGTERM is: exit 143, not an error
                    raise Stopped(f"{exc} (stopped on SIGTERM)") from None
                raise
            if tracking:
                tracking.best = result.best
    complete_best_run(result)
    return result


DEFAULT_BUDGET_S = 30 * 60


def plan_auto(config: TrainConfig, budget_s: float, resume_dir: Path | None) -> Any:
    """The search --auto builds: refused at once for what it cannot do, then planned on a probe of this machine."""
    from tuneforge.train import prepare_run
    from tuneforge.tune.auto import plan_auto_search

    if resume_dir:
        raise ConfigError("--auto builds a new search, and a resumed search keeps the space it started with; drop "
                          "--auto to continue it")
    if config.search_space and any("grid" in spec for spec in flatten_space(config.search_space).values()):
        raise ConfigError(f"{config.source_of('search_space')}: --auto samples with Optuna TPE; write your grid "
                          "values as choice: [...]")
    prepared = prepare_run(config)
    if prepared.data.stream:
        raise ConfigError(f"{config.source_of('train_path')}: --auto measures this machine's speed on in-memory "
                          "data, and these files stream (streaming); tune with your own search_space")
    return plan_auto_search(config, budget_s, prepared)


def complete_best_run(result: SearchResult) -> None:
    """The best trial as a normal run: a trial the scheduler or the deadline stopped never wrote best/, so the
    checkpoint the search chose is copied there (export, serve and generate read best/)."""
    checkpoint = result.best.get("checkpoint")
    run = ExperimentDir(result.experiment_dir).trial(result.best["run_id"])
    if checkpoint and not run.best_dir.is_dir() and Path(checkpoint).is_dir():
        import shutil

        from tuneforge.atomic import atomic_dir

        with atomic_dir(run.best_dir) as staged:
            shutil.copytree(checkpoint, staged, dirs_exist_ok=True)


def objective_direction(config: TrainConfig, settings: TuneSettings) -> tuple[str, str]:
    """(metric Tune optimises, mode). Without a named metric: 'objective' (HF's default objective), which way it
    is better following from what the task's validation reports."""
    if settings.metric:
        return settings.metric, settings.mode or metric_mode(settings.metric)
    return "objective", settings.mode or default_objective_mode(validation_metrics(config))


def apply_pbt_rules(config: TrainConfig, settings: TuneSettings) -> tuple[TrainConfig, list[str]]:
    """PBT copies checkpoints between trials; with few kept, a donor's may be deleted before it is copied."""
    if settings.scheduler == "pbt" and config.storage_path:
        raise ConfigError(f"{config.source_of('storage_path')}: scheduler pbt hands checkpoints between trials "
                          "through their run directories; remove storage_path (or use asha or fifo)")
    if settings.scheduler != "pbt" or config.num_checkpoints_to_keep >= PBT_MIN_KEEP:
        return config, []
    note = (f"num_checkpoints_to_keep raised from {config.num_checkpoints_to_keep} to {PBT_MIN_KEEP}: PBT trials "
            "restore from each other's checkpoints, which must outlive the exploit step")
    return config.model_copy(update={"num_checkpoints_to_keep": PBT_MIN_KEEP}), [note]


def choose_experiment_dir(config: TrainConfig, settings: TuneSettings) -> Path:
    from datetime import datetime

    base = Path(config.output_dir)
    name = settings.experiment_name or f"{config.source_name}-tune"
    path = base / name
    if path.exists():
        path = base / f"{name}-{datetime.now():%Y%m%d-%H%M%S}"
    return path


def start_experiment(experiment_dir: Path, config: TrainConfig, search_info: dict[str, Any]) -> None:
    """The files that make a directory a tuneforge search (tune_config.yaml: what --resume reloads)."""
    experiment_dir.mkdir(parents=True, exist_ok=False)
    experiment = ExperimentDir(experiment_dir)
    write_text(experiment.config_file, config.to_yaml())
    write_json(experiment.search_file, search_info)


# ----------------------------------------------------------------------------------------------------------------
# The Tuner
# ----------------------------------------------------------------------------------------------------------------


def trial_trainable(config: TrainConfig, experiment_dir: Path, plan: ResourcePlan, scheduler: str) -> Any:
    from ray import tune

    # The store and experiment resolved here, where the search runs: every trial's run nests under the search's.
    base = {**config.model_dump(mode="json", exclude={"search_space", "tune"}), **tracking_keys(config)}
    return tune.with_resources(
        functools.partial(train_trial, base=base, experiment_dir=str(experiment_dir.resolve()), plan=plan,
                          scheduler=scheduler, derived=derived_rules(config.tune or TuneSettings())),
        {"cpu": TRIAL_CPU},  # the trial's own bundle; Ray Train puts the workers in a placement group of their own
    )


def derived_rules(settings: TuneSettings) -> dict[str, float | None]:
    """What each trial derives from its params (space.trial_params)."""
    return {"lora_alpha_ratio": settings.lora_alpha_ratio, "full_learning_rate_ratio": settings.full_learning_rate_ratio}


def new_tuner(experiment_dir: Path, trainable: Any, config: TrainConfig, settings: TuneSettings,
              space: dict[str, SpaceSpec], metric: str, mode: str, plan: ResourcePlan, display: Any,
              *, local: bool, deadline: tuple[float, float] | None = None) -> Any:
    """`deadline`: (time.time() of the deadline, seconds a trial needs to its first validation event), for --auto."""
    from ray import tune

    from tuneforge.train.driver import failures_allowed
    from tuneforge.tune.deadline import deadline_searcher, deadline_stopper

    search_config = tune_config(config, settings, metric, mode, plan.concurrency)
    if deadline:
        search_config.search_alg = deadline_searcher(search_config.search_alg, *deadline)
    return tune.Tuner(
        trainable,
        param_space={key: to_domain(spec) for key, spec in space.items()},  # dotted keys; the trial nests them
        tune_config=search_config,
        run_config=tune.RunConfig(
            name=experiment_dir.name, storage_path=str(experiment_dir.parent.resolve()), verbose=0,
            stop=deadline_stopper(deadline[0]) if deadline else None,
            callbacks=[progress_callback(display)] if display else [],
            # PBT restores a trial from another's Tune checkpoint some time after choosing it (once resources free
            # up); pruning could delete it first (seen: FileNotFoundError in the exploiting trial), so PBT keeps all.
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=None if settings.scheduler == "pbt" else config.num_checkpoints_to_keep),
            # A retried trial finds its run directory and resumes it (train_trial).
            failure_config=tune.FailureConfig(max_failures=failures_allowed(settings.max_failures, local)),
        ),
    )


def restored_tuner(experiment_dir: Path, trainable: Any) -> Any:
    """The Tuner of an interrupted search. Tune restores its run config, callbacks included, from the experiment:
    the progress callback reattaches itself to this process's display as it is unpickled (progress_callback)."""
    from ray import tune

    return tune.Tuner.restore(str(experiment_dir.resolve()), trainable=trainable, resume_unfinished=True,
                              resume_errored=True)


def tune_config(config: TrainConfig, settings: TuneSettings, metric: str, mode: str, concurrency: int) -> Any:
    from ray import tune

    return tune.TuneConfig(
        metric=metric, mode=mode, num_samples=settings.num_samples, time_budget_s=settings.time_budget_s,
        search_alg=search_algorithm(settings, metric, mode, concurrency, config.seed),
        scheduler=scheduler_for(config, settings, metric, mode),
        trial_dirname_creator=trial_name,
        trial_name_creator=trial_name,
        # A stopped trial's process must exit: the Ray Train controller it owns, and the workers' placement group,
        # only go away with it. A reused process would keep them, and the next trial would wait forever.
        reuse_actors=False,
    )


@contextlib.contextmanager
def sigterm_as_tune_stop() -> Iterator[list[int]]:
    """SIGTERM (a scheduler's preemption) stops the search the way Ctrl-C does: Tune saves the experiment's state
    one last time and stops the trials, and `tune --resume` continues them from their last checkpoints. Tune itself
    answers SIGINT and SIGUSR1 so; SIGTERM would end the process without it."""
    import signal
    import threading

    signalled: list[int] = []  # true once SIGTERM came
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGUSR1"):
        yield signalled
        return

    def forward(signum: int, _frame: Any) -> None:
        signalled.append(signum)
        os.kill(os.getpid(), signal.SIGUSR1)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        yield signalled
    finally:
        signal.signal(signal.SIGTERM, previous)


def search_algorithm(settings: TuneSettings, metric: str, mode: str, concurrency: int, seed: int | None = None) -> Any:
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    points = settings.points_to_evaluate
    if settings.search_alg == "basic":
        # max_concurrent must be given here: TuneConfig's max_concurrent_trials is ignored with an explicit one.
        return BasicVariantGenerator(points_to_evaluate=points, max_concurrent=concurrency)
    if settings.search_alg == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        sampler = None
        if settings.startup_trials:
            from optuna.samplers import TPESampler

            sampler = TPESampler(n_startup_trials=settings.startup_trials, seed=seed)
        algorithm = OptunaSearch(metric=metric, mode=mode, points_to_evaluate=points, sampler=sampler)
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
        return PopulationBasedTraining(time_attr="training_iteration",
                                       perturbation_interval=settings.perturbation_interval,
                                       hyperparam_mutations=pbt_mutations(config, settings))
    return FIFOScheduler()


def pbt_mutations(config: TrainConfig, settings: TuneSettings) -> dict[str, Any]:
    mutations = {key: mutation_domain(spec) for key, spec in (settings.hyperparam_mutations or {}).items()}
    for key in mutations:
        problem = check_space_key(key, config.uses_lora)
        if problem:
            raise ConfigError(f"{config.source_of('tune', 'hyperparam_mutations')}: {problem}")
    if not mutations:
        raise ConfigError(f"{config.source_of('tune')}: scheduler pbt needs tune.hyperparam_mutations")
    return mutations


def estimated_events(config: TrainConfig) -> int:
    """Validation events a trial reports (ASHA's max_t by default), from the plan without reading the data."""
    from tuneforge.plan import event_steps

    if config.num_epochs and config.checkpoint_every_n_epochs:
        return len(event_steps(config, 1, config.num_epochs))
    return config.max_num_checkpoints


# ----------------------------------------------------------------------------------------------------------------
# Progress
# ----------------------------------------------------------------------------------------------------------------

# The display of the search this process is running. Tuner.restore takes no callbacks: it unpickles the ones the
# search started with, and a progress callback unpickles as one attached to whatever display is here.
ATTACHED_DISPLAYS: list[Any] = []


@contextlib.contextmanager
def progress_shown_by(display: Any) -> Iterator[None]:
    """While the search runs, progress callbacks (new or restored) report to `display` (None: to nothing)."""
    ATTACHED_DISPLAYS.append(display)
    try:
        yield
    finally:
        ATTACHED_DISPLAYS.pop()


def attached_progress() -> Any:
    """A progress callback for the display attached now; Tune's pickles of one unpickle through here."""
    from ray.tune import Callback

    display = ATTACHED_DISPLAYS[-1] if ATTACHED_DISPLAYS else None
    return progress_callback(display) if display is not None else Callback()


def progress_callback(display: Any) -> Any:
    """A Tune callback that forwards trial results and endings to `display` (trial_result / trial_done)."""
    from ray.tune import Callback

    class SearchProgress(Callback):
        def __init__(self) -> None:
            self.display = display

        def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
            # Tune pickles its run config into the experiment; the terminal display stays behind, and a restored
            # search's callback attaches to the display of the process resuming it.
            return (attached_progress, ())

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            self.display.trial_result(trial.trial_id, result)

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.display.trial_done(trial.trial_id, "done")

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.display.trial_done(trial.trial_id, "error")

    return SearchProgress()
