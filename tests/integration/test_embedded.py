"""Embedded services outlive no owner: not even one killed with SIGKILL (Linux only)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.processes import HAS_PROC, Proc, is_alive, process

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not (HAS_PROC and sys.platform.startswith("linux")), reason="PR_SET_PDEATHSIG is Linux's"
    ),
]

OWNER = """
import time
from recsys.embedded import EmbeddedBroker, EmbeddedRedis
redis, broker = EmbeddedRedis().start(), EmbeddedBroker().start()
print(redis.pid, broker.pid, flush=True)
time.sleep(120)
"""


def test_redis_and_broker_die_with_a_sigkilled_owner() -> None:
    owner = subprocess.Popen([sys.executable, "-c", OWNER], stdout=subprocess.PIPE, text=True)
    services: list[Proc] = []
    try:
        assert owner.stdout is not None
        for pid in owner.stdout.readline().split():
            if (proc := process(int(pid))) is not None:
                services.append(proc)
        assert [p.name[:5] for p in services] == ["redis", "tansu"]
        # Each runs in its own session, so a terminal's Ctrl-C reaches only the owner.
        assert all(os.getsid(p.pid) == p.pid for p in services)

        owner.kill()
        owner.wait(timeout=10)
        deadline = time.monotonic() + 10.0
        while any(is_alive(p) for p in services) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [p for p in services if is_alive(p)]
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait(timeout=10)
        for leftover in services:
            if is_alive(leftover):
                os.kill(leftover.pid, signal.SIGKILL)
