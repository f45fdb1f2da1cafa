"""Running Ray Serve replicas pick up a newly published policy version without a restart and
without a failed request, and refuse a corrupt one while the previous version keeps answering.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.artifact_copies import corrupt_copy, republish
from tests.conftest import ServingStack
from tests.integration.serving.traffic import RecommendTraffic

pytestmark = pytest.mark.integration


def test_new_versions_are_served_without_a_failed_request_and_corrupt_ones_refused(
    serving_stack: ServingStack,
) -> None:
    published = Path(serving_stack.models.policies["slateq"].path)
    with RecommendTraffic(serving_stack.url, "reload", 7, 3) as traffic:
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
