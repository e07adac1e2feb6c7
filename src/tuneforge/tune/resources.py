"""Resources are planned, not hoped for: each trial holds a sliver of a CPU itself, its Ray Train workers get their
share of the machine, and a search whose single trial cannot fit is refused at once instead of waiting forever."""

from __future__ import annotations

import math
from dataclasses import dataclass

from tuneforge.config import TrainConfig, TuneSettings
from tuneforge.errors import ConfigError

TRIAL_CPU = 0.01  # what a trial's own process reserves: it only waits on its Ray Train workers


@dataclass(frozen=True)
class ResourcePlan:
    concurrency: int
    cpus_per_worker: float
    threads_per_worker: int
    gpus_per_worker: float


def plan_resources(config: TrainConfig, settings: TuneSettings, cpus: float, gpus: float) -> ResourcePlan:
    """How many trials run at once and what each trial's workers get. A trial holds TRIAL_CPU itself, its
    workers hold the rest; a plan where even one trial cannot fit is refused."""
    fixed = dict(config.worker_resources or {})
    gpu_each = fixed.get("GPU", 1.0 if gpus >= 1 else 0.0)
    fits = gpu_trials(config, gpus, gpu_each) if gpu_each else cpu_trials(config, cpus, fixed)
    concurrency = min(settings.max_concurrent_trials, fits) if settings.max_concurrent_trials else fits
    if "CPU" in fixed:
        per_worker = fixed["CPU"]
    else:
        per_worker = (cpus - concurrency * TRIAL_CPU) / (concurrency * config.num_devices)
        per_worker = math.floor(per_worker * 1000) / 1000
    return ResourcePlan(concurrency, per_worker, max(1, int(per_worker)), gpu_each)


def gpu_trials(config: TrainConfig, gpus: float, gpu_each: float) -> int:
    """Trials that fit side by side on the GPUs; refused when not even one does."""
    workers = config.num_devices
    fits = int(gpus // (workers * gpu_each))
    if fits < 1:
        raise ConfigError(f"one trial needs {workers * gpu_each:g} GPU(s) ({workers} workers) but the cluster has "
                          f"{gpus:g}; lower num_devices")
    return fits


def cpu_trials(config: TrainConfig, cpus: float, fixed: dict[str, float]) -> int:
    """Trials that fit side by side on the CPUs; refused only when fixed worker CPUs make one trial too big."""
    workers = config.num_devices
    cpu_floor = fixed.get("CPU", 1.0)
    reserve = TRIAL_CPU if "CPU" in fixed else 0.0  # without fixed CPUs the workers absorb the trial's sliver
    fits = int((cpus + 1e-9) // (workers * cpu_floor + reserve))
    if fits < 1 and "CPU" in fixed:
        raise ConfigError(f"one trial needs {workers} x {cpu_floor:g} CPU + {TRIAL_CPU} for the trial itself but "
                          f"the cluster has {cpus:g} CPUs; lower num_devices or worker_resources.CPU")
    return max(fits, 1)  # fractional CPUs per worker make one trial fit even with more workers than cores
