"""Connecting to Ray: a local instance started for the user, or an existing cluster (`--address`).

Safe defaults: usage statistics off, no dashboard unless asked for (then bound to 127.0.0.1), worker logs kept
out of the terminal (they stay in Ray's session log directory) unless debugging.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from tuneforge.errors import TuneforgeError

# Variables the workers must see as the driver does (caches, offline mode, tuneforge's model cache).
FORWARDED_ENV = ("TUNEFORGE_HOME", "HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE")


@dataclass(frozen=True)
class ClusterInfo:
    cpus: float
    gpus: float
    max_node_cpus: float
    local: bool  # started by tuneforge on this machine: nothing will ever join it


_started_locally = False
_dashboard_url: str | None = None


def ensure_ray(address: str | None = None, *, dashboard: bool = False, debug: bool = False) -> ClusterInfo:
    """Start (or join) Ray once per process and describe what it offers."""
    global _started_locally, _dashboard_url
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    import ray

    if not ray.is_initialized():
        env_vars = {name: os.environ[name] for name in FORWARDED_ENV if name in os.environ}
        env_vars["TOKENIZERS_PARALLELISM"] = "false"
        options: dict[str, Any] = {
            "include_dashboard": dashboard,
            "log_to_driver": debug,
            "logging_level": logging.INFO if debug else logging.ERROR,
            "runtime_env": {"env_vars": env_vars},
        }
        if dashboard and not address:
            options["dashboard_host"] = "127.0.0.1"
        try:
            context = ray.init(address=address, **options)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            target = address or "a local Ray instance"
            raise TuneforgeError(f"cannot start or reach {target}: {str(exc).splitlines()[0]}") from None
        _started_locally = address is None
        _dashboard_url = f"http://{context.dashboard_url}" if dashboard and context.dashboard_url else None
        quiet_ray_loggers(debug)
    return describe_cluster()


def describe_cluster() -> ClusterInfo:
    import ray

    total = ray.cluster_resources()
    node_cpus = [node.get("Resources", {}).get("CPU", 0.0) for node in ray.nodes() if node.get("Alive")]
    return ClusterInfo(
        cpus=float(total.get("CPU", 0.0)),
        gpus=float(total.get("GPU", 0.0)),
        max_node_cpus=float(max(node_cpus, default=0.0)),
        local=_started_locally,
    )


def quiet_ray_loggers(debug: bool) -> None:
    level = logging.INFO if debug else logging.ERROR
    for name in ("ray", "ray.train", "ray.tune", "ray.data"):
        logging.getLogger(name).setLevel(level)


def dashboard_url() -> str | None:
    """Where the dashboard listens, when it was asked for."""
    return _dashboard_url
