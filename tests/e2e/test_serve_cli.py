"""``recsys serve`` stopped the way Kubernetes stops it: SIGTERM while serving.

It must answer, then on SIGTERM drain, exit 0 and leave none of the processes it started
(Ray's raylet, GCS, agents, HAProxy, the replica) alive, nor HAProxy's files for its node.
"""

from __future__ import annotations

import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from recsys.embedded import free_listen_port
from tests.conftest import ServingStack
from tests.e2e.test_demo_cli import SERVING_WITHIN_S, running_cli
from tests.processes import HAS_PROC

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not HAS_PROC, reason="reads /proc")]


@pytest.fixture
def haproxy_root() -> Iterator[Path]:
    """A short directory for Serve's HAProxy files: its admin socket's path must stay under
    the 108 bytes a Unix socket name allows, which pytest's ``tmp_path`` can exceed."""
    with tempfile.TemporaryDirectory(prefix="hap-") as root:
        yield Path(root)


def test_serve_exits_zero_on_sigterm_and_leaves_nothing(
    serving_stack: ServingStack, tmp_path: Path, haproxy_root: Path
) -> None:
    port = free_listen_port()
    world = serving_stack.settings.catalog
    env = {
        "RECSYS_ARTIFACTS__ROOT": str(serving_stack.settings.artifacts.root),
        "RECSYS_CATALOG__NUM_ITEMS": str(world.num_items),
        "RECSYS_CATALOG__NUM_USERS": str(world.num_users),
        "RECSYS_CATALOG__NUM_TOPICS": str(world.num_topics),
        "RECSYS_CATALOG__SEED": str(world.seed),
        "RECSYS_CANDIDATES__DEFAULT_K": str(serving_stack.settings.candidates.default_k),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(haproxy_root),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(haproxy_root / "admin.sock"),
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(haproxy_root / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(haproxy_root / "server-state"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(haproxy_root / "metrics.sock"),
    }
    with running_cli(tmp_path, ["serve", "--port", str(port)], env) as run:
        assert run.serving.wait(SERVING_WITHIN_S), run.output[-4000:]
        url = f"http://127.0.0.1:{port}"
        answer = httpx.post(f"{url}/recommend", json={"user_id": "k1", "slate_size": 3})
        assert answer.status_code == 200, answer.text
        assert httpx.get(f"{url}/readyz").status_code == 200
        names = {p.name for p in run.started}
        assert {"raylet", "gcs_server"} <= names, names
        node_dirs = list(haproxy_root.iterdir())  # one per Ray node: this run's
        assert len(node_dirs) == 1, node_dirs
        assert (node_dirs[0] / "haproxy.cfg").is_file(), list(node_dirs[0].iterdir())
        run.proc.send_signal(signal.SIGTERM)
        returncode = run.wait(120)
        assert returncode == 0, run.output[-4000:]
        assert "stopped" in run.output
        assert run.wait_gone() == [], run.output[-4000:]
        assert list(haproxy_root.iterdir()) == []
