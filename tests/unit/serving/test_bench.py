"""The serve benchmark's reading of how busy the machine was (``box_cpu``)."""

from __future__ import annotations

import os

import pytest

from recsys.serving.bench import _box_cpu, _cpu_ticks


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
