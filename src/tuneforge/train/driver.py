"""The Ray driver of a training run: start or join Ray, lay out the run directory, train on Ray Train, keep the
best checkpoint. What it runs was validated by `preflight` first; the files it writes before and after Ray are
`run_files`'; the run directory's layout is `rundir.RunDir`'s.
A run directory is complete when it has `results.json`; `run.json` says whether it is running, completed, failed or
interrupted."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tuneforge.atomic import write_text
from tuneforge.cluster import ClusterInfo, ensure_ray, ray_is_running
from tuneforge.config import TrainConfig, load_config
from tuneforge.errors import Stopped, TuneforgeError
from tuneforge.observe.training import run_tags
from tuneforge.rundir import (
    RAY_SNAPSHOT,
    CheckpointMeta,
    RunDir,
    checkpoint_store,
    now,
    snapshot_is_damaged,
    stored_latest_step,
)
from tuneforge.train import reference
from tuneforge.train.disk import disk_full_error, out_of_space
from tuneforge.train.liveness import Process, wait_until_gone
from tuneforge.train.preflight import (
    PreparedRun,
    Reporter,
    SilentReporter,
    check_before_ray,
    check_fits,
    prepare_run,
    worker_resources,
)
from tuneforge.train.run_files import RunResult, choose_run_dir, finalize, start_run_dir
from tuneforge.train.startup import StartupClock
from tuneforge.train.stopping import end_stop_request, new_stop_name, stop_on_sigterm

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
    clock = StartupClock()
    start_ray_for_data(config, reporter, address, dashboard, debug)
    prepared = prepare_run(config, reporter)
    clock.mark("config, model files, data")
    run = RunDir(run_dir) if run_dir else choose_run_dir(prepared.config, overwrite)
    check_before_ray(prepared.config, run.path, address, cpus_per_worker)
    placement = connect(prepared.config, reporter, address, dashboard, debug, cpus_per_worker)
    clock.mark("Ray")
    start_run_dir(run, prepared, continuing=init_checkpoint is not None)
    resume_step = CheckpointMeta.read(init_checkpoint).step if init_checkpoint else None
    return execute(prepared, run, placement, reporter, callbacks=callbacks, init_checkpoint=init_checkpoint,
                   resume_step=resume_step, clock=clock)


def resume(run_dir: Path, *, overrides: list[str] | None = None, address: str | None = None, dashboard: bool = False,
           reporter: Reporter | None = None, cpus_per_worker: float | None = None, debug: bool = False) -> RunResult:
    """Continue a run from its latest checkpoint (Ray Train restores it from the run's checkpoint snapshot)."""
    run = RunDir.locate(run_dir)
    if not run.is_run():
        raise TuneforgeError(f"{run.path}: not a tuneforge run (no config.yaml); give the run directory to --resume")
    config = load_config(run.config_file, overrides)
    reporter = reporter or SilentReporter()
    clock = StartupClock()
    start_ray_for_data(config, reporter, address, dashboard, debug)
    prepared = prepare_run(config, reporter)
    clock.mark("config, model files, data")
    check_before_ray(prepared.config, run.path, address, cpus_per_worker)
    placement = connect(prepared.config, reporter, address, dashboard, debug, cpus_per_worker)
    clock.mark("Ray")
    wait_for_earlier_processes(run, reporter)
    write_text(run.config_file, prepared.config.to_yaml())
    if prepared.config.storage_path:  # Ray Train finds the latest checkpoint in the store itself
        init_checkpoint, resume_step = None, stored_latest_step(checkpoint_store(run.path, prepared.config.storage_path))
    else:
        init_checkpoint, resume_step = set_aside_damaged_snapshot(run, reporter), run.latest_step()
    return execute(prepared, run, placement, reporter, resume_step=resume_step, init_checkpoint=init_checkpoint,
                   clock=clock)


def start_ray_for_data(config: TrainConfig, reporter: Reporter, address: str | None, dashboard: bool,
                       debug: bool) -> None:
    """Streamed data is tokenized by Ray Data while the run is prepared, so Ray (the cluster, with --address)
    starts first."""
    from tuneforge.data.streaming import wants_streaming
    from tuneforge.taskspec import get_spec
    from tuneforge.train.preflight import check_data_files, check_trackers

    check_data_files(config)  # a path that names no data: one line naming the config's line, before Ray starts
    check_trackers(config)
    if get_spec(config.task).reads_datasets and wants_streaming(config):
        reporter.phase("starting Ray" if address is None else f"joining Ray at {address}")
        ensure_ray(address, dashboard=dashboard, debug=debug)


EARLIER_WORKERS_WAIT_S = 120.0


def wait_for_earlier_processes(run: RunDir, reporter: Reporter) -> None:
    """A run marked running whose driver is alive is refused; the workers of a driver that was killed are waited
    for (Ray stops them seconds after the driver), so that only one lineage ever writes to the run."""
    state = run.state()
    if state.status != "running" or not state.driver:
        return
    driver = Process(**state.driver)
    if driver.local and driver.running():  # a driver on another machine cannot be checked from here
        raise TuneforgeError(f"{run.path} is still being trained by process {driver.pid} on {driver.node}; stop it "
                             "(Ctrl-C) or wait for it to end before --resume")
    workers = [Process(a["node"], a["worker_pid"], a.get("worker_started")) for a in state.attempts
               if a.get("worker_pid") and a.get("node")]
    if any(worker.running() for worker in workers):
        reporter.phase("waiting for the workers of the run's killed driver to stop")
    left = wait_until_gone(workers, EARLIER_WORKERS_WAIT_S)
    if left:
        raise TuneforgeError(f"{run.path}: the workers of its killed driver (pid {', '.join(str(p.pid) for p in left)}) "
                             f"are still running after {EARLIER_WORKERS_WAIT_S:.0f} s; stop them before --resume")


def set_aside_damaged_snapshot(run: RunDir, reporter: Reporter) -> Path | None:
    """Ray Train rewrites its checkpoint record in place, so a kill at that moment leaves it unreadable and Ray
    would refuse to start. The record is moved aside and the run continues from its latest whole checkpoint (Ray
    then keeps best-k among the checkpoints it writes from here on; the earlier ones stay on disk)."""
    if not snapshot_is_damaged(run.checkpoints_dir):
        return None
    damaged = run.checkpoints_dir / RAY_SNAPSHOT
    damaged.rename(damaged.with_name(f"{RAY_SNAPSHOT}.damaged-{int(time.time())}"))
    latest = run.latest_checkpoint()
    where = f"its latest whole checkpoint, {latest.name}" if latest else "the start (no whole checkpoint found)"
    reporter.note(f"{damaged} was cut short (killed while Ray wrote it): set aside; continuing from {where}")
    return latest


@dataclass
class Placement:
    scaling: Any  # ray.train.ScalingConfig
    local: bool  # a Ray that tuneforge started here: nothing will join it, so waiting for resources is pointless


def connect(config: TrainConfig, reporter: Reporter, address: str | None, dashboard: bool, debug: bool,
            cpus_per_worker: float | None) -> Placement:
    """Start or join Ray and size the workers; refuses a request the machine can never satisfy."""
    if not ray_is_running():  # else started already, for streamed data
        reporter.phase("starting Ray" if address is None else f"joining Ray at {address}")
    cluster = ensure_ray(address, dashboard=dashboard, debug=debug)
    return Placement(scaling_config(config, cluster, cpus_per_worker), cluster.local or address is None)


def execute(
    prepared: PreparedRun, run: RunDir, placement: Placement, reporter: Reporter, *, callbacks: list[Any] | None = None,
    resume_step: int | None = None, init_checkpoint: Path | None = None, clock: StartupClock | None = None,
) -> RunResult:
    import ray
    from ray.util.queue import Queue

    from tuneforge.train.loop import WorkerInputs
    from tuneforge.train.tracking import Tracker

    events = Queue(actor_options=on_this_node())
    reference_key = reference.reference_key(prepared)
    offered = reference.cached_reference(run.reference_file, reference_key)
    inputs = WorkerInputs(
        config=prepared.config.model_dump(mode="json"),
        plan=prepared.plan.to_dict(),
        model_source=prepared.model_source,
        meta=prepared.meta,
        payload=ray.put({"data": prepared.data, "tokenizer": prepared.tokenizer, "reference": offered,
                         "reference_key": reference_key}),
        events=events,
        checkpoint_root=checkpoint_store(run.path, prepared.config.storage_path),
        init_checkpoint=str(init_checkpoint) if init_checkpoint else None,
        threads=placement.scaling.resources_per_worker.get("CPU", 1),
        import_paths=[os.getcwd()],
        task=prepared.task,
        driver=Process.current(),
        metric_tags=run_tags(run.path),
        init_adapter=str(prepared.start.init_dir) if prepared.start.init_dir else None,
        reference_adapter=str(prepared.start.reference_dir) if prepared.start.reference_dir else None,
        stop_request=new_stop_name(),
    )
    started = time.time()
    tracker = Tracker(run, resume_step, prepared.config, reporter.note)
    run.update_state(status="running", started=now(), ended=None, error=None, resumed_from_step=resume_step,
                     started_from=str(init_checkpoint) if init_checkpoint else None,
                     workers=prepared.config.num_devices, driver=asdict(inputs.driver), attempts=[])
    clock = clock or StartupClock()
    clock.mark("run directory, data into Ray's object store")

    attempts: list[dict[str, Any]] = []

    def record_start(event: dict[str, Any]) -> None:
        """Each "start" is one attempt of the worker group: the first, or Ray Train's restart after a failure (on
        fewer or more workers, for an elastic run)."""
        if event.get("type") != "start":
            return
        attempts.append({"step": event.get("step", 0), "time": now(), "worker_pid": event.get("pid"),
                         "worker_started": event.get("pid_started"), "node": event.get("node"),
                         "ray_nodes": event.pop("ray_nodes", None), "workers": event.get("world_size"),
                         "gradient_accumulation": event.get("gradient_accumulation")})
        startup = event.pop("startup", None)
        if len(attempts) > 1:
            event["restart"] = len(attempts) - 1
            resized = worker_count_change(attempts[-2], attempts[-1], prepared.plan.global_batch_size)
            if resized:
                event["resized"] = resized
        elif startup:  # the start-up breakdown is measured from this driver's clock: the first attempt's only
            event["startup_seconds"] = clock.breakdown(startup)
            run.update_state(startup=event["startup_seconds"])
        run.update_state(attempts=attempts)

    stops: list[int] = []

    def record_stop(event: dict[str, Any]) -> None:
        if event.get("type") == "stopped":
            stops.append(int(event["step"]))

    keeper = reference.ReferenceKeeper(run)
    pump = EventPump(events, [record_start, record_stop, keeper.record, tracker.record, reporter.event])
    reporter.phase("training")
    try:
        with stop_on_sigterm(inputs.stop_request, on_this_node(), reporter.note, prepared.config.stop_grace_s):
            result = fit(inputs, placement.scaling, prepared.config, callbacks,
                         has_validation=bool(prepared.data.valid), local=placement.local, stream=prepared.data.stream)
    except BaseException as exc:
        interrupted = isinstance(exc, KeyboardInterrupt)
        full = out_of_space(exc) or out_of_space(pump.failure)
        stop_events(pump, tracker, events, inputs.stop_request)
        with contextlib.suppress(OSError):  # run.json itself may not fit on a full disk
            run.update_state(status="interrupted" if interrupted else "failed", error=str(exc)[:2000], ended=now())
        tracker.finish("KILLED" if interrupted else "FAILED")
        if full:
            raise disk_full_error(run, "the next checkpoint") from None
        raise
    stop_events(pump, tracker, events, inputs.stop_request)
    if out_of_space(pump.failure):  # metrics.jsonl or the display could not keep up: the run's record is not whole
        raise disk_full_error(run, f"the run's metrics ({pump.failure})")
    if stops:  # the workers checkpointed and stopped before the last step (a stop asked after it changes nothing)
        stopped_gracefully(run, tracker, stops[-1], prepared.plan.total_steps)
    try:
        outcome = finalize(run, prepared, result, seconds=time.time() - started)
    except OSError as exc:
        if out_of_space(exc):  # best/ and results.json are written whole or not at all: resume writes them
            raise disk_full_error(run, "best/ and results.json") from None
        raise
    run.update_state(status="completed", ended=now())
    from tuneforge.report import write_report

    outcome.report = write_report([run.path])
    tracker.finish("FINISHED")
    return outcome


def worker_count_change(before: dict[str, Any], after: dict[str, Any], global_batch: int) -> str | None:
    """How an elastic restart changed the worker group, in words; None when it kept its size."""
    if not before.get("workers") or before.get("workers") == after.get("workers"):
        return None
    why = "fewer fit now" if after["workers"] < before["workers"] else "the cluster has room again"
    return (f"{why}: {before['workers']} → {after['workers']} workers, gradient accumulation "
            f"{before.get('gradient_accumulation')} → {after.get('gradient_accumulation')}: the global batch stays "
            f"{global_batch} rows")


def stopped_gracefully(run: RunDir, tracker: Any, step: int, total_steps: int) -> None:
    """The workers checkpointed and stopped on request: the run is interrupted at that step, to be resumed."""
    run.update_state(status="interrupted", stopped_by="SIGTERM", stopped_at_step=step, ended=now())
    tracker.finish("KILLED")
    raise Stopped(f"stopped at step {step} of {total_steps} on SIGTERM, its checkpoint written: `tuneforge train "
                  f"--resume {run.path}` continues from there")


def on_this_node() -> dict[str, Any]:
    """Options of a helper actor the driver needs for the whole run (the event queue): on the driver's own node, so
    that losing another node mid-run never takes it along."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    return {"num_cpus": 0, "scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=here, soft=False)}


def stop_events(pump: EventPump, tracker: Any, events: Any, stop_request: str) -> None:
    """Deliver the workers' last events, then close the run's metrics, and end the run's helper actors (each holds a
    Ray worker process, which a library user's next runs in the same session would otherwise keep)."""
    pump.stop()
    tracker.close()
    with contextlib.suppress(Exception):  # the actors may already be gone with a failed run
        events.shutdown()
    end_stop_request(stop_request)


def fit(inputs: Any, scaling: Any, config: TrainConfig, callbacks: list[Any] | None,
        *, has_validation: bool, local: bool = True, stream: Any = None) -> Any:
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
        train_loop_config={"inputs": inputs},
        scaling_config=scaling,
        run_config=RunConfig(
            # Ray Train keeps the checkpoints in storage_path/name: inputs.checkpoint_root, maybe a URI.
            name=inputs.checkpoint_root.rsplit("/", 1)[1],
            storage_path=inputs.checkpoint_root.rsplit("/", 1)[0],
            checkpoint_config=checkpoint_config,
            callbacks=callbacks or [],
            # Workers that cannot be placed within RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S (60 s) end the run with an
            # error instead of Ray retrying forever; on a cluster (--address) a request within its totals (checked
            # by check_fits) may wait for other jobs to free resources.
            failure_config=FailureConfig(max_failures=failures_allowed(config.max_failures, local),
                                         controller_failure_limit=0 if local else -1),
        ),
        **streamed_datasets(stream, config.seed),
    )
    try:
        with elastic_restarts_shortened(scaling):
            return trainer.fit()
    except Exception as exc:  # noqa: BLE001 - unwrap Ray's wrapper to show the worker's own error
        raise unwrap_training_error(exc) from exc


def streamed_datasets(stream: Any, seed: int) -> dict[str, Any]:
    """The trainer's datasets for a streamed run. Kept in order, so that one worker sees the same rows in the same
    order on a resume; with several workers Ray Data hands blocks to whichever asks first."""
    if stream is None:
        return {}
    from ray.data import ExecutionOptions
    from ray.train import DataConfig

    from tuneforge.data.streaming import training_dataset

    return {"datasets": {"train": training_dataset(stream, seed)},
            "dataset_config": DataConfig(execution_options=ExecutionOptions(preserve_order=True))}


def failures_allowed(setting: int | None, local: bool) -> int:
    """Restarts after a failure (of a worker group, or of a search trial): none by default on the Ray tuneforge
    starts here (a failure there is almost always the code or the data, and would fail again), a few on a cluster,
    where nodes come and go."""
    if setting is not None:
        return setting
    return 0 if local else 3


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
    if config.min_devices is None:
        return ScalingConfig(num_workers=config.num_devices, use_gpu=use_gpu, resources_per_worker=resources,
                             placement_strategy=config.placement_strategy)
    return ScalingConfig(num_workers=(config.min_devices, config.num_devices), use_gpu=use_gpu,
                         resources_per_worker=resources, placement_strategy=config.placement_strategy,
                         elastic_resize_monitor_interval_s=config.elastic_resize_interval_s)


START_TIMEOUT_VARIABLE, ELASTIC_START_TIMEOUT_S = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "30"


@contextlib.contextmanager
def elastic_restarts_shortened(scaling: Any) -> Iterator[None]:
    """After a node is lost, Ray Train's elastic policy sizes the new worker group from a view of the cluster it
    refreshes every 20 s, so its first try may still ask for the lost node's workers and wait out the worker group
    start timeout (60 s) before it tries again with what is left. An elastic run only asks for what that view says
    fits, so a shorter wait costs nothing else. Ray hands the variable to its controller when fit() starts; a value
    the user set wins."""
    if not isinstance(scaling.num_workers, tuple) or START_TIMEOUT_VARIABLE in os.environ:
        yield
        return
    os.environ[START_TIMEOUT_VARIABLE] = ELASTIC_START_TIMEOUT_S
    try:
        yield
    finally:
        os.environ.pop(START_TIMEOUT_VARIABLE, None)


class EventPump:
    """Moves the workers' events from the Ray queue to the tracker and reporter, on a background thread."""

    WAIT_SECONDS = 5.0
    STOP = {"type": "tuneforge-events-end"}

    def __init__(self, queue: Any, sinks: list[Any]):
        self.queue, self.sinks = queue, sinks
        self.failure: OSError | None = None  # the first write a sink could not make (a full disk)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, name="tuneforge-events", daemon=True)
        self.thread.start()

    def run(self) -> None:
        from ray.util.queue import Empty

        while True:
            try:
                # Each wait is a call to the queue actor: a long one keeps that actor off the training's CPUs.
                event = self.queue.get(timeout=self.WAIT_SECONDS)
            except Empty:
                if self.stopping.is_set():
                    return
                continue
            except Exception:  # noqa: BLE001 - the queue actor died with the run
                return
            if event == self.STOP:
                return
            for sink in self.sinks:
                try:
                    sink(event)
                except OSError as exc:  # kept for the driver to report; the other sinks (the display) go on
                    self.failure = self.failure or exc

    def stop(self) -> None:
        """Deliver what the workers sent, then end: the stop marker queues behind their last event."""
        self.stopping.set()
        try:
            self.queue.put(self.STOP, timeout=5)
        except Exception:  # noqa: BLE001 - no queue actor left: the thread ends on its next wait
            pass
        self.thread.join(timeout=self.WAIT_SECONDS + 10)


