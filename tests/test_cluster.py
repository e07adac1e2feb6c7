"""Resources on a Ray cluster joined with --address: a request it can never satisfy is refused at once."""

from __future__ import annotations

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
