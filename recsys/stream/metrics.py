"""Prometheus metrics for the stream consumers (online updater, joiner, learner).

Each consumer keeps plain counters in a stats dataclass (cheap, testable, no Prometheus in
the hot loop). :class:`StatsExporter` samples them once per ``interval_s`` into a registry:
each counter field ``f`` of component ``c`` becomes ``recsys_<c>_<f>_total``, and the
source's consumer lag (records behind the newest offset, per partition) becomes
``recsys_<c>_lag_records{partition}``. With those, events/s is ``rate(..._records_total)``
and the join rate ``rate(joiner_joined_feedback_total) / rate(joiner_feedback_total)``.
:func:`serve_metrics` exposes a registry over HTTP for a scraper.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, start_http_server

LagFn = Callable[[], Mapping[str, int]]


class StatsExporter:
    """Copies a stats dataclass (and optionally a lag reading) into Prometheus gauges.

    Counters are exported as gauges holding the running total: the consumer owns the count,
    and a restart resets it like any process counter (``rate()`` handles resets).
    """

    def __init__(
        self,
        component: str,
        stats: Callable[[], Any],
        registry: CollectorRegistry,
        lag: LagFn | None = None,
    ) -> None:
        self._stats = stats
        self._lag = lag
        sample = stats()
        if not dataclasses.is_dataclass(sample):
            raise TypeError("stats() must return a dataclass instance")
        self._gauges: dict[str, Gauge] = {}
        for field in dataclasses.fields(sample):
            value = getattr(sample, field.name)
            if isinstance(value, int | float) and not isinstance(value, bool):
                self._gauges[field.name] = Gauge(
                    f"recsys_{component}_{field.name}_total",
                    f"{component}: {field.name} since the process started",
                    registry=registry,
                )
        self._lag_gauge = Gauge(
            f"recsys_{component}_lag_records",
            f"{component}: records between its position and the end of each partition",
            ["partition"],
            registry=registry,
        )

    def sample(self) -> None:
        """Read the stats (and lag) once and set every gauge."""
        stats = self._stats()
        for name, gauge in self._gauges.items():
            gauge.set(float(getattr(stats, name)))
        if self._lag is not None:
            try:
                lag = self._lag()
            except Exception:  # a broker hiccup must not stop the exporter
                return
            for partition, behind in lag.items():
                self._lag_gauge.labels(partition).set(float(behind))

    def run(self, stop: threading.Event, interval_s: float = 1.0) -> None:
        """Sample every ``interval_s`` until ``stop`` is set (once more at the end)."""
        while not stop.wait(interval_s):
            self.sample()
        self.sample()

    def start_in_thread(self, stop: threading.Event, interval_s: float = 1.0) -> threading.Thread:
        """Run :meth:`run` in a daemon thread."""
        thread = threading.Thread(
            target=self.run, args=(stop, interval_s), name="stats-exporter", daemon=True
        )
        thread.start()
        return thread


def serve_metrics(registry: CollectorRegistry, port: int, addr: str = "127.0.0.1") -> Any:
    """Expose ``registry`` at ``http://addr:port/metrics`` from a daemon thread; returns the
    server (``shutdown()`` stops it)."""
    server, _thread = start_http_server(port, addr=addr, registry=registry)
    return server
