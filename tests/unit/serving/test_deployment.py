"""The environment a Ray that recsys starts gets (no Ray is started here)."""

from __future__ import annotations

import pytest

from recsys import embedded
from recsys.config import ServingSettings
from recsys.serving.deployment import effective_ray_env, ray_serve_env


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
