"""Resources on a Ray cluster joined with --address: a request it can never satisfy is refused at once. A local
Ray started for a run keeps to itself: another Ray's dashboard on this machine does not end it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.test_cli import ray_must_not_start  # noqa: F401 - a fixture
from tuneforge import cluster
from tuneforge.config import TrainConfig
from tuneforge.errors import ConfigError, TuneforgeError
from tuneforge.train.driver import scaling_config

NODES = [{"Alive": True, "Resources": {"CPU": 4.0, "memory": 8e9}},
         {"Alive": True, "Resources": {"CPU": 4.0, "GPU": 1.0, "memory": 8e9}},
         {"Alive": False, "Resources": {"CPU": 64.0}}]


@pytest.fixture
def joined_cluster(monkeypatch):
    """What describe_cluster sees on a joined (not locally started) two-node cluster."""
    import ray

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 8.0, "GPU": 1.0, "memory": 16e9})
    monkeypatch.setattr(ray, "nodes", lambda: NODES)
    monkeypatch.setattr(cluster, "_started_locally", False)
    return cluster.describe_cluster()


def config(**settings) -> TrainConfig:
    return TrainConfig(model_id="m", train_path="t.jsonl", **settings)


def test_a_request_larger_than_the_cluster_is_refused_with_its_totals(joined_cluster):
    assert not joined_cluster.local and joined_cluster.max_node_cpus == 4
    with pytest.raises(ConfigError, match=r"num_devices 3 x 1 GPU per worker needs 3 GPU but the Ray cluster has 1;"):
        scaling_config(config(num_devices=3, worker_resources={"GPU": 1}), joined_cluster, None)
    with pytest.raises(ConfigError, match=r"needs 16 CPU but the Ray cluster has 8; .* or add nodes to the cluster"):
        scaling_config(config(num_devices=4, worker_resources={"CPU": 4}), joined_cluster, None)
    with pytest.raises(ConfigError, match=r"1 accelerator_type:A10G per worker needs 1 accelerator_type:A10G .* has 0"):
        scaling_config(config(worker_resources={"accelerator_type:A10G": 1}), joined_cluster, None)


def test_a_worker_larger_than_any_node_is_refused_even_when_the_totals_fit(joined_cluster):
    with pytest.raises(ConfigError, match=r"one worker needs 6 CPU, 1 GPU on a single node but no node .* has that much"):
        scaling_config(config(worker_resources={"CPU": 6}), joined_cluster, None)


def test_a_request_the_cluster_can_hold_is_planned(joined_cluster):
    scaling = scaling_config(config(worker_resources={"CPU": 4}), joined_cluster, None)
    assert scaling.use_gpu and scaling.resources_per_worker == {"CPU": 4, "GPU": 1}


@pytest.mark.parametrize("written", ["2..6", {"min": 2, "max": 6}])
def test_a_num_devices_range_is_an_elastic_worker_group_that_needs_only_its_minimum_to_fit(joined_cluster, written):
    elastic = config(num_devices=written, worker_resources={"CPU": 4, "GPU": 0})
    assert (elastic.min_devices, elastic.num_devices) == (2, 6)
    scaling = scaling_config(elastic, joined_cluster, None)
    assert scaling.num_workers == (2, 6) and scaling.elastic_resize_monitor_interval_s == 60  # 6 x 4 CPU > 8: 2 fit
    with pytest.raises(ConfigError, match=r"min_devices 3 x 4 CPU per worker needs 12 CPU but the Ray cluster has 8"):
        scaling_config(config(num_devices="3..6", worker_resources={"CPU": 4, "GPU": 0}), joined_cluster, None)
    fixed = config(num_devices="2..2", worker_resources={"CPU": 1, "GPU": 0})  # no range: a fixed size
    assert scaling_config(fixed, joined_cluster, None).num_workers == 2


@pytest.mark.parametrize("written", ["4..2", "0..2", "two", {"min": 1}, {"min": 1, "max": 2.5}])
def test_a_malformed_num_devices_range_is_one_line_naming_the_forms_it_takes(tmp_path, written):
    import yaml

    from tuneforge.config import load_config

    source = tmp_path / "config.yaml"
    source.write_text(yaml.safe_dump({"model_id": "m", "train_path": "t.jsonl", "num_devices": written}))
    with pytest.raises(ConfigError, match=r"config.yaml:\d+: num_devices: .* write e.g. 2, 1..4 or \{min: 1, max: 4\}"):
        load_config(source)


def test_a_search_refuses_elastic_workers_naming_the_line():
    from tuneforge.tune.space import validate_search

    elastic = config(num_devices="1..2", search_space={"learning_rate": {"loguniform": [1e-5, 1e-3]}})
    with pytest.raises(ConfigError, match="a search's trials each run a fixed number of workers"):
        validate_search(elastic)


def test_an_elastic_restart_on_fewer_workers_says_the_global_batch_is_kept():
    from tuneforge.train.driver import worker_count_change

    two, one = {"workers": 2, "gradient_accumulation": 1}, {"workers": 1, "gradient_accumulation": 2}
    assert worker_count_change(two, one, 16) == ("fewer fit now: 2 → 1 workers, gradient accumulation 1 → 2: the "
                                                 "global batch stays 16 rows")
    assert worker_count_change(one, two, 16).startswith("the cluster has room again: 1 → 2 workers")
    assert worker_count_change(two, dict(two), 16) is None


def test_without_a_dashboard_the_state_api_address_is_private_and_unserved():
    """Ray Train's placement-group cleaner asks the State API at the address the cluster registered whether the
    run's controller lives; a dashboard-less Ray registers its dashboard port all the same (default 8265)."""
    import socket

    port = cluster.private_dashboard_port(dashboard=False)
    assert port != cluster.DEFAULT_DASHBOARD_PORT
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0  # nothing answers there


FOREIGN_RAY = """
import ray, time
ray.init(include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=8265, logging_level="ERROR")
time.sleep(600)
"""


@pytest.mark.slow
def test_a_run_survives_another_rays_dashboard_appearing_on_the_default_port(tmp_path, tiny_llama_dir):
    """The cleaner finds its cluster once and keeps it; its State API calls went to 127.0.0.1:8265 even with no
    dashboard there (failing, harmlessly). A Ray dashboard started there later by anyone (another tuneforge run with
    --dashboard, a test session, `ray start --head`) answered "no such actor", and the cleaner removed the run's
    placement group within seconds: the run died with WorkerHealthCheckFailedError."""
    import socket
    import time

    from tests.helpers import chat_row, write_jsonl

    def dashboard_up() -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", cluster.DEFAULT_DASHBOARD_PORT)) == 0

    if dashboard_up():
        pytest.skip("something already listens on 127.0.0.1:8265")
    rows = write_jsonl(tmp_path / "train.jsonl", [chat_row(f"Say {word}.", word) for word in "abcdefgh"] * 8)
    config = tmp_path / "run.yaml"
    config.write_text(f"model_id: {tiny_llama_dir}\ntrain_path: {rows}\nvalid_split: 0.125\nprecision: fp32\n"
                      f"num_epochs: 60\ntrain_batch_size_per_device: 4\nmax_num_checkpoints: 1\n"
                      f"lora_config: {{r: 4}}\noutput_dir: {tmp_path / 'runs'}\n")
    run = tmp_path / "runs" / "beside"
    victim = subprocess.Popen([sys.executable, "-m", "tuneforge.cli", "train", str(config), "--name", "beside"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    foreign = None
    try:
        while not (run / "metrics.jsonl").is_file() or not (run / "metrics.jsonl").read_text().strip():
            assert victim.poll() is None, victim.stderr.read()[-3000:]
            time.sleep(0.2)
        foreign = subprocess.Popen([sys.executable, "-c", FOREIGN_RAY], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        while not dashboard_up():
            assert foreign.poll() is None, "the other Ray did not start"
            time.sleep(0.2)
        appeared = time.time()
        _, stderr = victim.communicate(timeout=900)
    finally:
        for process in (victim, foreign):
            if process is not None and process.poll() is None:
                process.kill()
    assert victim.returncode == 0, stderr[-3000:]
    steps = [row for row in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if row["type"] == "step"]
    assert len(steps) == json.loads((run / "plan.json").read_text())["total_steps"]
    assert steps[-1]["time"] > appeared + 5, "the run ended too soon after the other dashboard came up to prove much"


@pytest.mark.slow
def test_two_nodes_train_one_worker_each_like_two_workers_on_one_node(tmp_path, tiny_llama_dir):
    """A real two-node Ray cluster on this machine (a head and a worker node, one CPU each), joined with --address:
    SPREAD puts one worker on each node, gloo DDP runs across them, one checkpoint writer, and the run ends where
    the same two workers on one local node end."""
    from ray.cluster_utils import Cluster

    from tests.helpers import save_config, tuneforge_cli
    from tests.test_train import tiny_config
    from tuneforge.rundir import RunDir

    config = tiny_config(tmp_path, tiny_llama_dir, num_devices=2, worker_resources={"CPU": 1},
                         placement_strategy="SPREAD", num_epochs=4, max_num_checkpoints=2)
    source = save_config(config, tmp_path / "config.yaml")
    local = tuneforge_cli("train", str(source), "--name", "one-node")
    output, _ = local.communicate(timeout=600)
    assert local.returncode == 0, output
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        joined = tuneforge_cli("train", str(source), "--name", "two-nodes", "--address", cluster.address)
        output, _ = joined.communicate(timeout=600)
        assert joined.returncode == 0, output
    finally:
        cluster.shutdown()

    runs = {name: RunDir(tmp_path / "runs" / name) for name in ("one-node", "two-nodes")}
    placed = json.loads(runs["two-nodes"].state_file.read_text())["attempts"][0]["ray_nodes"]
    assert len(placed) == 2 and len(set(placed)) == 2  # one worker on each node
    assert len(set(json.loads(runs["one-node"].state_file.read_text())["attempts"][0]["ray_nodes"])) == 1
    evals = {name: [row for row in run.metrics() if row["type"] == "eval"] for name, run in runs.items()}
    assert [row["step"] for row in evals["two-nodes"]] == [row["step"] for row in evals["one-node"]]
    assert evals["two-nodes"][-1]["eval_loss"] == pytest.approx(evals["one-node"][-1]["eval_loss"], abs=1e-4)
    for checkpoint in runs["two-nodes"].checkpoints():  # one writer: one adapter per checkpoint
        assert len(list(checkpoint.glob("adapter_model*.safetensors"))) == 1


@pytest.mark.slow
def test_losing_a_node_mid_run_goes_on_with_fewer_workers_and_grows_back_with_the_same_global_batch(
        tmp_path, tiny_llama_dir):
    """num_devices 1..2 on a two-node cluster: the worker node is removed after the first registered checkpoint;
    Ray Train restarts the run from it on the one worker left, with twice the gradient accumulation; a node joins
    again and the run grows back to two workers. It trains the same steps on the same rows and ends where two
    workers end."""
    from ray.cluster_utils import Cluster

    from tests.helpers import save_config, tuneforge_cli
    from tests.test_faults import steps_of, wait_for_checkpoint_then_steps
    from tests.test_train import tiny_config
    from tuneforge.rundir import RunDir

    def run_config(name, num_devices):  # 40 epochs of 6 steps of 8 rows; a checkpoint every 40 steps
        return tiny_config(tmp_path, tiny_llama_dir, num_devices=num_devices, train_batch_size_per_device=4,
                           worker_resources={"CPU": 1}, num_epochs=40, max_num_checkpoints=6, run_name=name,
                           elastic_resize_interval_s=2)

    steady = tuneforge_cli("train", str(save_config(run_config("steady", 2), tmp_path / "steady.yaml")))
    output, _ = steady.communicate(timeout=600)
    assert steady.returncode == 0, output
    run = tmp_path / "runs" / "elastic"
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        worker_node = cluster.add_node(num_cpus=1)
        elastic = tuneforge_cli("train", str(save_config(run_config("elastic", "1..2"), tmp_path / "elastic.yaml")),
                                "--address", cluster.address)
        lost_after = wait_for_checkpoint_then_steps(run)
        cluster.remove_node(worker_node)
        wait_for_attempt(run, workers=1)
        cluster.add_node(num_cpus=1)
        output, _ = elastic.communicate(timeout=600)
        assert elastic.returncode == 0, output
    finally:
        elastic.kill()
        cluster.shutdown()

    attempts = json.loads((run / "run.json").read_text())["attempts"]
    sizes = [(attempt["workers"], attempt["gradient_accumulation"]) for attempt in attempts]
    assert sizes[0] == (2, 1) and (1, 2) in sizes and sizes[-1] == (2, 1), sizes
    shrunk = sizes.index((1, 2))
    assert attempts[shrunk]["step"] >= lost_after  # continued from a registered checkpoint
    said = " ".join(output.split())
    assert "fewer fit now: 2 → 1 workers, gradient accumulation 1 → 2: the global batch stays 8 rows" in said
    assert "the cluster has room again: 1 → 2 workers" in said
    assert sorted(steps_of(run)) == list(range(1, 241))  # every planned step, logged once
    evals = {name: [row for row in RunDir(tmp_path / "runs" / name).metrics() if row["type"] == "eval"]
             for name in ("steady", "elastic")}
    assert [row["step"] for row in evals["elastic"]] == [row["step"] for row in evals["steady"]]
    assert evals["elastic"][-1]["eval_loss"] == pytest.approx(evals["steady"][-1]["eval_loss"], abs=1e-3)


def wait_for_attempt(run, workers: int, timeout: float = 240) -> None:
    """Until run.json records a worker group of `workers` workers started after the first."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        attempts = json.loads((run / "run.json").read_text()).get("attempts", [])
        if len(attempts) > 1 and attempts[-1].get("workers") == workers:
            return
        time.sleep(0.2)
    raise AssertionError(f"{run}: no restart on {workers} worker(s) within {timeout:.0f} s")


# --- checkpoint storage every node reaches (storage_path) --------------------------------------------------------


def test_checkpoint_store_is_the_run_folder_or_storage_path_per_run(tmp_path):
    from tuneforge.rundir import checkpoint_store

    run = tmp_path / "runs" / "demo"
    assert checkpoint_store(run, None) == str(run / "checkpoints")
    assert checkpoint_store(run, "s3://bucket/prefix/") == "s3://bucket/prefix/demo/checkpoints"
    assert checkpoint_store(run, str(tmp_path / "shared")) == str(tmp_path / "shared" / "demo" / "checkpoints")


def test_a_storage_uri_pyarrow_cannot_open_is_refused_before_ray_starts(tmp_path):
    from tuneforge.train.preflight import check_storage

    config = TrainConfig(model_id="m", train_path="t.jsonl", storage_path="nosuch://bucket/ckpts")
    with pytest.raises(ConfigError, match=r"cannot open nosuch://bucket/ckpts through pyarrow .*"
                                          r"check the URI, your credentials"):
        check_storage(config)
    check_storage(config.model_copy(update={"storage_path": f"file://{tmp_path}"}))  # reachable: no error


@pytest.mark.slow
def test_checkpoints_in_a_storage_uri_train_resume_and_land_in_best(ray_session, tmp_path, tiny_llama_dir,
                                                                   tiny_chat_data):
    """storage_path as a pyarrow URI (file:// here, s3:// or gs:// on a cluster): Ray Train writes every checkpoint
    there and nothing under the run; a run cut after its first checkpoint resumes from the store; best/ is copied
    back into the run."""
    from ray.train import UserCallback

    from tests.helpers import train_tiny_causal
    from tests.test_cli import tuneforge_here
    from tuneforge.rundir import RunDir, is_whole_checkpoint, stored_latest_step

    class CrashAfterFirstCheckpoint(UserCallback):
        def after_report(self, run_context, metrics, checkpoint):
            raise RuntimeError("simulated crash")

    store = tmp_path / "store"
    store.mkdir()
    run = RunDir(tmp_path / "runs" / "stored")
    with pytest.raises(Exception):  # noqa: B017 - the simulated crash, as Ray Train wraps it
        train_tiny_causal(tiny_llama_dir, tiny_chat_data, run.path, num_epochs=2, max_num_checkpoints=2,
                          storage_path=f"file://{store}", callbacks=[CrashAfterFirstCheckpoint()])
    kept = store / "stored" / "checkpoints"
    assert stored_latest_step(f"file://{kept}") == 4  # registered by Ray (a later one may be written, unregistered)
    assert not run.checkpoints_dir.exists()

    resumed = tuneforge_here("train", "--resume", str(run.path))
    assert resumed.returncode == 0, resumed.stderr
    state, results = run.state(), json.loads(run.results_file.read_text())
    assert state.resumed_from_step == 4
    assert [row["step"] for row in run.metrics() if row["type"] == "step"] == list(range(1, 9))
    assert all(path.startswith(f"file://{kept}/step-") for path in results["checkpoints"])
    assert is_whole_checkpoint(run.best_dir)
    assert not run.checkpoints_dir.exists()


def test_the_model_cache_is_one_absolute_folder_whatever_the_working_directory(tmp_path, monkeypatch):
    from tuneforge.models import tuneforge_home

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TUNEFORGE_HOME", "relative/cache")
    assert tuneforge_home() == tmp_path / "relative" / "cache"  # Ray workers resolve in their own cwd
    monkeypatch.delenv("TUNEFORGE_HOME")
    assert tuneforge_home().is_absolute() and tuneforge_home().parts[-2:] == (".cache", "tuneforge")


# --- joining a cluster: bounded, with the cause named -------------------------------------------------------------


@pytest.fixture
def loopback_head():
    """Something listening on 127.0.0.1 only, as a head started with node_ip_address 127.0.0.1 does."""
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield f"127.0.0.1:{listener.getsockname()[1]}"


def test_a_head_bound_to_the_loopback_is_named_at_once_not_retried_for_minutes(loopback_head, monkeypatch):
    """Ray dials this machine's own IP where it is given 127.0.0.1 (127.0.0.2 stands in for it here: a loopback
    address the head is not bound to)."""
    import time

    import ray._private.services as services

    port = loopback_head.rpartition(":")[2]
    monkeypatch.setattr(services, "canonicalize_bootstrap_address", lambda address, *_: f"127.0.0.2:{port}")
    started = time.monotonic()
    with pytest.raises(TuneforgeError) as caught:
        cluster.check_join(loopback_head, timeout_s=30)
    message = str(caught.value)
    assert time.monotonic() - started < 10  # decisive at the first try: no waiting helps
    assert f"Ray dials 127.0.0.2:{port}" in message and f"answers on {loopback_head} only" in message
    assert f"--node-ip-address=127.0.0.2 --port={port}" in message and "\n" not in message


def test_a_head_that_answers_where_ray_dials_is_joined_without_delay(loopback_head):
    cluster.check_join(f"ray://{loopback_head}", timeout_s=1)  # a Ray Client address is dialed as given


@pytest.mark.usefixtures("ray_must_not_start")
def test_nothing_listening_is_one_line_after_the_join_timeout_before_ray_starts(tmp_path):
    from tests.helpers import chat_row, free_port, write_config, write_jsonl
    from tests.test_cli import assert_one_clear_line, config_text, tuneforge_here

    train = write_jsonl(tmp_path / "t.jsonl", [chat_row("a", "b")] * 8)
    cfg = write_config(tmp_path / "c.yaml", config_text(train, tmp_path / "runs"))
    address = f"127.0.0.1:{free_port()}"
    result = tuneforge_here("train", str(cfg), "--address", address, "--join-timeout", "1.5")
    assert_one_clear_line(result, f"cannot join the Ray cluster at {address}", "connection refused", "after 1.5 s",
                          "ray start --head")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.slow
def test_joining_a_real_head_bound_to_the_loopback_fails_fast_and_says_why(tmp_path, tiny_llama_dir):
    """The reported case: a two-node cluster bound to 127.0.0.1; a bare ray.init(address=...) retried it for 7
    minutes, printing a warning every few seconds."""
    from ray._private.services import canonicalize_bootstrap_address
    from ray.cluster_utils import Cluster

    from tests.helpers import save_config, tuneforge_cli
    from tests.test_train import tiny_config

    source = save_config(tiny_config(tmp_path, tiny_llama_dir), tmp_path / "config.yaml")
    cluster_ = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                               "node_ip_address": "127.0.0.1"})
    try:
        cluster_.add_node(num_cpus=1, node_ip_address="127.0.0.1")
        dialed = canonicalize_bootstrap_address(cluster_.address)
        if dialed == cluster_.address:
            pytest.skip("this machine has no address but the loopback: Ray dials what it is given")
        joined = tuneforge_cli("train", str(source), "--address", cluster_.address, "--join-timeout", "20")
        output, _ = joined.communicate(timeout=120)
    finally:
        cluster_.shutdown()
    assert joined.returncode == 2, output
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and f"Ray dials {dialed}" in errors[0] and "--node-ip-address" in errors[0], output
    assert "Failed to connect to GCS" not in output and "Traceback" not in output
