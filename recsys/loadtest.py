"""``recsys loadtest``: Locust headless against a running service, with an SLO gate.

The clients are :mod:`recsys.loadtest_profile` (known, new and returning users; slates,
clicks and dwell; a small share of malformed requests that must get a 4xx). Every client
task is one request, started as a Poisson process per client, so the offered rate is ``clients x
per-client rate``: the runner picks the clients for the requested rate. Locust writes its
CSV files and HTML report into the output directory; the runner reads the aggregate row and
decides the gate over the steady state (clients start over ``RAMP_S`` seconds, then
statistics restart for ``duration``): p99 latency at most ``slo_p99_ms`` and unexpected
errors (Locust failures: 5xx, timeouts, a wrong answer to a malformed request) at most
``max_error_rate`` of the requests. The Locust process is stopped on every exit path.
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from recsys.types import RecsysError

PROFILE = Path(__file__).with_name("loadtest_profile.py")
#: Requests each simulated client sends per second (its think time is the inverse).
PER_CLIENT_RATE = 2.0
#: Seconds over which the clients are started before the measured ``duration``.
RAMP_S = 5.0


class LoadTestError(RecsysError):
    """The load test could not run (service down, Locust failed, no statistics)."""


@dataclass(frozen=True)
class EndpointStats:
    """One row of Locust's ``_stats.csv`` (latencies in milliseconds)."""

    name: str
    requests: int
    failures: int
    p50_ms: float
    p99_ms: float
    rps: float


@dataclass(frozen=True)
class LoadTestResult:
    """What a run measured and whether it met its SLO."""

    url: str
    target_rps: float
    duration_s: float
    clients: int
    total: EndpointStats
    endpoints: list[EndpointStats]
    slo_p99_ms: float
    max_error_rate: float
    reports: dict[str, str] = field(default_factory=dict)

    @property
    def error_rate(self) -> float:
        """Unexpected errors per request."""
        return self.total.failures / max(self.total.requests, 1)

    @property
    def violations(self) -> list[str]:
        """Why the SLO was missed (empty when it held)."""
        out = []
        if self.total.requests == 0:
            out.append("no request completed")
        if self.total.p99_ms > self.slo_p99_ms:
            out.append(f"p99 {self.total.p99_ms:.1f} ms > {self.slo_p99_ms:g} ms")
        if self.error_rate > self.max_error_rate:
            out.append(f"error rate {self.error_rate:.4f} > {self.max_error_rate:g}")
        return out

    @property
    def passed(self) -> bool:
        return not self.violations

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with the derived figures."""
        out = asdict(self)
        out.update(
            error_rate=self.error_rate,
            achieved_rps=self.total.rps,
            passed=self.passed,
            violations=self.violations,
        )
        return out


def clients_for(rps: float, per_client_rate: float = PER_CLIENT_RATE) -> int:
    """Simulated clients that offer ``rps`` requests per second at ``per_client_rate`` each."""
    if not (math.isfinite(rps) and rps > 0):
        raise ValueError(f"rps must be > 0, got {rps}")
    return max(1, math.ceil(rps / per_client_rate))


def read_stats(prefix: Path) -> tuple[EndpointStats, list[EndpointStats]]:
    """The aggregate and per-endpoint rows of ``<prefix>_stats.csv``."""
    path = Path(f"{prefix}_stats.csv")
    if not path.is_file():
        raise LoadTestError(f"Locust wrote no statistics ({path} is missing)")
    rows: list[EndpointStats] = []
    total: EndpointStats | None = None
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            stats = EndpointStats(
                name=row["Name"],
                requests=int(row["Request Count"]),
                failures=int(row["Failure Count"]),
                p50_ms=_number(row["50%"]),
                p99_ms=_number(row["99%"]),
                rps=_number(row["Requests/s"]),
            )
            if row["Name"] == "Aggregated":
                total = stats
            else:
                rows.append(stats)
    if total is None:
        raise LoadTestError(f"{path} has no Aggregated row")
    return total, rows


def _number(text: str) -> float:
    """Locust writes ``N/A`` for percentiles of an endpoint without requests."""
    try:
        return float(text)
    except ValueError:
        return math.nan


def check_service(url: str, timeout_s: float = 5.0) -> None:
    """Fail early, with the URL in the message, when nothing answers ``/healthz``."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/healthz", timeout=timeout_s) as resp:
            if resp.status != 200:
                raise LoadTestError(f"{url}/healthz answered {resp.status}")
    except (urllib.error.URLError, OSError) as exc:
        raise LoadTestError(f"no recsys service answers at {url}: {exc}") from None


def run_loadtest(
    url: str,
    *,
    rps: float,
    duration_s: float,
    slo_p99_ms: float,
    max_error_rate: float,
    out_dir: Path,
    known_users: int = 500,
    seed: int = 0,
    per_client_rate: float = PER_CLIENT_RATE,
    invalid_share: float = 0.02,
    clients: int | None = None,
) -> LoadTestResult:
    """Run Locust headless for ``duration_s`` at ``rps`` and gate the result on the SLO.

    ``clients`` fixes the number of simulated clients instead of sizing it from ``rps`` (each
    then offers ``rps / clients``): with a rate far above what the service can answer, that is
    a closed-loop test at saturation with that many clients in flight.

    Writes ``locust_stats.csv`` (and the other Locust CSVs), ``report.html`` and
    ``result.json`` into ``out_dir``.
    """
    if not (math.isfinite(duration_s) and 1 <= duration_s <= 3600):
        raise ValueError(f"duration must be in [1, 3600] s, got {duration_s}")
    if not (math.isfinite(slo_p99_ms) and slo_p99_ms > 0):
        raise ValueError(f"slo_p99_ms must be > 0, got {slo_p99_ms}")
    if not 0.0 <= max_error_rate <= 1.0:
        raise ValueError(f"max_error_rate must be in [0, 1], got {max_error_rate}")
    check_service(url)
    if clients is None:
        clients = clients_for(rps, per_client_rate)
    elif clients < 1:
        raise ValueError(f"clients must be >= 1, got {clients}")
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = out_dir / "locust"
    html = out_dir / "report.html"
    env = {
        **os.environ,
        "RECSYS_LOAD_USERS": str(known_users),
        "RECSYS_LOAD_RATE": repr(rps / clients),
        "RECSYS_LOAD_SEED": str(seed),
        "RECSYS_LOAD_INVALID_SHARE": repr(invalid_share),
    }
    cmd = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(PROFILE),
        "--headless",
        "--host",
        url.rstrip("/"),
        "--users",
        str(clients),
        "--spawn-rate",
        repr(clients / RAMP_S),
        # Statistics restart once every client runs, so they describe the steady state:
        # while Locust spawns clients its own process is busy and the first requests of each
        # new connection would be measured late.
        "--reset-stats",
        "--run-time",
        f"{math.ceil(duration_s + RAMP_S)}s",
        "--stop-timeout",
        "5",
        "--csv",
        str(prefix),
        "--html",
        str(html),
        "--only-summary",
        "--loglevel",
        "WARNING",
    ]
    _run_locust(cmd, env, timeout_s=duration_s + RAMP_S + 90.0, log=out_dir / "locust.log")
    total, endpoints = read_stats(prefix)
    result = LoadTestResult(
        url=url,
        target_rps=rps,
        duration_s=duration_s,
        clients=clients,
        total=total,
        endpoints=endpoints,
        slo_p99_ms=slo_p99_ms,
        max_error_rate=max_error_rate,
        reports={"csv": f"{prefix}_stats.csv", "html": str(html)},
    )
    (out_dir / "result.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return result


def _run_locust(cmd: list[str], env: dict[str, str], timeout_s: float, log: Path) -> None:
    """Run Locust in its own process group; stop the whole group on timeout or interrupt.

    Locust exits 1 whenever a request failed; that is the SLO's business, not an error here.
    """
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _stop(proc)
            raise LoadTestError(f"Locust did not finish within {timeout_s:.0f} s") from None
        except BaseException:
            _stop(proc)
            raise
    if code not in (0, 1):
        tail = log.read_text()[-2000:]
        raise LoadTestError(f"Locust exited with {code}:\n{tail}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, then SIGKILL what is left after 10 s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass
