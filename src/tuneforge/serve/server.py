"""Running the API on Ray Serve: one deployment whose replicas each load the served models and run the FastAPI app.

On one machine a local Ray is started for it; with `address` the replicas go wherever the cluster has room.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.errors import ConfigError
from tuneforge.serve.api import Limits

APP_NAME = "tuneforge"


@dataclass
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    replicas: int = 1
    autoscale: tuple[int, int] | None = None  # (min, max) replicas
    cpus_per_replica: float | None = None  # default: the machine's CPUs shared by the replicas
    max_batch_size: int = 8  # concurrent completion requests generated together
    api_key: str | None = None
    address: str | None = None
    limits: Limits = field(default_factory=Limits)


@dataclass
class Served:
    url: str
    model_ids: list[str]


class ModelServer:
    """One Serve replica: Ray Serve asks it for its ASGI app once it is constructed; building that app loads the
    models, so a replica takes traffic only once they are in memory."""

    def __init__(self, paths: list[str], limits: Limits, api_key: str | None, threads: int, max_batch_size: int):
        self.paths, self.limits, self.api_key, self.threads = paths, limits, api_key, threads
        self.max_batch_size = max_batch_size

    def __serve_build_asgi_app__(self) -> Any:
        import torch
        from ray import serve
        from starlette.concurrency import run_in_threadpool

        from tuneforge.serve.api import build_app
        from tuneforge.serve.engines import load_engines

        torch.set_num_threads(max(1, self.threads))
        engines = load_engines(self.paths)

        # Requests that arrive within 20 ms of each other generate as one batch (what serve.batch is for).
        @serve.batch(max_batch_size=self.max_batch_size, batch_wait_timeout_s=0.02)
        async def batched(jobs: list[Any]) -> list[Any]:
            return await run_in_threadpool(engines.complete_many, jobs)

        return build_app(engines, limits=self.limits, api_key=self.api_key, batched=batched)


def planned_model_ids(paths: list[str | Path]) -> list[str]:
    """The ids the replicas will serve, checked on the driver first so that a bad path is one line, not a replica
    crash loop."""
    from tuneforge.serve.engines import BASE_ID, planned_models

    planned = planned_models(paths)
    has_base = any(meta.lora and task.generates for _, _, meta, task in planned)
    return [model_id for _, model_id, _, _ in planned] + ([BASE_ID] if has_base else [])


def start(paths: list[str | Path], options: ServeOptions) -> Served:
    """Deploy the models and return once every replica answers (`stop()` takes them down)."""
    from ray import serve

    from tuneforge.cluster import ensure_ray

    if not paths:
        raise ConfigError("nothing to serve: name at least one run directory or checkpoint")
    model_ids = planned_model_ids(paths)
    cluster = ensure_ray(options.address)
    replicas = options.autoscale[1] if options.autoscale else options.replicas
    cpus = options.cpus_per_replica or max(1.0, float(int(cluster.max_node_cpus / max(replicas, 1))))
    scaling: dict[str, Any] = {"num_replicas": options.replicas}
    if options.autoscale:
        low, high = options.autoscale
        scaling = {"autoscaling_config": {"min_replicas": low, "max_replicas": high, "target_ongoing_requests": 2}}
    deployment = serve.deployment(serve.ingress()(ModelServer), name=APP_NAME, ray_actor_options={"num_cpus": cpus},
                                  max_ongoing_requests=32, **scaling)
    serve.start(http_options={"host": options.host, "port": options.port})
    served_paths = [str(Path(p).resolve()) for p in paths]
    bound = deployment.bind(served_paths, options.limits, options.api_key, int(cpus), options.max_batch_size)
    serve.run(bound, name=APP_NAME, route_prefix="/", blocking=False)
    return Served(url=f"http://{options.host}:{options.port}", model_ids=model_ids)


def stop() -> None:
    """Take the deployment down: Serve drains in-flight requests before a replica stops."""
    from ray import serve

    serve.shutdown()


def api_key_from_env(variable: str | None) -> str | None:
    if variable is None:
        return None
    value = os.environ.get(variable)
    if not value:
        raise ConfigError(f"--api-key-env {variable}: that environment variable is not set or empty")
    return value


def parse_autoscale(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    low, sep, high = text.partition(":")
    if not (sep and low.isdigit() and high.isdigit() and 1 <= int(low) <= int(high)):
        raise ConfigError(f"--autoscale {text!r}: give MIN:MAX replicas, e.g. 1:4")
    return int(low), int(high)
