"""``recsys train policy --address``: rollout actors on an existing two-node Ray cluster.

The cluster is real Ray nodes on loopback (a head and a second node, each its own raylet,
started by :class:`ray.cluster_utils.Cluster` the way ``ray start --head`` and ``ray start
--address`` would, and stopped by it). Each node offers one CPU and each rollout actor needs
one, so two workers can only run with one actor on each node. The CLI runs in its own
process, as a user's would: this test process may already be a driver of another Ray (the
session's serving stack), and a process joins one cluster at a time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from ray.cluster_utils import Cluster

from recsys.artifacts import latest_version
from recsys.policy.training.checkpoint import load_policy_checkpoint
from tests.unit.policy.configs import SMALL_SIMULATOR_ENV

ROOT = Path(__file__).resolve().parents[3]

#: The CLI with the documented budgets shrunk to the small test setup's, and a spy that
#: records where the rollout actors were placed (written to the file named by argv[1]).
DRIVER = textwrap.dedent(
    """
    import json, sys
    from dataclasses import replace
    import ray
    from recsys.policy.training import config, trainer
    from tests.unit.policy.configs import SMALL_SIMULATOR

    config.documented_config = lambda algo: replace(SMALL_SIMULATOR, algo=algo)
    make_workers = trainer.make_ray_workers

    def spy(*args, **kwargs):
        actors = make_workers(*args, **kwargs)
        seen = {
            "nodes": sorted(n["NodeID"] for n in ray.nodes() if n["Alive"]),
            "cpus": ray.cluster_resources().get("CPU"),
            "hosts": sorted(set(ray.get([a.node.remote() for a in actors]))),
        }
        with open(sys.argv[1], "w") as f:
            json.dump(seen, f)
        return actors

    trainer.make_ray_workers = spy
    from recsys.cli import app
    app(sys.argv[2:], prog_name="recsys")
    """
)


@pytest.fixture
def two_nodes() -> Iterator[str]:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        yield cluster.address
    finally:
        cluster.shutdown()


def test_train_policy_runs_its_rollout_actors_on_a_two_node_cluster(
    two_nodes: str, tmp_path: Path
) -> None:
    env = {"RECSYS_ARTIFACTS__ROOT": str(tmp_path), **SMALL_SIMULATOR_ENV}
    placement = tmp_path / "placement.json"
    args = ["train", "policy", "--algo", "slateq", "--workers", "2", "--iterations", "1"]
    args += ["--eval-users", "4", "--address", two_nodes]
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, str(placement), *args],
        cwd=ROOT,
        env={**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    seen = json.loads(placement.read_text())
    assert seen["cpus"] == 2.0
    assert len(seen["nodes"]) == 2
    assert seen["hosts"] == seen["nodes"], "one rollout actor on each node"
    ckpt = load_policy_checkpoint(latest_version(tmp_path, "policy-slateq"))
    assert (ckpt.config.workers, ckpt.iteration) == (2, 1)
    assert "published" in proc.stdout
