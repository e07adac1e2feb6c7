"""Running the API on Ray Serve: a model deployment whose replicas each load the served models and run the FastAPI
app, behind a gateway deployment that takes the HTTP requests (tuneforge.serve.gateway: a replica that dies
mid-request becomes a 503, not Ray's 500).

On one machine a local Ray is started for it; with `address` the replicas go wherever the cluster has room.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.errors import ConfigError
from tuneforge.serve.api import Limits, RequestMetrics

APP_NAME = "tuneforge"
BATCH_WAIT_S = 0.1


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
    gguf_lora: Path | None = None  # a GGUF LoRA adapter for the one GGUF file served
    ui: bool = True  # the playground page at / (tuneforge.serve.playground)
    limits: Limits = field(default_factory=Limits)


@dataclass
class Served:
    url: str
    kinds: dict[str, str]  # model id -> chat, classify or tag

    @property
    def model_ids(self) -> list[str]:
        return list(self.kinds)


class ModelServer:
    """One model replica: loads the models when constructed (a replica takes traffic only once they are in memory)
    and answers the requests the gateway forwards through the FastAPI app."""

    def __init__(self, paths: list[str], gguf_lora: str | None, limits: Limits, api_key: str | None, threads: int,
                 max_batch_size: int, ui: bool = True):
        import torch
        from ray import serve
        from starlette.concurrency import run_in_threadpool

        from tuneforge.serve.api import build_app
        from tuneforge.serve.engines import load_engines

        torch.set_num_threads(max(1, threads))
        engines = load_engines(paths, gguf_lora=gguf_lora, threads=max(1, threads))

        # Requests that arrive within 100 ms of each other generate as one batch (what serve.batch is for). A batch
        # runs to its end, so a request that just misses one waits for all of it: with 20 ms, 8 clients that sent
        # within 60 ms of each other split into cohorts of 2 and 6 that kept alternating (bench/serve_load.py).
        @serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=BATCH_WAIT_S)
        async def batched(jobs: list[Any]) -> list[Any]:
            return await run_in_threadpool(engines.complete_many, jobs)

        self.app = build_app(engines, limits=limits, api_key=api_key, batched=batched, metrics=PrometheusMetrics(),
                             ui=ui)

    async def forward(self, call: dict[str, Any], body: bytes) -> Any:
        """(status, headers), then the body's chunks (a stream's events as they come)."""
        from tuneforge.serve.gateway import asgi_exchange

        async for item in asgi_exchange(self.app, call, body):
            yield item


class PrometheusMetrics(RequestMetrics):
    """Request metrics as Ray Serve metrics: each node's metrics agent serves them to Prometheus (as
    `ray_tuneforge_serve_*`, with the deployment, replica and application tags Ray Serve adds), beside Ray Serve's
    own per-deployment request counters and latency histograms."""

    def __init__(self) -> None:
        from ray.serve import metrics

        self.requests = metrics.Counter("tuneforge_serve_requests", "HTTP requests answered, by route and status",
                                        tag_keys=("route", "status"))
        self.latency = metrics.Histogram("tuneforge_serve_request_seconds", "seconds from request to response",
                                         boundaries=LATENCY_BOUNDARIES, tag_keys=("route",))
        self.prompt_tokens = metrics.Counter("tuneforge_serve_prompt_tokens", "prompt tokens of answered requests",
                                             tag_keys=("model",))
        self.generated_tokens = metrics.Counter("tuneforge_serve_generated_tokens", "tokens generated",
                                                tag_keys=("model",))

    def request(self, route: str, status: int, seconds: float) -> None:
        self.requests.inc(tags={"route": route, "status": str(status)})
        self.latency.observe(seconds, tags={"route": route})

    def tokens(self, model: str, prompt: int, completion: int) -> None:
        for counter, count in ((self.prompt_tokens, prompt), (self.generated_tokens, completion)):
            if count > 0:  # Ray's counters refuse 0
                counter.inc(count, tags={"model": model})


LATENCY_BOUNDARIES = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120]


def planned_model_kinds(paths: list[str | Path], gguf_lora: str | Path | None = None) -> dict[str, str]:
    """The ids the replicas will serve and their kinds, checked on the driver first so that a bad path is one line,
    not a replica crash loop."""
    from tuneforge.serve.engines import planned_models, served_kinds

    return served_kinds(planned_models(paths, gguf_lora))


def start(paths: list[str | Path], options: ServeOptions) -> Served:
    """Deploy the models and return once every replica answers (`stop()` takes them down)."""
    from ray import serve

    from tuneforge.cluster import ensure_ray
    from tuneforge.serve.gateway import Gateway

    if not paths:
        raise ConfigError("nothing to serve: name at least one run directory or checkpoint")
    kinds = planned_model_kinds(paths, options.gguf_lora)
    cluster = ensure_ray(options.address)
    replicas = options.autoscale[1] if options.autoscale else options.replicas
    cpus = options.cpus_per_replica or max(1.0, float(int(cluster.max_node_cpus / max(replicas, 1))))
    scaling: dict[str, Any] = {"num_replicas": options.replicas}
    if options.autoscale:
        low, high = options.autoscale
        scaling = {"autoscaling_config": {"min_replicas": low, "max_replicas": high, "target_ongoing_requests": 2}}
    models = serve.deployment(ModelServer, name="models", ray_actor_options={"num_cpus": cpus},
                              max_ongoing_requests=32, **scaling)
    gateway = serve.deployment(Gateway, name="gateway", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1024)
    serve.start(http_options={"host": options.host, "port": options.port})
    served_paths = [str(Path(p).resolve()) for p in paths]
    gguf_lora = str(Path(options.gguf_lora).resolve()) if options.gguf_lora else None
    bound = models.bind(served_paths, gguf_lora, options.limits, options.api_key, int(cpus), options.max_batch_size,
                        options.ui)
    serve.run(gateway.bind(bound), name=APP_NAME, route_prefix="/", blocking=False)
    return Served(url=f"http://{options.host}:{options.port}", kinds=kinds)


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
