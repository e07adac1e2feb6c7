"""Resources on a Ray cluster joined with --address: a request it can never satisfy is refused at once. A local
Ray started for a run keeps to itself: another Ray's dashboard on this machine does not end it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tuneforge import cluster
from tuneforge.config import TrainConfig
from tuneforge.errors import ConfigError
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


def test_a_run_survives_another_rays_dashboard_on_the_default_port(tmp_path, ray_session, tiny_llama_dir):
    """Ray Train's placement-group cleaner asks the State API at the address its cluster registered whether the
    run's controller lives. A dashboard-less local Ray used to register 127.0.0.1:8265, so the dashboard of any
    other Ray there (this session's, started with dashboard=True) answered "no such actor", and the cleaner
    removed the run's placement group after a second: the run died with WorkerHealthCheckFailedError."""
    import socket

    from tests.helpers import chat_row, write_jsonl

    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", cluster.DEFAULT_DASHBOARD_PORT)) != 0:
            pytest.skip("no dashboard listens on 127.0.0.1:8265 (the session's Ray got another port)")
    rows = write_jsonl(tmp_path / "train.jsonl", [chat_row(f"Say {word}.", word) for word in "abcdefgh"] * 8)
    config = tmp_path / "run.yaml"
    config.write_text(f"model_id: {tiny_llama_dir}\ntrain_path: {rows}\nvalid_split: 0.125\nprecision: fp32\n"
                      f"num_epochs: 12\ntrain_batch_size_per_device: 4\nmax_num_checkpoints: 1\n"
                      f"lora_config: {{r: 4}}\noutput_dir: {tmp_path / 'runs'}\n")
    result = subprocess.run([sys.executable, "-m", "tuneforge.cli", "train", str(config), "--name", "beside"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "runs" / "beside"
    steps = [row for row in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if row["type"] == "step"]
    plan = json.loads((run / "plan.json").read_text())
    assert len(steps) == plan["total_steps"] >= 100 and (run / "results.json").is_file()
