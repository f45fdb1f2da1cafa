"""Running Ray Serve replicas pick up a newly published policy version without a restart and
without a failed request, and refuse a corrupt one while the previous version keeps answering.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.artifact_copies import corrupt_copy, republish
from tests.conftest import ServingStack

pytestmark = pytest.mark.integration


class _Traffic:
    """Requests in a loop from a background thread, recording every answer."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.statuses: list[int] = []
        self.versions: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30.0) as http:
            i = 0
            while not self._stop.is_set():
                resp = http.post("/recommend", json={"user_id": f"reload-{i % 7}", "slate_size": 3})
                self.statuses.append(resp.status_code)
                if resp.status_code == 200:
                    self.versions.append(resp.json()["model_version"])
                i += 1

    def __enter__(self) -> _Traffic:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(30.0)

    def wait_for(self, version: str, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.versions and self.versions[-1] == version:
                return
            time.sleep(0.1)
        raise AssertionError(f"still serving {self.versions[-1:]} after {timeout_s}s")


def test_new_versions_are_served_without_a_failed_request_and_corrupt_ones_refused(
    serving_stack: ServingStack,
) -> None:
    published = Path(serving_stack.models.policies["slateq"].path)
    with _Traffic(serving_stack.url) as traffic:
        traffic.wait_for(f"slateq@{published.name}")
        newer = republish(published, "zz-retrained")
        traffic.wait_for("slateq@zz-retrained")
        corrupt_copy(newer, "zzz-corrupt")
        interval = serving_stack.settings.policy.reload_interval_s
        time.sleep(6 * interval)  # several reload rounds see the corrupt version
        served_after = len(traffic.versions)
        time.sleep(1.0)
    assert len(traffic.statuses) > 20
    assert set(traffic.statuses) == {200}
    assert traffic.versions[-1] == "slateq@zz-retrained"
    assert all(v != "slateq@zzz-corrupt" for v in traffic.versions)
    assert len(traffic.versions) > served_after  # still answering after the refusal
    metrics = httpx.get(f"{serving_stack.url}/metrics", timeout=30.0).text
    assert 'recsys_policy_versions{outcome="refused"} 1.0' in metrics
    assert (
        'recsys_policy_serving{arm="slateq",role="traffic",version="slateq@zz-retrained"} 1.0'
        in metrics
    )
