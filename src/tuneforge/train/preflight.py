"""Everything that can be wrong with a run, found before the run directory exists or Ray starts: the config, the
data, the model id, the LoRA targets, the output directory and the resources asked for. Writes nothing, except the
tokenized shards of streamed data (a cache under output_dir, data/streaming.py)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tuneforge import __version__
from tuneforge.cluster import ClusterInfo, local_machine, ray_is_running
from tuneforge.config import TrainConfig, tracking_keys
from tuneforge.errors import ConfigError
from tuneforge.plan import TrainingPlan, make_plan
from tuneforge.rundir import CheckpointMeta
from tuneforge.tasks import Task, get_task
from tuneforge.train.starting_point import StartingPoint, starting_point


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
    meta: CheckpointMeta  # what every checkpoint of the run will say about itself (step and metrics added)
    samples: list[dict[str, Any]] = field(default_factory=list)  # raw validation rows for later stages
    start: StartingPoint = field(default_factory=StartingPoint)  # init_from and reference, resolved

    @property
    def task(self) -> Task:
        return get_task(self.config.task)


def prepare_run(config: TrainConfig, reporter: Reporter | None = None) -> PreparedRun:
    """Resolve the model, load the tokenizer, read and tokenize the data, compute the plan. Raises a
    TuneforgeError for any bad input; writes nothing but the cache of streamed data's shards (data.streaming)."""
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
    task = get_task(config.task)
    check_data_files(config)
    start = starting_point(config)
    if start.base_dir is not None:
        reporter.phase(f"starting from the fully fine-tuned weights of {start.base_dir}")
    elif needs_conversion(config.model_id):
        reporter.phase(f"converting bundled {config.model_id} to a cached HF directory (first use only, ~20 s)")
    else:
        reporter.phase(f"resolving model {config.model_id}")
    model_id = str(start.base_dir) if start.base_dir else config.model_id
    try:
        source = resolve_model(model_id)
        model_config = load_model_config(source, model_id, config.trust_remote_code)
    except ModelError as exc:
        raise ModelError(f"{config.source_of('model_id')}: {exc}") from None
    tokenizer = load_tokenizer(str(start.tokenizer_dir or source), trust_remote_code=config.trust_remote_code)
    ensure_distinct_pad(tokenizer)
    reporter.phase("reading and tokenizing data")
    data = task.prepare_data(config, tokenizer, model_max_length(model_config), progress=reporter.event)
    if config.eval_generate:
        from tuneforge.train.generation import check_generation_setup

        check_generation_setup(config, data)
    for note in data.notes:
        reporter.note(note)
    check_lora_targets(config, model_config, data.labels)
    config = config.model_copy(update={"context_length": data.context_length,
                                       "padding_free": resolve_padding_free(config, task, model_config, data.context_length),
                                       **task.resolved_keys(config), **tracking_keys(config)})
    plan = make_plan(config, data.train_rows)
    if config.num_epochs is None:
        config = config.model_copy(update={"num_epochs": plan.num_epochs})
    meta = CheckpointMeta(
        tuneforge_version=__version__, task=task.name, model_id=model_id, model_source=source,
        lora=config.uses_lora, trust_remote_code=config.trust_remote_code, shape=data.shape, labels=data.labels,
        context_length=data.context_length, **task.run_facts(config, tokenizer, data),
    )
    return PreparedRun(config, source, tokenizer, data, plan, meta, task.validation_samples(data), start)


def resolve_padding_free(config: TrainConfig, task: Task, model_config: Any, context_length: int) -> bool:
    """padding_free as asked, or by default wherever the task and model support it."""
    if config.padding_free is False:
        return False
    blocker = task.padding_free_blocker(config, model_config, context_length)
    if config.padding_free and blocker:
        raise ConfigError(f"{config.source_of('padding_free')}: padding_free: {blocker}; remove the key to train on "
                          "padded batches")
    return blocker is None


def check_data_files(config: TrainConfig) -> None:
    """Data paths that name no data fail before the model is resolved (a bundled model converts for ~20 s)."""
    from tuneforge.data.records import check_data_file
    from tuneforge.data.sources import is_many, resolve_data
    from tuneforge.errors import DataError

    task = get_task(config.task)
    if config.streaming and not task.spec.reads_datasets:
        raise ConfigError(f"{config.source_of('streaming')}: streaming: the {task.name} task reads its data in memory; "
                          "remove the key")
    for key in ("train_path", "valid_path"):
        value = getattr(config, key)
        if value is None:
            continue
        try:
            if not is_many(value):
                check_data_file(Path(value), key)
            elif task.spec.reads_datasets:
                resolve_data(value, key)
            else:
                raise DataError(f"{value}: the {task.name} task reads one file; directories, globs and URIs are read "
                                "by the causal_lm task")
        except DataError as exc:
            raise DataError(f"{config.source_of(key)}: {exc}") from None


def check_trackers(config: TrainConfig) -> None:
    """MLflow named without the package, or at a server that does not answer: one line before Ray starts."""
    if "mlflow" not in config.trackers:
        return
    from tuneforge.observe.mlflow_runs import check_tracking

    uri = tracking_keys(config)["mlflow_tracking_uri"]
    check_tracking(uri, config.source_of("trackers"), config.source_of("mlflow_tracking_uri"))


def model_max_length(model_config: Any) -> int | None:
    for name in ("max_position_embeddings", "n_positions", "max_seq_len"):
        value = getattr(model_config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_before_ray(config: TrainConfig, run_dir: Path, address: str | None, cpus_per_worker: float | None) -> None:
    """What can be refused before Ray starts (many seconds): a run directory that cannot be created, and on a Ray
    tuneforge would start here, more workers than this machine has CPUs or GPUs for. (RAY_ADDRESS, which Ray
    sets inside its jobs, means joining a cluster: its totals are checked once connected.)"""
    check_writable(run_dir, config.source_of("output_dir"))
    check_storage(config)
    if address is None and not os.environ.get("RAY_ADDRESS") and not ray_is_running():
        machine = local_machine()
        resources, _ = worker_resources(config, machine, cpus_per_worker)
        # Custom resources (accelerator_type:...) are only known once Ray has looked at the hardware.
        check_fits(config, {name: resources[name] for name in ("CPU", "GPU") if name in resources}, machine)


def check_storage(config: TrainConfig) -> None:
    """A storage_path URI whose filesystem pyarrow cannot open fails now, not at the first checkpoint."""
    storage = config.storage_path
    if not storage:
        return
    if "://" not in storage:
        check_writable(Path(storage), config.source_of("storage_path"))
        return
    from pyarrow import fs

    from tuneforge.data.sources import first_line

    try:
        filesystem, base = fs.FileSystem.from_uri(storage)
        filesystem.get_file_info(base)
    except Exception as exc:  # noqa: BLE001 - pyarrow's errors differ by scheme (no credentials, no such bucket)
        raise ConfigError(f"{config.source_of('storage_path')}: cannot open {storage} through pyarrow ({first_line(exc)}); "
                          "check the URI, your credentials and that the storage is reachable from here") from None


def check_writable(run_dir: Path, at: str) -> None:
    from tuneforge.train.disk import nearest_existing

    existing = nearest_existing(run_dir)
    if not existing.is_dir():
        raise ConfigError(f"{at}: cannot create {run_dir}: {existing} is a file, not a directory; "
                          "choose another output_dir")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{at}: cannot create {run_dir}: no permission to write in {existing}; "
                          "choose another output_dir")


def worker_resources(config: TrainConfig, cluster: ClusterInfo,
                     cpus_per_worker: float | None) -> tuple[dict[str, float], bool]:
    """What each worker asks Ray for, and whether workers use GPUs. Without explicit worker_resources, CPU workers
    split the CPUs between them (each worker's torch uses that many threads) and GPU workers take one GPU each."""
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
    # An elastic run (min_devices) starts with what fits, down to min_devices.
    at, workers = config.source_of("num_devices"), config.min_devices or config.num_devices
    where = "this machine has" if cluster.local else "the Ray cluster has"
    fix = "join a cluster with --address" if cluster.local else "add nodes to the cluster"
    for name, each in resources.items():
        need, have = workers * each, cluster.resources.get(name, 0.0)
        if need > have + 1e-9:
            count = f"min_devices {workers}" if config.min_devices else f"num_devices {workers}"
            raise ConfigError(f"{at}: {count} x {each:g} {name} per worker needs {need:g} {name} but "
                              f"{where} {have:g}; lower num_devices or worker_resources.{name}, or {fix}")
    if not any(all(node.get(name, 0.0) + 1e-9 >= each for name, each in resources.items())
               for node in cluster.node_resources):
        wanted = ", ".join(f"{each:g} {name}" for name, each in resources.items())
        raise ConfigError(f"{at}: one worker needs {wanted} on a single node but no node of the Ray cluster has "
                          f"that much; lower worker_resources, or {fix}")
