"""Observability: training metrics as Ray metrics, `tuneforge monitor` (a real Prometheus on Ray's service
discovery), the Grafana folder, and the tuneforge dashboard checked against what the code exports."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import ClassVar

import pytest
import yaml

from tuneforge.errors import TuneforgeError
from tuneforge.metrics import quality_metrics
from tuneforge.observe import training as telemetry
from tuneforge.observe.monitor import DASHBOARD_JSON, MonitorOptions, start_monitor, write_grafana_folder

ROOT = Path(__file__).resolve().parent.parent
NEEDS_PROMETHEUS = pytest.mark.skipif(shutil.which("prometheus") is None,
                                      reason="no prometheus binary (scripts/ensure_test_tools.sh installs it: apt-get install prometheus)")


class FakeMetric:
    """Stands in for a ray.util.metrics / ray.serve.metrics class: remembers its name, kind and every value."""

    made: ClassVar[list[FakeMetric]] = []

    def __init__(self, name, description="", tag_keys=(), boundaries=None):
        self.name, self.tag_keys, self.values = name, tuple(tag_keys), []
        self.kind = {"FakeGauge": "gauge", "FakeCounter": "counter", "FakeHistogram": "histogram"}[type(self).__name__]
        FakeMetric.made.append(self)

    def set(self, value, tags=None):
        self.values.append((value, dict(tags or {})))

    def inc(self, value=1.0, tags=None):
        self.values.append((value, dict(tags or {})))

    def observe(self, value, tags=None):
        self.values.append((value, dict(tags or {})))


class FakeGauge(FakeMetric):
    pass


class FakeCounter(FakeMetric):
    pass


class FakeHistogram(FakeMetric):
    pass


@pytest.fixture
def fake_metrics(monkeypatch):
    import ray.serve.metrics
    import ray.util.metrics

    FakeMetric.made = []
    for module in (ray.util.metrics, ray.serve.metrics):
        monkeypatch.setattr(module, "Gauge", FakeGauge)
        monkeypatch.setattr(module, "Counter", FakeCounter)
        monkeypatch.setattr(module, "Histogram", FakeHistogram)
    return FakeMetric.made


def exported_series(made: list[FakeMetric]) -> set[str]:
    """The Prometheus names Ray gives the metrics the code creates: a `ray_` prefix, `_total` on counters, and a
    histogram's `_bucket` / `_sum` / `_count`."""
    names = set()
    for metric in made:
        base = f"ray_{metric.name}"
        names |= {"counter": {f"{base}_total"}, "gauge": {base},
                  "histogram": {f"{base}_bucket", f"{base}_sum", f"{base}_count"}}[metric.kind]
    return names


def dashboard_series() -> dict[str, set[str]]:
    """Every ray_tuneforge_* series the dashboard's queries read, by panel title."""
    dashboard = json.loads(DASHBOARD_JSON.read_text())
    used: dict[str, set[str]] = {}
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            used.setdefault(panel["title"], set()).update(re.findall(r"\bray_tuneforge_\w+", target["expr"]))
    return used


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD_JSON.read_text())
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel.get("targets", [])]


def all_exported(fake_metrics) -> set[str]:
    from tuneforge.serve.server import PrometheusMetrics

    telemetry.TrainingMetrics("run", "", 0)
    PrometheusMetrics()
    return exported_series(fake_metrics)


def test_dashboard_reads_only_series_the_code_exports_and_shows_every_one(fake_metrics):
    exported = all_exported(fake_metrics)
    used = dashboard_series()
    for title, names in used.items():
        assert names <= exported, f"panel {title!r} reads series nobody exports: {sorted(names - exported)}"
    shown = set().union(*used.values())
    # A histogram shows through its buckets (quantiles) and sum/count (the mean).
    assert exported - shown == set(), f"exported but on no panel: {sorted(exported - shown)}"


def test_dashboard_is_a_well_formed_grafana_dashboard():
    dashboard = json.loads(DASHBOARD_JSON.read_text())
    variables = {variable["name"] for variable in dashboard["templating"]["list"]}
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    assert dashboard["uid"] == "tuneforge" and dashboard["schemaVersion"] >= 36
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            for name in re.findall(r"\$\{?(\w+)", target["expr"]):
                assert name in variables | {"__range", "__interval", "__rate_interval"}, (panel["title"], name)
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0


def test_training_metrics_follow_the_loop_events(fake_metrics):
    recorder = telemetry.TrainingMetrics("demo", "trial_1", 1)
    recorder.start(total_steps=20, step=0)
    recorder.record({"type": "step", "step": 5, "epoch": 0.25, "loss": 1.5, "lr": 2e-4, "grad_norm": 0.7,
                     "tokens_per_second": 321.0, "tokens": 10, "step_seconds": 0.1})
    recorder.record({"type": "eval", "step": 10, "epoch": 0.5, "eval_loss": 0.9, "eval_accuracy": 0.75,
                     "eval_seconds": 2.0, "train_loss": 1.1})
    recorder.record({"type": "samples", "step": 10, "rows": []})
    by_name = {metric.name: metric for metric in fake_metrics}
    tags = {"run": "demo", "trial": "trial_1", "rank": "1"}
    assert by_name["tuneforge_train_loss"].values == [(1.5, tags)]
    assert by_name["tuneforge_learning_rate"].values == [(2e-4, tags)]
    assert by_name["tuneforge_tokens_per_second"].values == [(321.0, tags)]
    assert [value for value, _ in by_name["tuneforge_step"].values] == [0, 5, 10]
    assert by_name["tuneforge_total_steps"].values == [(20, tags)]
    assert by_name["tuneforge_eval_loss"].values == [(0.9, tags)]
    assert by_name["tuneforge_eval_metric"].values == [(0.75, {**tags, "metric": "accuracy"})]
    assert by_name["tuneforge_checkpoints"].values == [(1, tags)]


def test_eval_metrics_leave_out_timings_and_missing_fields_never_raise(fake_metrics):
    """Only quality metrics go to tuneforge_eval_metric (not generation seconds or perplexity, which would flatten
    accuracy on a shared axis); an event without some field records the rest; every rank records its own."""
    first, second = telemetry.TrainingMetrics("r", "", 0), telemetry.TrainingMetrics("r", "", 1)
    event = {"type": "eval", "step": 4, "eval_perplexity": 3e21, "eval_generate_seconds": 12.5,
             "eval_stop_rate": 1.0, "eval_json_exact": 0.5}
    first.record(event)
    second.record(event)
    first.record({"type": "eval"})
    first.record({"type": "step", "step": 5})
    by_name = {}
    for metric in fake_metrics:
        by_name.setdefault(metric.name, []).extend(metric.values)
    recorded = {(tags["metric"], tags["rank"]): value for value, tags in by_name["tuneforge_eval_metric"]}
    assert recorded == {("stop_rate", "0"): 1.0, ("json_exact", "0"): 0.5, ("stop_rate", "1"): 1.0,
                        ("json_exact", "1"): 0.5}
    assert by_name["tuneforge_eval_loss"] == []
    assert sorted((value, tags["rank"]) for value, tags in by_name["tuneforge_step"]) == [(4, "0"), (4, "1"), (5, "0")]


def test_monitor_refuses_one_port_for_two_servers(tmp_path):
    with pytest.raises(TuneforgeError, match="--prometheus-port and --dashboard-port are both 9999"):
        start_monitor(MonitorOptions(directory=tmp_path, prometheus_port=9999, dashboard_port=9999))


def test_run_tags_name_a_search_and_its_trial(tmp_path):
    assert telemetry.run_tags(tmp_path / "runs" / "demo") == ("demo", "")
    search = tmp_path / "search"
    search.mkdir()
    (search / "tune_config.yaml").write_text("{}")
    assert telemetry.run_tags(search / "trial_ab12") == ("search", "trial_ab12")


def test_grafana_folder_provisions_prometheus_and_both_dashboard_folders(tmp_path):
    session = tmp_path / "session"
    generated = session / "metrics" / "grafana" / "dashboards"
    generated.mkdir(parents=True)
    (generated / "default_grafana_dashboard.json").write_text('{"title": "Default"}')
    folder = write_grafana_folder(tmp_path / "grafana", "http://127.0.0.1:9999", MonitorOptions(grafana_port=3123),
                                  session)
    datasources = yaml.safe_load((folder / "provisioning" / "datasources" / "prometheus.yml").read_text())
    [source] = datasources["datasources"]
    assert source["url"] == "http://127.0.0.1:9999" and source["type"] == "prometheus" and source["isDefault"]
    assert source["name"] == "Prometheus"  # the name Ray's generated dashboards look for
    providers = yaml.safe_load((folder / "provisioning" / "dashboards" / "dashboards.yml").read_text())["providers"]
    paths = {provider["folder"]: Path(provider["options"]["path"]) for provider in providers}
    assert all(path.is_dir() for path in paths.values()) and {p["type"] for p in providers} == {"file"}
    assert (paths["Ray"] / "default_grafana_dashboard.json").is_file()
    assert json.loads((paths["tuneforge"] / "tuneforge_dashboard.json").read_text())["uid"] == "tuneforge"
    ini = (folder / "grafana.ini").read_text()
    assert "http_addr = 127.0.0.1" in ini and "http_port = 3123" in ini and "reporting_enabled = false" in ini


def test_monitor_without_prometheus_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(TuneforgeError, match="prometheus is not installed: `apt-get install prometheus`"):
        start_monitor(MonitorOptions(directory=tmp_path, prometheus_port=free_port(), dashboard_port=free_port()))


def test_monitor_on_a_port_in_use_is_one_line_naming_the_port(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "tuneforge.cli", "monitor", "--prometheus-port", str(port),
                                 "--dir", str(tmp_path / "mon")], check=False, capture_output=True, text=True, timeout=120,
                                env=cli_env())
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() + result.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert f"port {port} on 127.0.0.1 is in use" in lines[0] and "--prometheus-port" in lines[0]
    assert not (tmp_path / "mon").exists(), "nothing is written before the ports are known to be free"


# ----------------------------------------------------------------------------------------------------------------
# A real Prometheus, a real cluster started by `tuneforge monitor`, a real training run joining it
# ----------------------------------------------------------------------------------------------------------------


@NEEDS_PROMETHEUS
@pytest.mark.e2e
@pytest.mark.slow  # ~55 s (its own Ray, a training run, a real Prometheus); `make test-slow` runs it
def test_prometheus_holds_the_last_training_values_of_metrics_jsonl(tmp_path, tiny_llama_dir, tiny_chat_data):
    ports = {"prometheus": free_port(), "dashboard": free_port()}
    monitor = subprocess.Popen([sys.executable, "-m", "tuneforge.cli", "monitor", "--dir", str(tmp_path / "mon"),
                                "--prometheus-port", str(ports["prometheus"]),
                                "--dashboard-port", str(ports["dashboard"]), "--grafana-port", str(free_port())],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=cli_env(),
                               start_new_session=True)
    try:
        address, auth_mode = read_train_address(monitor)
        prometheus = f"http://127.0.0.1:{ports['prometheus']}"
        config = tmp_path / "tiny.yaml"
        config.write_text(yaml.safe_dump({
            "model_id": str(tiny_llama_dir), "train_path": str(tiny_chat_data["train"]),
            "valid_path": str(tiny_chat_data["valid"]), "train_batch_size_per_device": 4,
            "eval_batch_size_per_device": 4, "num_epochs": 2, "learning_rate": 1e-2, "num_warmup_steps": 0,
            "logging_steps": 1, "precision": "fp32", "output_dir": str(tmp_path / "runs"), "run_name": "watched",
            "lora_config": {"r": 4, "lora_alpha": 8}, "eval_generate": {"max_rows": 4, "max_new_tokens": 8}}))
        trained = subprocess.run([sys.executable, "-m", "tuneforge.cli", "train", str(config), "--address", address],
                                 check=False, capture_output=True, text=True, timeout=600,
                                 env={**cli_env(), **auth_mode})
        assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr[-2000:]
        rows = [json.loads(line) for line in (tmp_path / "runs" / "watched" / "metrics.jsonl").read_text().splitlines()]
        last_step = [row for row in rows if row["type"] == "step"][-1]
        evals = [row for row in rows if row["type"] == "eval"]
        expected = {"ray_tuneforge_train_loss": last_step["loss"], "ray_tuneforge_learning_rate": last_step["lr"],
                    "ray_tuneforge_grad_norm": last_step["grad_norm"],
                    "ray_tuneforge_tokens_per_second": last_step["tokens_per_second"],
                    "ray_tuneforge_step": evals[-1]["step"], "ray_tuneforge_epoch": evals[-1]["epoch"],
                    "ray_tuneforge_eval_loss": evals[-1]["eval_loss"],
                    "ray_tuneforge_checkpoints_total": len(evals),
                    "ray_tuneforge_total_steps": json.loads((tmp_path / "runs" / "watched" / "plan.json")
                                                            .read_text())["total_steps"]}
        selector = '{run="watched", trial="", rank="0"}'
        found = {}
        for name in expected:
            found[name] = last_value(prometheus, f"last_over_time({name}{selector}[10m])", expected[name])
        for name, value in expected.items():
            assert found[name] == pytest.approx(value, rel=1e-6), (name, found[name], value)
        generated = quality_metrics(evals[-1])  # what answering the validation rows scored (stop rate, ...)
        assert generated
        for key, value in generated.items():
            metric = key.removeprefix("eval_")
            assert last_value(prometheus, f'last_over_time(ray_tuneforge_eval_metric{{run="watched", rank="0", '
                                          f'metric="{metric}"}}[10m])', value) == pytest.approx(value, rel=1e-6), metric
        # Every training series the dashboard draws is one Prometheus really holds.
        names = {series["__name__"] for series in
                 query(prometheus, 'group by (__name__) (last_over_time({__name__=~"ray_tuneforge_.*"}[10m]))')}
        drawn = {name for title, used in dashboard_series().items() for name in used if "serve" not in name}
        assert drawn <= names, sorted(drawn - names)
        # Every query of the dashboard is valid PromQL to the real Prometheus and, over the last minutes as Grafana
        # asks (a range query), every training panel draws points. Serving panels have no server to show here.
        for title, expr in dashboard_queries():
            points = query_range(prometheus, expr.replace("$run", ".*").replace("$__range", "10m"))
            if "serve" not in expr:
                assert points, f"panel {title!r} draws nothing: {expr}"
        # Ray's dashboard was started knowing where Prometheus is (its Metrics tab's panels read from it).
        token = (Path.home() / ".ray" / "auth_token").read_text().strip()  # Ray's token authentication is on
        request = urllib.request.Request(f"http://127.0.0.1:{ports['dashboard']}/api/prometheus_health",
                                         headers={"Authorization": f"Bearer {token}"})
        health = json.load(urllib.request.urlopen(request, timeout=10))
        assert health.get("result") is True, health
    finally:
        monitor.send_signal(signal.SIGINT)
        try:
            output, _ = monitor.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(monitor.pid, signal.SIGKILL)
            raise
    assert monitor.returncode == 0, output[-2000:]
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", ports["prometheus"])) != 0, "Prometheus still listens after Ctrl-C"


def read_train_address(monitor: subprocess.Popen) -> tuple[str, dict[str, str]]:
    """The address of the printed train line, and the environment it sets."""
    seen = []
    for line in monitor.stdout:
        seen.append(line)
        found = re.search(r"Train on this cluster: ((?:\w+=\S+ )*)tuneforge train CONFIG --address (\S+)", line)
        if found:
            return found.group(2), dict(pair.split("=", 1) for pair in found.group(1).split())
    raise AssertionError("monitor ended before printing its address:\n" + "".join(seen))


def last_value(prometheus: str, promql: str, expected: float, wait_s: float = 30.0) -> float | None:
    """The one series' value once it is `expected`, or as it stands after `wait_s`: a run's final values reach
    Prometheus up to one Ray export and one scrape (about 4 s here) after the run's last step."""
    deadline = time.monotonic() + wait_s
    while True:
        result = query(prometheus, promql, raw=True)
        assert len(result) <= 1, result
        value = float(result[0]["value"][1]) if result else None
        if value == pytest.approx(expected, rel=1e-6) or time.monotonic() > deadline:
            return value
        time.sleep(1)


def query(prometheus: str, promql: str, raw: bool = False) -> list:
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    answer = json.load(urllib.request.urlopen(url, timeout=10))
    assert answer["status"] == "success", answer
    return answer["data"]["result"] if raw else [series["metric"] for series in answer["data"]["result"]]


def query_range(prometheus: str, promql: str, seconds: int = 600) -> list:
    now = time.time()
    url = f"{prometheus}/api/v1/query_range?" + urllib.parse.urlencode(
        {"query": promql, "start": now - seconds, "end": now, "step": 2})
    answer = json.load(urllib.request.urlopen(url, timeout=10))
    assert answer["status"] == "success", (promql, answer)
    return [value for series in answer["data"]["result"] for value in series["values"]]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def cli_env() -> dict[str, str]:
    """The test process's environment, less the RAY_AUTH_MODE a Ray started in it sets: what a join needs comes
    from the command line the monitor prints."""
    env = {key: value for key, value in os.environ.items() if key != "RAY_AUTH_MODE"}
    return {**env, "COLUMNS": "400", "PYTHONPATH": str(ROOT / "src")}


def test_targets_written_from_the_node_list_name_each_metrics_agent(ray_session, tmp_path):
    """For a head on another machine (no session file here to follow), the monitor writes Prometheus's file-SD
    content itself from the cluster's live nodes."""
    import ray

    from tuneforge.observe.monitor import prometheus_config, write_targets

    write_targets(tmp_path / "targets.json")
    [group] = json.loads((tmp_path / "targets.json").read_text())
    ports = {str(node["MetricsExportPort"]) for node in ray.nodes() if node["Alive"]}
    assert group["labels"] == {"job": "ray"} and {target.rsplit(":", 1)[1] for target in group["targets"]} == ports
    config = yaml.safe_load(prometheus_config(tmp_path / "targets.json", 2.0))
    assert config["global"]["scrape_interval"] == "2s"
    assert config["scrape_configs"][0]["file_sd_configs"][0]["files"] == [str(tmp_path / "targets.json")]
