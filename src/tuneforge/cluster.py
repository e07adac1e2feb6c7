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
FORWARDED_ENV = ("TUNEFORGE_HOME", "HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE",
                 "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


@dataclass(frozen=True)
class ClusterInfo:
    local: bool  # started by tuneforge on this machine: nothing will ever join it
    resources: dict[str, float]  # totals, as ray.cluster_resources() reports them
    node_resources: tuple[dict[str, float], ...]  # what each live node has

    @property
    def cpus(self) -> float:
        return float(self.resources.get("CPU", 0.0))

    @property
    def gpus(self) -> float:
        return float(self.resources.get("GPU", 0.0))

    @property
    def max_node_cpus(self) -> float:
        return float(max((node.get("CPU", 0.0) for node in self.node_resources), default=0.0))


_started_locally = False
_dashboard_url: str | None = None
DEFAULT_JOIN_TIMEOUT_S = 60.0
_join_timeout_s = DEFAULT_JOIN_TIMEOUT_S


def set_join_timeout(seconds: float) -> None:
    """How long joining a cluster (--address) may wait for its head to answer before giving up (--join-timeout)."""
    global _join_timeout_s
    if seconds <= 0:
        raise TuneforgeError(f"--join-timeout {seconds}: give a number of seconds above 0")
    _join_timeout_s = float(seconds)


def ensure_ray(address: str | None = None, *, dashboard: bool = False, debug: bool = False,
               dashboard_host: str = "127.0.0.1", dashboard_port: int | None = None,
               system_config: dict[str, Any] | None = None) -> ClusterInfo:
    """Start (or join) Ray once per process and describe what it offers. The dashboard and system settings apply
    only to a Ray started here."""
    global _started_locally, _dashboard_url
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    # Ray starts workers at nice 15; beside any process at the default priority (an editor, a test run) the
    # training threads then get a few percent of a shared core, and every step waits for the slowest thread. The
    # raylet we start reads this from its environment; a user's own setting wins.
    os.environ.setdefault("RAY_worker_niceness", "0")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    import ray

    if not ray.is_initialized():
        env_vars = {name: os.environ[name] for name in FORWARDED_ENV if name in os.environ}
        env_vars["TOKENIZERS_PARALLELISM"] = "false"
        # OpenMP's wait policy is left to the user (forwarded when set): passive waiting keeps a training
        # worker's share beside other busy processes (bench/contention.py: 0.71 of its alone speed, 0.39 spinning)
        # but makes every small parallel op ~3x slower alone (0.70 vs 0.25 ms for an element-wise op over a
        # [1032, 576] activation), which cost a LoRA step about half its speed inside a Ray worker.
        options: dict[str, Any] = {
            "include_dashboard": dashboard,
            "log_to_driver": debug,
            "logging_level": logging.INFO if debug else logging.ERROR,
            "runtime_env": {"env_vars": env_vars},
        }
        # Without --address (or RAY_ADDRESS), always a Ray of our own: ray.init() alone would join whatever
        # `ray start` cluster this machine runs, a surprise for a run that was meant to stay local.
        target = address or os.environ.get("RAY_ADDRESS") or "local"
        if target != "local":
            check_join(target, _join_timeout_s)
        if target == "local":
            options["dashboard_host"] = dashboard_host
            options["dashboard_port"] = dashboard_port or private_dashboard_port(dashboard)
            if system_config:
                options["_system_config"] = system_config
        try:
            context = ray.init(address=target, **options)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = "a local Ray instance" if target == "local" else target
            hint = auth_hint() if target != "local" else ""
            raise TuneforgeError(f"cannot start or reach {where}: {str(exc).splitlines()[0]}{hint}") from None
        _started_locally = target == "local"
        _dashboard_url = f"http://{context.dashboard_url}" if dashboard and context.dashboard_url else None
        quiet_ray_loggers(debug)
    return describe_cluster()


def check_join(address: str, timeout_s: float) -> None:
    """Before ray.init joins `address`: the address Ray will dial answers within `timeout_s`, else one line naming
    both addresses and the likely cause. Ray itself retries a head it cannot reach for minutes, printing a warning
    every few seconds; and it dials this machine's own IP where it was given 127.0.0.1."""
    import time

    given, dialed = address.removeprefix("ray://"), dialed_address(address)
    deadline = time.monotonic() + timeout_s
    while True:
        failure = tcp_failure(dialed, min(5.0, max(0.1, deadline - time.monotonic())))
        if failure is None:
            return
        loopback_only = dialed != given and tcp_failure(given, 2.0) is None  # decisive: no wait helps
        if time.monotonic() >= deadline or "resolve" in failure or loopback_only:
            break
        time.sleep(1.0)  # a head still starting up
    raise TuneforgeError(f"cannot join the Ray cluster at {address}: {join_cause(given, dialed, failure, timeout_s)}")


def dialed_address(address: str) -> str:
    """host:port as Ray will dial it: a Ray Client address as given; otherwise Ray's own canonical form, which puts
    this machine's IP in place of 127.0.0.1 or localhost (and reads `auto` from the last cluster started here)."""
    if address.startswith("ray://"):
        return address.removeprefix("ray://")
    from ray._private.services import canonicalize_bootstrap_address

    try:
        return canonicalize_bootstrap_address(address) or address
    except (ConnectionError, ValueError) as exc:
        raise TuneforgeError(f"cannot join the Ray cluster at {address}: {str(exc).splitlines()[0]}") from None


def tcp_failure(address: str, timeout_s: float) -> str | None:
    """None when something accepts a TCP connection at host:port, else why not."""
    import socket

    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return None
    except socket.gaierror:
        return f"cannot resolve the host {host!r}"
    except TimeoutError:
        return "no answer (the connection attempt timed out)"
    except ConnectionRefusedError:
        return "connection refused (nothing listens on that port)"
    except OSError as exc:
        return exc.strerror or str(exc)


def join_cause(given: str, dialed: str, failure: str, timeout_s: float) -> str:
    """Why the head did not answer, and what to do about it."""
    host, _, port = dialed.rpartition(":")
    if dialed != given and tcp_failure(given, 2.0) is None:
        return (f"Ray dials {dialed}, this machine's own address in place of {given.rpartition(':')[0]}, and "
                f"gets {failure}; the head answers on {given} only, so it was started bound to the loopback "
                f"(node_ip_address 127.0.0.1). Start the head with `ray start --head --node-ip-address={host} "
                f"--port={port}` and join with --address {dialed}")
    where = f"Ray dials {dialed}" + (f" (for {given})" if dialed != given else "")
    if "resolve" in failure:
        return f"{where}: {failure}; check the host name"
    if "refused" in failure:
        return (f"{where}: {failure} after {timeout_s:g} s; start the head there (`ray start --head "
                f"--port={port}`) or give its address (`ray status` on the head prints it)")
    return (f"{where}: {failure} for {timeout_s:g} s; a firewall between this machine and {host} or a wrong host: "
            f"port {port} must be open from here (--join-timeout waits longer for a head still starting)")


def auth_hint() -> str:
    """Ray 2.60 turns token authentication on for the clusters it starts, but a driver given an address sends the
    token only with RAY_AUTH_MODE=token, and Ray fails to connect without saying why."""
    if "RAY_AUTH_MODE" in os.environ:
        return ""
    return "; if it uses token authentication (Ray's default for the clusters it starts), run with RAY_AUTH_MODE=token"


DEFAULT_DASHBOARD_PORT = 8265


def private_dashboard_port(dashboard: bool) -> int:
    """A port no other Ray on this machine answers on. Ray Train's placement-group cleaner asks the State API at
    the address the cluster registered whether the run's controller is alive; without a dashboard that address is
    still Ray's default 127.0.0.1:8265, so a dashboard any other program starts there answers "no such actor" and
    the cleaner removes our workers' placement group mid-run. With no dashboard, the registered port is a free one
    nothing listens on (the cleaner then just keeps waiting); an asked-for dashboard gets 8265 when it is free."""
    import socket

    if dashboard:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", DEFAULT_DASHBOARD_PORT)) != 0:
                return DEFAULT_DASHBOARD_PORT
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def ray_is_running() -> bool:
    import ray

    return ray.is_initialized()


def local_machine() -> ClusterInfo:
    """What a Ray started here will offer, known without starting it (under a cgroup CPU quota Ray may see fewer
    CPUs; what it reports is checked again once it runs)."""
    import torch

    have = {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}
    return ClusterInfo(local=True, resources=have, node_resources=(have,))


def describe_cluster() -> ClusterInfo:
    import ray

    total = ray.cluster_resources()
    nodes = tuple(dict(node.get("Resources", {})) for node in ray.nodes() if node.get("Alive"))
    return ClusterInfo(local=_started_locally, resources=dict(total), node_resources=nodes)


def quiet_ray_loggers(debug: bool) -> None:
    level = logging.INFO if debug else logging.ERROR
    for name in ("ray", "ray.train", "ray.tune", "ray.data"):
        logging.getLogger(name).setLevel(level)


def dashboard_url() -> str | None:
    """Where the dashboard listens, when it was asked for."""
    return _dashboard_url
