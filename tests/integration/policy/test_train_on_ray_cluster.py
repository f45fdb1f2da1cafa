"""``recsys train policy --address``: rollout actors on an existing two-node Ray cluster.

The cluster is real Ray nodes on loopback (a head and a second node, each its own raylet,
started by :class:`ray.cluster_utils.Cluster` the way ``ray start --head`` and ``ray start
--address`` would, and stopped by it). Each node offers one CPU and each rollout actor needs
one, so two workers can only run with one actor on each node.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import ray
from ray.cluster_utils import Cluster
from typer.testing import CliRunner

from recsys.artifacts import latest_version
from recsys.cli import app
from recsys.policy.training.checkpoint import load_policy_checkpoint
from tests.unit.policy.configs import SMALL_SIMULATOR

runner = CliRunner()


@pytest.fixture
def two_nodes() -> Iterator[str]:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        yield cluster.address
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()


def test_train_policy_runs_its_rollout_actors_on_a_two_node_cluster(
    two_nodes: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from recsys.policy.training import config as training_config
    from recsys.policy.training import rollout

    monkeypatch.setenv("RECSYS_ARTIFACTS__ROOT", str(tmp_path))
    monkeypatch.setenv("RECSYS_CATALOG__NUM_ITEMS", "300")
    monkeypatch.setenv("RECSYS_CATALOG__NUM_TOPICS", "6")
    monkeypatch.setenv("RECSYS_CANDIDATES__DIM", "8")
    monkeypatch.setenv("RECSYS_CANDIDATES__EPOCHS", "2")
    monkeypatch.setattr(
        training_config, "documented_config", lambda algo: replace(SMALL_SIMULATOR, algo=algo)
    )
    seen: dict[str, object] = {}
    make_workers = rollout.make_ray_workers

    def spy(*args: object, **kwargs: object) -> list[object]:
        """Record the cluster the actors were placed on and the nodes that host them."""
        actors = make_workers(*args, **kwargs)  # type: ignore[arg-type]
        seen["nodes"] = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        seen["cpus"] = ray.cluster_resources().get("CPU")
        seen["hosts"] = set(ray.get([a.node.remote() for a in actors]))
        return actors

    monkeypatch.setattr("recsys.policy.training.trainer.make_ray_workers", spy)
    args = ["--algo", "slateq", "--workers", "2", "--iterations", "1", "--eval-users", "4"]
    result = runner.invoke(app, ["train", "policy", *args, "--address", two_nodes])
    assert result.exit_code == 0, result.output
    assert seen["cpus"] == 2.0
    assert len(seen["nodes"]) == 2  # type: ignore[arg-type]
    assert seen["hosts"] == seen["nodes"], "one rollout actor on each node"
    published = latest_version(tmp_path, "policy-slateq")
    ckpt = load_policy_checkpoint(published)
    assert (ckpt.config.workers, ckpt.iteration) == (2, 1)
    summary = json.loads(result.output[result.output.index("{") :])
    assert summary["validation_users"] == 4
    assert not ray.is_initialized(), "the run disconnects from the cluster it joined"
