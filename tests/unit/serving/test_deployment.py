"""The environment a Ray that recsys starts gets (no Ray is started here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys import embedded
from recsys.config import ServingSettings
from recsys.serving.deployment import effective_ray_env, haproxy_dirs, ray_serve_env


def test_haproxy_side_ports_are_distinct_and_outside_the_ephemeral_range() -> None:
    eph_low, eph_high = embedded._ephemeral_range()
    for _ in range(10):
        env = ray_serve_env(ServingSettings(throughput_optimized=True))
        stats = int(env["RAY_SERVE_HAPROXY_STATS_PORT"])
        metrics = int(env["RAY_SERVE_HAPROXY_METRICS_PORT"])
        assert stats != metrics
        for port in (stats, metrics):
            assert embedded.LISTEN_PORT_RANGE[0] <= port < embedded.LISTEN_PORT_RANGE[1]
            assert not eph_low <= port <= eph_high


def test_haproxy_per_request_metrics_are_off_for_a_local_ray() -> None:
    env = ray_serve_env(ServingSettings(throughput_optimized=True))
    assert env["RAY_SERVE_HAPROXY_METRICS_ENABLED"] == "0"


def test_without_throughput_mode_only_worker_niceness_is_set() -> None:
    assert ray_serve_env(ServingSettings(throughput_optimized=False)) == {
        "RAY_worker_niceness": "0"
    }


def test_an_operators_value_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_SERVE_HAPROXY_STATS_PORT", "18404")
    env = effective_ray_env(ServingSettings(throughput_optimized=True))
    assert env["RAY_SERVE_HAPROXY_STATS_PORT"] == "18404"


def test_haproxy_dirs_are_the_nodes_own_directories(monkeypatch: pytest.MonkeyPatch) -> None:
    from ray.serve._private import constants

    node = "ab12" * 14
    monkeypatch.setattr(constants, "RAY_SERVE_HAPROXY_SERVER_STATE_BASE", "/srv/hap")
    monkeypatch.setattr(constants, "RAY_SERVE_HAPROXY_SOCKET_PATH", "/srv/hap/admin.sock")
    monkeypatch.setattr(constants, "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC", "/etc/hap/haproxy.cfg")
    monkeypatch.setattr(constants, "RAY_SERVE_HAPROXY_SERVER_STATE_FILE", "/srv/hap/state")
    monkeypatch.setattr(constants, "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH", "/srv/hap/m.sock")
    assert haproxy_dirs(node) == [Path("/etc/hap") / node, Path("/srv/hap") / node]


@pytest.mark.parametrize("node", ["", "..", "../etc", "ab12/../..", "not-hex-at-all-0000", "ab12"])
def test_haproxy_dirs_name_nothing_for_what_is_not_a_node_id(node: str) -> None:
    assert haproxy_dirs(node) == []
