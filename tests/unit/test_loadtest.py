"""The load-test runner's pieces that need no service: sizing, statistics, the SLO gate."""

from __future__ import annotations

import math
import socket
from pathlib import Path

import pytest

from recsys.loadtest import (
    EndpointStats,
    LoadTestError,
    LoadTestResult,
    check_service,
    clients_for,
    read_stats,
    run_loadtest,
)

HEADER = (
    "Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,"
    "Min Response Time,Max Response Time,Average Content Size,Requests/s,Failures/s,"
    "50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%"
)


def _write_stats(prefix: Path, rows: list[str]) -> None:
    Path(f"{prefix}_stats.csv").write_text("\n".join([HEADER, *rows]) + "\n")


def test_clients_offer_the_requested_rate() -> None:
    assert clients_for(200.0) == 100  # 2 requests/s each
    assert clients_for(3.0) == 2
    assert clients_for(0.5) == 1
    with pytest.raises(ValueError, match="rps"):
        clients_for(0.0)


def test_read_stats_takes_the_aggregate_and_each_endpoint(tmp_path: Path) -> None:
    prefix = tmp_path / "locust"
    _write_stats(
        prefix,
        [
            "POST,/recommend,900,1,40,45,10,300,900,30.0,0.03,40,45,50,55,70,90,110,150,200,300,300",
            "POST,/recommend [invalid],20,0,5,6,2,20,90,0.7,0,5,6,7,8,9,10,12,15,20,20,20",
            "POST,/feedback,0,0,0,0,0,0,0,0,0,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A",
            ",Aggregated,920,1,40,44,2,300,880,30.7,0.03,40,45,50,55,70,90,110,140,200,300,300",
        ],
    )
    total, endpoints = read_stats(prefix)
    assert total == EndpointStats("Aggregated", 920, 1, 40.0, 140.0, 30.7)
    assert [e.name for e in endpoints] == ["/recommend", "/recommend [invalid]", "/feedback"]
    assert endpoints[0].p99_ms == 150.0
    assert endpoints[2].requests == 0
    assert math.isnan(endpoints[2].p99_ms)  # Locust's N/A
    with pytest.raises(LoadTestError, match="missing"):
        read_stats(tmp_path / "nothing")
    _write_stats(tmp_path / "partial", [])
    with pytest.raises(LoadTestError, match="no Aggregated row"):
        read_stats(tmp_path / "partial")


def _result(total: EndpointStats, slo_p99_ms: float, max_error_rate: float) -> LoadTestResult:
    return LoadTestResult(
        url="http://127.0.0.1:1",
        target_rps=30.0,
        duration_s=30.0,
        clients=15,
        total=total,
        endpoints=[],
        slo_p99_ms=slo_p99_ms,
        max_error_rate=max_error_rate,
    )


def test_the_slo_gate_checks_p99_and_the_error_rate() -> None:
    total = EndpointStats("Aggregated", 1000, 2, 40.0, 140.0, 33.0)
    assert _result(total, 150.0, 0.01).passed
    slow = _result(total, 100.0, 0.01)
    assert slow.violations == ["p99 140.0 ms > 100 ms"]
    errors = _result(total, 150.0, 0.0)
    assert errors.violations == ["error rate 0.0020 > 0"]
    assert not errors.to_dict()["passed"]
    empty = _result(EndpointStats("Aggregated", 0, 0, 0.0, 0.0, 0.0), 150.0, 0.0)
    assert empty.violations == ["no request completed"]


def test_a_service_that_is_not_there_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"  # nothing listens: the socket was never listening
    with pytest.raises(LoadTestError, match=f"no recsys service answers at {url}"):
        check_service(url, timeout_s=2.0)
    with pytest.raises(ValueError, match="duration"):
        run_loadtest(url, rps=1, duration_s=0, slo_p99_ms=10, max_error_rate=0, out_dir=tmp_path)
