"""A/B arms, the shadow policy, the admin API and readiness over real HTTP through Ray Serve.

A second application (``/ab``) joins the session's Serve instance with its own settings: a
60/40 split between SlateQ and the myopic baseline, the retrieval policy as shadow, an admin
key, and its own artifact root, topics and key prefix. The tests run in file order: the app
starts without its myopic artifact (not ready), then gets it.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from recsys.config import AuthSettings, PolicySettings, StreamSettings
from recsys.stream import KafkaEventSource
from recsys.types import ImpressionEvent
from tests.artifact_copies import republish
from tests.conftest import ServingStack, copy_trained, side_app_settings

pytestmark = pytest.mark.integration

ADMIN = "ab-admin-key-0123456789"
APP = "recsys-ab"


@dataclass(frozen=True)
class AbApp:
    url: str
    root: Path  # the app's own artifact root
    source: Path  # the session's artifacts (holds policy-myopic)
    stream: StreamSettings


def _wait(check: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"not true after {timeout_s}s")


@pytest.fixture(scope="module")
def ab(serving_stack: ServingStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AbApp]:
    from ray import serve

    from recsys.serving.deployment import deploy_app

    src = Path(serving_stack.settings.artifacts.root)
    # Without the myopic policy: the app must say it is not ready until it loads.
    root = copy_trained(serving_stack, tmp_path_factory.mktemp("ab") / "artifacts", ("myopic",))
    settings = side_app_settings(
        serving_stack,
        "ab",
        root,
        policy=PolicySettings(
            reload_interval_s=0.5,
            traffic={"slateq": 0.6, "myopic": 0.4},
            shadow="retrieval",
        ),
        serving=serving_stack.settings.serving.model_copy(
            update={"auth": AuthSettings(admin_keys=[ADMIN])}  # type: ignore[list-item]
        ),
    )
    deploy_app(settings, APP, "/ab")
    try:
        yield AbApp(f"{serving_stack.url}/ab", root, src, settings.stream)
    finally:
        serve.delete(APP)


@pytest.fixture
def http(ab: AbApp) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=ab.url, timeout=30.0) as client:
        _wait(lambda: client.get("/healthz").status_code == 200)
        yield client


def test_readyz_is_503_until_every_arm_has_its_model(ab: AbApp, http: httpx.Client) -> None:
    ready = http.get("/readyz")
    assert ready.status_code == 503
    assert "myopic" in ready.json()["reason"]
    # It answers meanwhile: the myopic arm's users get the retrieval fallback.
    assert http.post("/recommend", json={"user_id": "early", "slate_size": 3}).status_code == 200
    shutil.copytree(ab.source / "policy-myopic", ab.root / "policy-myopic")
    _wait(lambda: http.get("/readyz").status_code == 200)


def _policies(http: httpx.Client, users: list[str]) -> dict[str, str]:
    out = {}
    for user in users:
        resp = http.post("/recommend", json={"user_id": user, "slate_size": 4})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["model_version"].startswith(body["policy"] + "@")
        out[user] = body["policy"]
    return out


def test_the_split_matches_its_fractions_and_sticks_to_each_user(
    ab: AbApp, http: httpx.Client
) -> None:
    _wait(lambda: http.get("/readyz").status_code == 200)
    users = [f"ab-user-{i}" for i in range(500)]
    first = _policies(http, users)
    counts = Counter(first.values())
    assert set(counts) == {"slateq", "myopic"}  # never the shadow
    assert abs(counts["myopic"] / len(users) - 0.4) < 0.07  # 3 binomial sd
    again = _policies(http, users[:150])
    assert again == {u: first[u] for u in users[:150]}
    metrics = http.get("/metrics").text
    assert 'recsys_policy_slates_total{arm="myopic"' in metrics
    assert 'recsys_policy_slates_total{arm="slateq"' in metrics


def test_the_shadow_is_logged_beside_each_impression_and_never_served(
    ab: AbApp, http: httpx.Client
) -> None:
    served = {}
    for i in range(20):
        body = http.post("/recommend", json={"user_id": f"shadow-{i}", "slate_size": 5}).json()
        assert body["policy"] != "retrieval"
        served[body["request_id"]] = [it["item_id"] for it in body["items"]]
    source = KafkaEventSource(ab.stream.bootstrap, [ab.stream.impressions_topic])
    found: dict[str, ImpressionEvent] = {}
    deadline = time.monotonic() + 20.0
    try:
        while len(found) < len(served) and time.monotonic() < deadline:
            for rec in source.poll(1000, 0.5):
                if isinstance(rec.event, ImpressionEvent) and rec.event.request_id in served:
                    found[rec.event.request_id] = rec.event
    finally:
        source.close()
    assert found.keys() == served.keys()
    for request_id, event in found.items():
        assert [it.item_id for it in event.items] == served[request_id]  # what was answered
        assert event.shadow is not None
        assert event.shadow.policy == "retrieval"
        assert len(event.shadow.items) == 5


def test_admin_api_pins_and_rolls_back_under_a_key(ab: AbApp, http: httpx.Client) -> None:
    assert http.get("/admin/policies").status_code == 401
    assert (
        http.get("/admin/policies", headers={"X-API-Key": "not-the-key-000000"}).status_code == 403
    )
    key = {"X-API-Key": ADMIN}
    before = {a["arm"]: a for a in http.get("/admin/policies", headers=key).json()["arms"]}
    assert before["retrieval"]["role"] == "shadow"
    old = before["slateq"]["serving_version"]
    republish(ab.root / "policy-slateq" / old, "zz-newer")
    user = next(
        u for u, p in _policies(http, [f"pin-{i}" for i in range(20)]).items() if p == "slateq"
    )

    def version() -> str:
        body = http.post("/recommend", json={"user_id": user, "slate_size": 3}).json()
        return str(body["model_version"])

    _wait(lambda: version() == "slateq@zz-newer")
    back = http.post("/admin/policies/slateq/rollback", headers=key)
    assert back.status_code == 200, back.text
    assert version() == f"slateq@{old}"  # this app has one replica: applied at once
    time.sleep(1.5)  # several watcher rounds: the pin holds against the newer version
    assert version() == f"slateq@{old}"
    assert http.delete("/admin/policies/slateq/pin", headers=key).status_code == 200
    _wait(lambda: version() == "slateq@zz-newer")
    missing = http.post("/admin/policies/slateq/pin", json={"version": "nope"}, headers=key)
    assert missing.status_code == 404
    assert missing.json()["detail"][0]["field"] == "version"


def test_the_cli_lists_and_rolls_back_without_printing_the_key(
    ab: AbApp, http: httpx.Client
) -> None:
    from typer.testing import CliRunner

    from recsys.cli import app

    runner = CliRunner()
    listed = runner.invoke(
        app, ["policies", "list", "--url", ab.url, "--json"], env={"RECSYS_API_KEY": ADMIN}
    )
    assert listed.exit_code == 0, listed.output
    arms = {a["arm"]: a for a in json.loads(listed.stdout)["arms"]}
    assert arms.keys() == {"slateq", "myopic", "retrieval"}
    assert ADMIN not in listed.output
    versions = arms["slateq"]["versions"]
    pinned = runner.invoke(
        app, ["policies", "pin", "slateq", versions[0], "--url", ab.url, "--api-key", ADMIN]
    )
    assert pinned.exit_code == 0, pinned.output
    assert ADMIN not in pinned.output
    bad = runner.invoke(
        app, ["policies", "rollback", "slateq", "--url", ab.url, "--api-key", "wrong-key-000000000"]
    )
    assert bad.exit_code == 1
    assert "403" in bad.output
    assert "wrong-key" not in bad.output
    released = runner.invoke(
        app, ["policies", "unpin", "slateq", "--url", ab.url, "--api-key", ADMIN, "--json"]
    )
    assert released.exit_code == 0, released.output
    assert json.loads(released.stdout)["arms"][0]["pinned"] is None
