"""`tuneforge monitor`: a Prometheus scraping a Ray cluster's metrics agents, a Grafana folder to view them, and
Ray's dashboard with its metrics panels.

Without an address it starts a Ray of its own (dashboard on, metrics exported every 2 s) for `tuneforge train
--address` to join; with one it joins that cluster. Prometheus reads Ray's service-discovery file for the session
(or, for a head on another machine, one written here from the cluster's node list). Everything binds 127.0.0.1
unless told otherwise; usage statistics stay off."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tuneforge.atomic import write_text
from tuneforge.errors import TuneforgeError

DASHBOARD_JSON = Path(__file__).with_name("tuneforge_dashboard.json")
SERVICE_DISCOVERY_FILE = "prom_metrics_service_discovery.json"
REPORT_INTERVAL_MS = 2000  # a Ray we start exports every 2 s (Ray's default is 10 s)
PROMETHEUS_INSTALL = ("prometheus is not installed: `apt-get install prometheus` (Debian, Ubuntu) or put the binary "
                      "from https://prometheus.io/download/ on PATH")


@dataclass
class MonitorOptions:
    address: str | None = None  # a running cluster; None starts a Ray of our own
    directory: Path = Path("tuneforge-monitor")  # prometheus.yml, its data, the Grafana folder
    host: str = "127.0.0.1"
    prometheus_port: int = 9090
    grafana_port: int = 3000
    dashboard_port: int = 8265
    scrape_interval_s: float = 2.0


@dataclass
class Monitor:
    options: MonitorOptions
    ray_address: str
    prometheus_url: str
    grafana_url: str
    grafana_command: str
    grafana_installed: bool  # on this machine; the folder serves a Grafana elsewhere too
    dashboard_url: str | None
    targets_file: Path
    writes_targets: bool  # no Ray file here to follow (a remote head): refresh_targets() keeps ours current
    process: subprocess.Popen[bytes] | None = None
    notes: list[str] = field(default_factory=list)

    def join_command(self, command: str) -> str:
        """A tuneforge command line that joins this cluster. Ray turns token authentication on for the clusters it
        starts (its ray.init sets RAY_AUTH_MODE=token in this process), and a driver given an address sends the
        token (saved in ~/.ray/auth_token) only in token mode."""
        auth = "RAY_AUTH_MODE=token " if os.environ.get("RAY_AUTH_MODE") == "token" else ""
        return f"{auth}tuneforge {command} --address {self.ray_address}"

    def refresh_targets(self) -> None:
        if self.writes_targets:
            write_targets(self.targets_file)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process = None


def start_monitor(options: MonitorOptions) -> Monitor:
    """Start Prometheus (and a Ray, without an address) and write the Grafana folder. Nothing is left running when
    it fails: a port in use or a missing binary is one line, before anything starts."""
    ports = {"--prometheus-port": options.prometheus_port}
    if options.address is None:
        ports["--dashboard-port"] = options.dashboard_port
    if len(set(ports.values())) < len(ports):
        raise TuneforgeError(f"--prometheus-port and --dashboard-port are both {options.prometheus_port}: "
                             "give them different ports")
    for flag, port in ports.items():
        require_free_port(options.host, port, flag)
    binary = shutil.which("prometheus")
    if binary is None:
        raise TuneforgeError(PROMETHEUS_INSTALL)
    directory = options.directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    prometheus_url = f"http://{options.host}:{options.prometheus_port}"
    grafana_url = f"http://{options.host}:{options.grafana_port}"
    ray_address, dashboard_url, session_dir = connect_ray(options, prometheus_url, grafana_url)
    targets_file, writes_targets = session_dir / SERVICE_DISCOVERY_FILE, False
    # A head on another machine has no session folder here: nothing to wait for.
    if not (session_dir.is_dir() and wait_for_file(targets_file, seconds=15)):
        targets_file, writes_targets = directory / "targets.json", True
        write_targets(targets_file)
    config_file = directory / "prometheus.yml"
    write_text(config_file, prometheus_config(targets_file, options.scrape_interval_s))
    grafana_dir = write_grafana_folder(directory / "grafana", prometheus_url, options, session_dir)
    monitor = Monitor(options=options, ray_address=ray_address, prometheus_url=prometheus_url,
                      grafana_url=grafana_url, grafana_command=grafana_command(grafana_dir),
                      grafana_installed=grafana_binary() is not None,
                      dashboard_url=dashboard_url, targets_file=targets_file, writes_targets=writes_targets)
    if options.address is not None:
        monitor.notes.append("Ray's dashboard shows its metrics panels when the head was started with "
                             f"RAY_PROMETHEUS_HOST={prometheus_url} RAY_GRAFANA_HOST={grafana_url} in its environment")
    monitor.process = start_prometheus(binary, config_file, directory, options)
    return monitor


def require_free_port(host: str, port: int, flag: str) -> None:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            raise TuneforgeError(f"port {port} on {host} is in use: stop what listens there or pass {flag} "
                                 "with a free port") from None


def connect_ray(options: MonitorOptions, prometheus_url: str, grafana_url: str) -> tuple[str, str | None, Path]:
    """(cluster address, dashboard URL, session directory). Ray's dashboard reads RAY_PROMETHEUS_HOST and
    RAY_GRAFANA_HOST from its environment when it starts, so only a Ray started here gets them."""
    import ray

    from tuneforge.cluster import dashboard_url, ensure_ray

    if options.address is None:
        os.environ["RAY_PROMETHEUS_HOST"] = prometheus_url
        os.environ["RAY_GRAFANA_HOST"] = grafana_url
        ensure_ray("local", dashboard=True, dashboard_host=options.host, dashboard_port=options.dashboard_port,
                   system_config={"metrics_report_interval_ms": REPORT_INTERVAL_MS})
    else:
        ensure_ray(options.address)
    address = ray.get_runtime_context().gcs_address
    return address, dashboard_url(), Path(ray._private.worker._global_node.get_session_dir_path())


def wait_for_file(path: Path, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not path.is_file():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def write_targets(path: Path) -> None:
    """Prometheus file-SD content from the cluster's live nodes: each node's metrics agent."""
    import ray

    targets = [f"{node['NodeManagerAddress']}:{node['MetricsExportPort']}" for node in ray.nodes()
               if node.get("Alive") and node.get("MetricsExportPort")]
    write_text(path, json.dumps([{"labels": {"job": "ray"}, "targets": targets}]))


def prometheus_config(targets_file: Path, scrape_interval_s: float) -> str:
    interval = f"{max(1, round(scrape_interval_s))}s"
    return (f"global:\n  scrape_interval: {interval}\n  evaluation_interval: {interval}\n"
            "scrape_configs:\n  - job_name: ray\n    file_sd_configs:\n"
            f"      - files: ['{targets_file}']\n        refresh_interval: 5s\n")


def start_prometheus(binary: str, config_file: Path, directory: Path, options: MonitorOptions) -> subprocess.Popen[bytes]:
    log_path = directory / "prometheus.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [binary, f"--config.file={config_file}", f"--storage.tsdb.path={directory / 'data'}",
             f"--web.listen-address={options.host}:{options.prometheus_port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until_ready(process, f"http://{options.host}:{options.prometheus_port}/-/ready", log_path)
    except BaseException:  # a Ctrl-C while waiting too: its own session never gets the terminal's signal
        process.kill()
        process.wait()
        raise
    return process


def wait_until_ready(process: subprocess.Popen[bytes], ready: str, log_path: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            lines = log_path.read_text(errors="replace").strip().splitlines()
            raise TuneforgeError(f"prometheus exited at start: {lines[-1] if lines else 'no output'} ({log_path})")
        try:
            with urllib.request.urlopen(ready, timeout=2):
                return
        except (OSError, http.client.HTTPException):
            time.sleep(0.3)
    raise TuneforgeError(f"prometheus did not answer on {ready} within 30 s ({log_path})")


# --------------------------------------------------------------------------------------------------------------
# Grafana
# --------------------------------------------------------------------------------------------------------------

def write_grafana_folder(folder: Path, prometheus_url: str, options: MonitorOptions, session_dir: Path) -> Path:
    """grafana.ini + provisioning (the Prometheus datasource, two dashboard folders) + dashboards: Ray's, as its
    dashboard generated them for this session, and tuneforge's."""
    ray_dashboards = folder / "dashboards" / "ray"
    ours = folder / "dashboards" / "tuneforge"
    for path in (ray_dashboards, ours, folder / "provisioning" / "datasources", folder / "provisioning" / "dashboards",
                 folder / "provisioning" / "plugins", folder / "provisioning" / "alerting", folder / "data"):
        path.mkdir(parents=True, exist_ok=True)
    generated = session_dir / "metrics" / "grafana" / "dashboards"
    for source in sorted(generated.glob("*.json")) if generated.is_dir() else []:
        shutil.copyfile(source, ray_dashboards / source.name)
    shutil.copyfile(DASHBOARD_JSON, ours / DASHBOARD_JSON.name)
    write_text(folder / "grafana.ini", grafana_ini(folder, options))
    write_text(folder / "provisioning" / "datasources" / "prometheus.yml", json.dumps({
        "apiVersion": 1,
        "datasources": [{"name": "Prometheus", "uid": "tuneforge-prometheus", "type": "prometheus",
                         "url": prometheus_url, "access": "proxy", "isDefault": True}]}, indent=2))
    write_text(folder / "provisioning" / "dashboards" / "dashboards.yml", json.dumps({
        "apiVersion": 1,
        "providers": [{"name": name, "folder": name, "type": "file", "options": {"path": str(path)}}
                      for name, path in (("Ray", ray_dashboards), ("tuneforge", ours))]}, indent=2))
    return folder


def grafana_ini(folder: Path, options: MonitorOptions) -> str:
    return (f"[server]\nhttp_addr = {options.host}\nhttp_port = {options.grafana_port}\n\n"
            f"[paths]\ndata = {folder / 'data'}\nlogs = {folder / 'data' / 'log'}\n"
            f"provisioning = {folder / 'provisioning'}\n\n"
            "[analytics]\nreporting_enabled = false\ncheck_for_updates = false\ncheck_for_plugin_updates = false\n\n"
            # Ray's dashboard embeds Grafana panels in an iframe; viewers need no login on a local machine.
            "[security]\nallow_embedding = true\n\n[auth.anonymous]\nenabled = true\norg_role = Viewer\n")


def grafana_binary() -> str | None:
    return shutil.which("grafana-server") or shutil.which("grafana")


def grafana_command(folder: Path) -> str:
    """The line that runs Grafana on the folder: Grafana's packages install to /usr/share/grafana."""
    binary = grafana_binary()
    program = "grafana server" if binary and Path(binary).name == "grafana" else "grafana-server"
    home = next((str(path) for path in (Path("/usr/share/grafana"), Path("/opt/grafana")) if path.is_dir()),
                "/usr/share/grafana")
    return f"{program} --homepath {home} --config {folder / 'grafana.ini'}"
