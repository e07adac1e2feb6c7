"""Driving a training run: validate everything, create the run directory, train on Ray Train, keep the best.

Everything that can be wrong with the input (config, data, model id, LoRA targets, resources) is checked before
the run directory exists or Ray starts. A run directory is complete when it has `results.json`; `run.json` says
whether it is running, completed, failed or interrupted.

Layout of `runs/<name>/`:
    config.yaml        the resolved config (defaults and derived values filled in)
    plan.json          steps, epochs, events; lr_schedule.png
    run.json           status, timings, error if any
    metrics.jsonl      one line per log step and per validation
    tensorboard/       event files
    checkpoints/       step-NNNNNN/ ... the best `num_checkpoints_to_keep` plus the latest (Ray Train manages)
    best/              copy of the best checkpoint
    results.json       final and best metrics, paths
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from tuneforge import __version__
from tuneforge.cluster import ClusterInfo, ensure_ray, local_machine, ray_is_running
from tuneforge.config import TrainConfig, load_config
from tuneforge.errors import ConfigError, TuneforgeError
from tuneforge.io import atomic_dir, write_json, write_text
from tuneforge.plan import TrainingPlan, make_plan, plot_learning_rates


class Reporter(Protocol):
    """Receives what a run is doing; the CLI shows it with Rich, the library default ignores it."""

    def phase(self, message: str) -> None: ...

    def note(self, message: str) -> None: ...

    def event(self, event: dict[str, Any]) -> None: ...


class SilentReporter:
    def phase(self, message: str) -> None:
        pass

    def note(self, message: str) -> None:
        pass

    def event(self, event: dict[str, Any]) -> None:
        pass


@dataclass
class PreparedRun:
    """A validated run that has not touched the disk yet."""

    config: TrainConfig
    model_source: str
    tokenizer: Any
    data: Any  # PreparedData
    plan: TrainingPlan
    run_meta: dict[str, Any]


@dataclass
class RunResult:
    run_dir: Path
    best_checkpoint: Path | None
    best_metrics: dict[str, Any]
    final_metrics: dict[str, Any]
    results: dict[str, Any]


def prepare_run(config: TrainConfig, reporter: Reporter | None = None) -> PreparedRun:
    """Resolve the model, load the tokenizer, read and tokenize the data, compute the plan. Raises a
    TuneforgeError for any bad input; writes nothing."""
    from tuneforge.models import (
        ModelError,
        check_lora_targets,
        ensure_distinct_pad,
        load_model_config,
        load_tokenizer,
        needs_conversion,
        resolve_model,
    )

    reporter = reporter or SilentReporter()
    check_data_files(config)
    if needs_conversion(config.model_id):
        reporter.phase(f"converting bundled {config.model_id} to a cached HF directory (first use only, ~20 s)")
    else:
        reporter.phase(f"resolving model {config.model_id}")
    try:
        source = resolve_model(config.model_id)
        model_config = load_model_config(source, config.model_id, config.trust_remote_code)
    except ModelError as exc:
        raise ModelError(f"{config.source_of('model_id')}: {exc}") from None
    tokenizer = load_tokenizer(source, trust_remote_code=config.trust_remote_code)
    ensure_distinct_pad(tokenizer)
    reporter.phase("reading and tokenizing data")
    data = prepare_data(config, tokenizer, model_max_length(model_config))
    for note in data.notes:
        reporter.note(note)
    check_lora_targets(config, model_config, data.labels)
    config = config.model_copy(update={"context_length": data.context_length})
    plan = make_plan(config, len(data.train))
    if config.num_epochs is None:
        config = config.model_copy(update={"num_epochs": plan.num_epochs})
    run_meta = {
        "tuneforge_version": __version__,
        "task": config.task,
        "model_id": config.model_id,
        "model_source": source,
        "lora": config.uses_lora,
        "shape": data.shape,
        "labels": data.labels,
        "trust_remote_code": config.trust_remote_code,
    }
    if config.task == "causal_lm":
        from tuneforge.data.causal import end_of_turn_token_ids

        run_meta["stop_token_ids"] = end_of_turn_token_ids(tokenizer)
    else:
        run_meta.update(classification_meta(config, data))
    return PreparedRun(config, source, tokenizer, data, plan, run_meta)


def check_data_files(config: TrainConfig) -> None:
    """Data paths that are no file fail before the model is resolved (a bundled model converts for ~20 s)."""
    from tuneforge.data.records import check_data_file
    from tuneforge.errors import DataError

    for key in ("train_path", "valid_path"):
        value = getattr(config, key)
        try:
            if value is not None:
                check_data_file(Path(value), key)
        except DataError as exc:
            raise DataError(f"{config.source_of(key)}: {exc}") from None


def prepare_data(config: TrainConfig, tokenizer: Any, max_length: int | None) -> Any:
    if config.task == "classification":
        from tuneforge.data.classification import prepare_classification

        return prepare_classification(config, tokenizer, max_length)
    from tuneforge.data.prepare import prepare_causal

    return prepare_causal(config, tokenizer, max_length)


def classification_meta(config: TrainConfig, data: Any) -> dict[str, Any]:
    from tuneforge.data.classification import balanced_class_weights

    meta: dict[str, Any] = {"text_fields": config.text_fields, "label_field": config.label_field}
    if config.class_weights == "balanced":
        meta["class_weights"] = balanced_class_weights([example.label for example in data.train], len(data.labels))
    return meta


def model_max_length(model_config: Any) -> int | None:
    for name in ("max_position_embeddings", "n_positions", "max_seq_len"):
        value = getattr(model_config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


# ----------------------------------------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------------------------------------


def train(
    config: TrainConfig,
    *,
    address: str | None = None,
    dashboard: bool = False,
    overwrite: bool = False,
    reporter: Reporter | None = None,
    run_dir: Path | None = None,
    cpus_per_worker: float | None = None,
    callbacks: list[Any] | None = None,
    init_checkpoint: Path | None = None,
    debug: bool = False,
) -> RunResult:
    """Train one run and return where its best checkpoint is. The library entry point of `tuneforge train`.

    `init_checkpoint` starts from a checkpoint's weights, optimizer and step (how a PBT trial takes over its
    donor); `run_dir` places the run exactly there (replacing what is there)."""
    reporter = reporter or SilentReporter()
    prepared = prepare_run(config, reporter)
    run_dir = Path(run_dir) if run_dir else choose_run_dir(prepared.config, overwrite)
    preflight(prepared.config, run_dir, address, cpus_per_worker)
    placement = connect(prepared.config, reporter, address, dashboard, debug, cpus_per_worker)
    start_run_dir(run_dir, prepared, continuing=init_checkpoint is not None)
    resume_step = read_meta_step(init_checkpoint) if init_checkpoint else None
    return execute(prepared, run_dir, placement, reporter, callbacks=callbacks, init_checkpoint=init_checkpoint,
                   resume_step=resume_step)


def resume(run_dir: Path, *, overrides: list[str] | None = None, address: str | None = None, dashboard: bool = False,
           reporter: Reporter | None = None, cpus_per_worker: float | None = None, debug: bool = False) -> RunResult:
    """Continue a run from its latest checkpoint (Ray Train restores it from the run's checkpoint snapshot)."""
    from tuneforge.train.checkpoints import locate_run

    run_dir = locate_run(run_dir)
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        raise TuneforgeError(f"{run_dir}: not a tuneforge run (no config.yaml); give the run directory to --resume")
    config = load_config(saved, overrides)
    reporter = reporter or SilentReporter()
    prepared = prepare_run(config, reporter)
    preflight(prepared.config, run_dir, address, cpus_per_worker)
    placement = connect(prepared.config, reporter, address, dashboard, debug, cpus_per_worker)
    write_text(run_dir / "config.yaml", prepared.config.to_yaml())
    return execute(prepared, run_dir, placement, reporter, resume_step=latest_checkpoint_step(run_dir))


@dataclass
class Placement:
    scaling: Any  # ray.train.ScalingConfig
    local: bool  # a Ray that tuneforge started here: nothing will join it, so waiting for resources is pointless


def connect(config: TrainConfig, reporter: Reporter, address: str | None, dashboard: bool, debug: bool,
            cpus_per_worker: float | None) -> Placement:
    """Start or join Ray and size the workers; refuses a request the machine can never satisfy."""
    reporter.phase("starting Ray" if address is None else f"joining Ray at {address}")
    cluster = ensure_ray(address, dashboard=dashboard, debug=debug)
    return Placement(scaling_config(config, cluster, cpus_per_worker), cluster.local or address is None)


def preflight(config: TrainConfig, run_dir: Path, address: str | None, cpus_per_worker: float | None) -> None:
    """What can be refused before Ray starts (many seconds): a run directory that cannot be created, and on a Ray
    tuneforge would start here, more workers than this machine has CPUs or GPUs for. (RAY_ADDRESS, which Ray
    sets inside its jobs, means joining a cluster: its totals are checked once connected.)"""
    check_writable(run_dir, config.source_of("output_dir"))
    if address is None and not os.environ.get("RAY_ADDRESS") and not ray_is_running():
        machine = local_machine()
        resources, _ = worker_resources(config, machine, cpus_per_worker)
        # Custom resources (accelerator_type:...) are only known once Ray has looked at the hardware.
        check_fits(config, {name: resources[name] for name in ("CPU", "GPU") if name in resources}, machine)


def check_writable(run_dir: Path, at: str) -> None:
    existing = run_dir.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{at}: cannot create {run_dir}: {existing} is a file, not a directory; "
                          "choose another output_dir")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{at}: cannot create {run_dir}: no permission to write in {existing}; "
                          "choose another output_dir")


def read_meta_step(checkpoint: Path) -> int:
    from tuneforge.train.checkpoints import read_meta

    return int(read_meta(Path(checkpoint)).get("step", 0))


def latest_checkpoint_step(run_dir: Path) -> int:
    """The step training will continue from: the latest registered checkpoint (Ray Train always keeps it), or 0."""
    from tuneforge.train.checkpoints import latest_checkpoint, read_meta

    latest = latest_checkpoint(run_dir)
    return int(read_meta(latest).get("step", 0)) if latest else 0


def choose_run_dir(config: TrainConfig, overwrite: bool) -> Path:
    base = Path(config.output_dir)
    if config.run_name:
        run_dir = base / config.run_name
        if run_dir.exists() and not overwrite:
            raise ConfigError(
                f"run directory {run_dir} already exists; continue it with --resume {run_dir}, "
                "replace it with --overwrite, or pick another run_name"
            )
        return run_dir
    run_dir = base / config.source_name
    if run_dir.exists() and not overwrite:
        run_dir = base / f"{config.source_name}-{datetime.now():%Y%m%d-%H%M%S}"
    return run_dir


def start_run_dir(run_dir: Path, prepared: PreparedRun, *, continuing: bool = False) -> None:
    """Create the run directory with its config, plan and schedule plot, all in one rename (an old run of the
    same name, with --overwrite, is replaced only now that the new one is known to be valid).

    `continuing` (a run taking over another checkpoint's lineage, as a PBT trial does) keeps the directory and
    its metrics history, and drops only what belonged to the abandoned lineage: its checkpoints and results."""
    if continuing and run_dir.is_dir():
        import shutil

        for stale in ("checkpoints", "best"):
            shutil.rmtree(run_dir / stale, ignore_errors=True)
        (run_dir / "results.json").unlink(missing_ok=True)
        write_run_files(run_dir, prepared)
        return
    with atomic_dir(run_dir) as staged:
        write_run_files(staged, prepared)


def write_run_files(folder: Path, prepared: PreparedRun) -> None:
    write_text(folder / "config.yaml", prepared.config.to_yaml())
    write_json(folder / "plan.json", {**prepared.plan.to_dict(), "data": data_summary(prepared.data)})
    plot_learning_rates(prepared.config, prepared.plan, folder / "lr_schedule.png")
    write_json(folder / "run.json", {"status": "created", "created": now()})


def data_summary(data: Any) -> dict[str, Any]:
    stats = {name: vars(value) for name, value in data.stats.items()}
    return {"shape": data.shape, "context_length": data.context_length, "stats": stats, "labels": data.labels,
            "notes": data.notes}


def execute(
    prepared: PreparedRun, run_dir: Path, placement: Placement, reporter: Reporter, *, callbacks: list[Any] | None = None,
    resume_step: int | None = None, init_checkpoint: Path | None = None,
) -> RunResult:
    import ray
    from ray.util.queue import Queue

    from tuneforge.train.tracking import Tracker

    events = Queue(actor_options={"num_cpus": 0})
    payload = ray.put({"data": prepared.data, "tokenizer": prepared.tokenizer})
    inputs = {
        "config": prepared.config.model_dump(mode="json"),
        "plan": prepared.plan.to_dict(),
        "model_source": prepared.model_source,
        "run_meta": prepared.run_meta,
        "payload": payload,
        "events": events,
        "checkpoint_root": str((run_dir / "checkpoints").resolve()),
        "init_checkpoint": str(init_checkpoint) if init_checkpoint else None,
        "threads": placement.scaling.resources_per_worker.get("CPU", 1),
    }
    started = time.time()
    status = {"status": "running", "started": now(), "resumed_from_step": resume_step,
              "started_from": str(init_checkpoint) if init_checkpoint else None,
              "workers": prepared.config.num_devices}
    write_json(run_dir / "run.json", status)
    tracker = Tracker(run_dir, resume_step)
    pump = EventPump(events, [tracker.record, reporter.event])
    reporter.phase("training")
    try:
        result = fit(inputs, placement.scaling, prepared.config, run_dir, callbacks,
                     has_validation=bool(prepared.data.valid), local=placement.local)
    except BaseException as exc:
        status.update(status="interrupted" if isinstance(exc, KeyboardInterrupt) else "failed", error=str(exc)[:2000],
                      ended=now())
        write_json(run_dir / "run.json", status)
        raise
    finally:
        pump.stop()
        tracker.close()
        try:
            events.shutdown()
        except Exception:  # noqa: BLE001 - the queue actor may already be gone with a failed run
            pass
    outcome = finalize(run_dir, prepared, result, seconds=time.time() - started)
    write_json(run_dir / "run.json", {**status, "status": "completed", "ended": now()})
    return outcome


def data_counts(data: Any) -> dict[str, Any]:
    """Rows training uses, and how many were truncated to context_length or dropped (no target tokens left)."""
    counts = {name: {"rows": s.rows, "truncated": s.truncated, "dropped": s.dropped} for name, s in data.stats.items()}
    return {**counts["train"], "valid": counts["valid"]}


def fit(inputs: dict[str, Any], scaling: Any, config: TrainConfig, run_dir: Path, callbacks: list[Any] | None,
        *, has_validation: bool, local: bool = True) -> Any:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchTrainer

    from tuneforge.train.loop import train_loop_per_worker

    checkpoint_config = CheckpointConfig(
        num_to_keep=config.num_checkpoints_to_keep,
        checkpoint_score_attribute=config.best_metric if has_validation else None,
        checkpoint_score_order=config.best_mode,
    )
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=inputs,
        scaling_config=scaling,
        run_config=RunConfig(
            name="checkpoints",
            storage_path=str(run_dir.resolve()),
            checkpoint_config=checkpoint_config,
            callbacks=callbacks or [],
            # Workers that cannot be placed within RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S (60 s) end the run with an
            # error instead of Ray retrying forever; on a cluster (--address) a request within its totals (checked
            # by check_fits) may wait for other jobs to free resources.
            failure_config=FailureConfig(max_failures=0, controller_failure_limit=0 if local else -1),
        ),
    )
    try:
        return trainer.fit()
    except Exception as exc:  # noqa: BLE001 - unwrap Ray's wrapper to show the worker's own error
        raise unwrap_training_error(exc) from exc


def unwrap_training_error(exc: Exception) -> Exception:
    controller = getattr(exc, "controller_failure", None)
    if controller is not None and "Timeout" in type(controller).__name__:
        return TuneforgeError("the training workers could not be placed on the cluster in time: Ray has fewer free "
                              "resources than num_devices x worker_resources asks for (other runs may hold them)")
    failures = getattr(exc, "worker_failures", None)
    if failures:
        rank, error = sorted(failures.items())[0]
        cause = getattr(error, "cause", None) or error
        if isinstance(cause, TuneforgeError):
            return cause
        return TuneforgeError(f"training failed on worker {rank}: {type(cause).__name__}: {first_line(cause)}")
    return exc if isinstance(exc, TuneforgeError) else TuneforgeError(f"training failed: {first_line(exc)}")


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1] if text else type(exc).__name__


def scaling_config(config: TrainConfig, cluster: ClusterInfo, cpus_per_worker: float | None) -> Any:
    """One worker per device. Without explicit worker_resources, CPU workers split the CPUs between them (each
    worker's torch uses that many threads) and GPU workers take one GPU each."""
    from ray.train import ScalingConfig

    resources, use_gpu = worker_resources(config, cluster, cpus_per_worker)
    check_fits(config, resources, cluster)
    return ScalingConfig(num_workers=config.num_devices, use_gpu=use_gpu, resources_per_worker=resources)


def worker_resources(config: TrainConfig, cluster: ClusterInfo,
                     cpus_per_worker: float | None) -> tuple[dict[str, float], bool]:
    """What each worker asks Ray for, and whether workers use GPUs."""
    resources = dict(config.worker_resources or {})
    use_gpu = resources.get("GPU", 0) > 0 or any(key.startswith("accelerator_type") for key in resources) or (
        cluster.gpus >= 1 and "GPU" not in resources
    )
    if use_gpu:
        resources.setdefault("GPU", 1)
    if cpus_per_worker is not None:
        resources["CPU"] = cpus_per_worker
    elif "CPU" not in resources:
        share = cluster.cpus // config.num_devices if not use_gpu else min(8.0, cluster.cpus // config.num_devices)
        resources["CPU"] = max(1.0, min(share, cluster.max_node_cpus or share))
    return resources, use_gpu


def check_fits(config: TrainConfig, resources: dict[str, float], cluster: ClusterInfo) -> None:
    """A request Ray can never satisfy would wait forever, so it is refused with what Ray has, naming the config
    line: on a local Ray nothing will ever join, and a cluster's (--address) totals are what it can offer."""
    at, workers = config.source_of("num_devices"), config.num_devices
    where = "this machine has" if cluster.local else "the Ray cluster has"
    fix = "join a cluster with --address" if cluster.local else "add nodes to the cluster"
    for name, each in resources.items():
        need, have = workers * each, cluster.resources.get(name, 0.0)
        if need > have + 1e-9:
            raise ConfigError(f"{at}: num_devices {workers} x {each:g} {name} per worker needs {need:g} {name} but "
                              f"{where} {have:g}; lower num_devices or worker_resources.{name}, or {fix}")
    if not any(all(node.get(name, 0.0) + 1e-9 >= each for name, each in resources.items())
               for node in cluster.node_resources):
        wanted = ", ".join(f"{each:g} {name}" for name, each in resources.items())
        raise ConfigError(f"{at}: one worker needs {wanted} on a single node but no node of the Ray cluster has "
                          f"that much; lower worker_resources, or {fix}")


class EventPump:
    """Moves the workers' events from the Ray queue to the tracker and reporter, on a background thread."""

    def __init__(self, queue: Any, sinks: list[Any]):
        self.queue, self.sinks = queue, sinks
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, name="tuneforge-events", daemon=True)
        self.thread.start()

    def run(self) -> None:
        from ray.util.queue import Empty

        while True:
            try:
                event = self.queue.get(timeout=0.25)
            except Empty:
                if self.stopping.is_set():
                    return
                continue
            except Exception:  # noqa: BLE001 - the queue actor died with the run
                return
            for sink in self.sinks:
                sink(event)

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=10)


def finalize(run_dir: Path, prepared: PreparedRun, result: Any, seconds: float) -> RunResult:
    """Copy the best checkpoint to best/ and write results.json (both atomically)."""
    from tuneforge.train.tracking import read_metrics

    config = prepared.config
    ranked = [(Path(checkpoint.path), metrics) for checkpoint, metrics in (result.best_checkpoints or [])]
    best_path, best_metrics = pick_best(ranked, config)
    if best_path is not None:
        copy_checkpoint(best_path, run_dir / "best")
    history = read_metrics(run_dir)
    steps = [row for row in history if row.get("type") == "step"]
    evals = [row for row in history if row.get("type") == "eval"]
    results = {
        "run_dir": str(run_dir),
        "task": config.task,
        "model_id": config.model_id,
        "best_checkpoint": str(run_dir / "best") if best_path else None,
        "best_checkpoint_source": str(best_path) if best_path else None,
        "best_metric": config.best_metric,
        "best_metrics": best_metrics,
        "final_metrics": evals[-1] if evals else {},
        "checkpoints": [str(path) for path, _ in ranked],
        "steps": prepared.plan.total_steps,
        "epochs": prepared.plan.num_epochs,
        "data": data_counts(prepared.data),
        "train_seconds": round(seconds, 2),
        "tokens_per_second": mean_throughput(steps),
        "first_train_loss": steps[0]["loss"] if steps else None,
        "last_train_loss": steps[-1]["loss"] if steps else None,
    }
    write_json(run_dir / "results.json", results)
    return RunResult(run_dir, run_dir / "best" if best_path else None, best_metrics, results["final_metrics"], results)


def pick_best(ranked: list[tuple[Path, dict[str, Any]]], config: TrainConfig) -> tuple[Path | None, dict[str, Any]]:
    scored = [(path, metrics) for path, metrics in ranked if config.best_metric in metrics]
    if not scored:
        return (ranked[-1][0], ranked[-1][1]) if ranked else (None, {})
    chooser = min if config.best_mode == "min" else max
    return chooser(scored, key=lambda item: item[1][config.best_metric])


def copy_checkpoint(source: Path, target: Path) -> None:
    import shutil

    with atomic_dir(target) as staged:
        shutil.copytree(source, staged, dirs_exist_ok=True)


def mean_throughput(steps: list[dict[str, Any]]) -> float | None:
    tokens = sum(row.get("tokens", 0.0) for row in steps)
    seconds = sum(row.get("step_seconds", 0.0) for row in steps)
    return round(tokens / seconds, 1) if seconds else None


def now() -> str:
    return datetime.now().isoformat(timespec="seconds")
