"""The serve benchmark's readings of how busy the machine was (``box_cpu``) and of what the
server's batches did (``server``, from its own ``/metrics``)."""

from __future__ import annotations

import os

import pytest
from prometheus_client import generate_latest

from recsys.serving.bench import _box_cpu, _cpu_ticks, _server_batches, parse_batch_counters
from recsys.serving.recommender import RecommenderMetrics


def test_box_cpu_is_the_busy_share_of_every_core_and_cpu_time_per_request() -> None:
    cores = os.cpu_count() or 1
    tick = os.sysconf("SC_CLK_TCK")
    # Over 1,000 ticks of all cores together: 600 busy, 50 of them stolen by the host.
    box = _box_cpu((100, 1_000, 10), (700, 2_000, 60), requests=30)
    assert box is not None
    assert box["busy_cores"] == pytest.approx(cores * 0.6)
    assert box["steal_cores"] == pytest.approx(cores * 0.05)
    assert box["cpu_ms_per_request"] == pytest.approx(1000.0 * 600 / tick / 30)


def test_box_cpu_is_none_without_two_readings_that_moved() -> None:
    assert _box_cpu(None, (1, 2, 0), 5) is None
    assert _box_cpu((1, 2, 0), None, 5) is None
    assert _box_cpu((1, 2, 0), (1, 2, 0), 5) is None


def test_cpu_ticks_read_this_machine() -> None:
    first = _cpu_ticks()
    if first is None:  # not Linux: nothing to read, and the benchmark records None
        assert not os.path.exists("/proc/stat")
        return
    sum(i * i for i in range(200_000))  # some CPU time passes
    second = _cpu_ticks()
    assert second is not None
    busy, total, steal = first
    assert 0 <= steal <= busy <= total
    assert second[1] >= total
    assert second[0] >= busy


def _observe_batch(metrics: RecommenderMetrics, size: int, **stages: float) -> None:
    """What ``Recommender.recommend_many`` records for one batch."""
    for name, seconds in stages.items():
        metrics.stage.labels(name).observe(seconds)
    metrics.batch_size.observe(size)


def _counters(metrics: RecommenderMetrics) -> dict[str, float]:
    return parse_batch_counters(generate_latest(metrics.registry).decode())


def test_server_batches_are_the_batches_between_two_metrics_readings() -> None:
    metrics = RecommenderMetrics()
    _observe_batch(metrics, 16, state=0.5, retrieval=0.5, policy=0.5, publish=0.5)  # before
    before = _counters(metrics)
    assert before["recsys_recommend_batch_size_count"] == 1
    assert before["recsys_recommend_stage_seconds_sum{policy}"] == pytest.approx(0.5)
    _observe_batch(metrics, 1, state=0.001, retrieval=0.004, policy=0.005, publish=0.0)
    _observe_batch(metrics, 3, state=0.001, retrieval=0.006, policy=0.007, publish=0.002)
    metrics.latency.observe(9.0)  # other histograms are not read
    server = _server_batches(before, _counters(metrics), seconds=0.1)
    assert server is not None
    assert server["batches"] == 2
    assert server["mean_batch_size"] == pytest.approx(2.0)
    assert server["stage_ms_per_batch"] == pytest.approx(
        {"policy": 6.0, "publish": 1.0, "retrieval": 5.0, "state": 1.0}
    )
    assert server["batch_ms"] == pytest.approx(13.0)
    assert server["batch_busy_share"] == pytest.approx(0.026 / 0.1)


def test_server_batches_are_none_without_readings_or_batches() -> None:
    metrics = RecommenderMetrics()
    _observe_batch(metrics, 2, state=0.001)
    now = _counters(metrics)
    assert _server_batches(None, now, 1.0) is None
    assert _server_batches(now, None, 1.0) is None
    assert _server_batches(now, now, 1.0) is None  # no batch in between
    assert _server_batches({}, now, 0.0) is None


def test_parse_batch_counters_ignores_everything_else() -> None:
    text = """# TYPE recsys_requests_total counter
recsys_requests_total{route="/recommend",outcome="ok"} 7.0
# TYPE recsys_recommend_batch_size histogram
recsys_recommend_batch_size_bucket{le="1.0"} 1.0
recsys_recommend_batch_size_bucket{le="+Inf"} 2.0
recsys_recommend_batch_size_sum 5.0
recsys_recommend_batch_size_count 2.0
"""
    assert parse_batch_counters(text) == {
        "recsys_recommend_batch_size_sum": 5.0,
        "recsys_recommend_batch_size_count": 2.0,
    }
