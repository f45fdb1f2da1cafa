"""A/B arms and the shadow policy in the request path, and the HTTP app's API keys, admin
routes and CORS, over the small published SlateQ and REINFORCE artifacts (no Ray)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from recsys.config import (
    ArtifactSettings,
    AuthSettings,
    CandidateSettings,
    CatalogSettings,
    PolicySettings,
    ServingSettings,
    Settings,
    settings_json,
)
from recsys.serving.api import build_api
from recsys.serving.recommender import Recommendation, Recommender, RecommendQuery
from recsys.serving.wiring import build_recommender
from recsys.stream import shared_event_log
from recsys.types import ImpressionEvent
from tests.artifact_copies import republish

ADMIN = "admin-key-0123456789"
CLIENT = "client-key-0123456789"


@pytest.fixture
def root(small_policies: dict[str, Path], tmp_path: Path) -> Path:
    dst = tmp_path / "artifacts"
    shutil.copytree(small_policies["slateq"].parent.parent, dst)
    return dst


def _settings(root: Path, policy: dict[str, Any] | None = None, **serving: Any) -> Settings:
    return Settings(
        catalog=CatalogSettings(num_items=300, num_topics=6, seed=0),
        candidates=CandidateSettings(dim=8, epochs=2, default_k=15, num_ads=3),
        artifacts=ArtifactSettings(root=root),
        policy=PolicySettings(reload_interval_s=3600.0, **(policy or {})),
        serving=ServingSettings(max_slate_size=10, **serving),
    )


@pytest.fixture
def build(root: Path) -> Iterator[Any]:
    built: list[Recommender] = []

    def make(policy: dict[str, Any] | None = None, **serving: Any) -> Recommender:
        rec = build_recommender(_settings(root, policy, **serving))
        built.append(rec)
        return rec

    yield make
    for rec in built:
        rec.close()


def _queries(n: int) -> list[RecommendQuery]:
    return [RecommendQuery(f"user-{i}", 4) for i in range(n)]


def _slates(out: list[Any]) -> list[tuple[list[int], list[float], str]]:
    assert all(isinstance(o, Recommendation) for o in out)
    return [
        (o.slate.item_ids.tolist(), o.slate.propensities.tolist(), o.slate.version) for o in out
    ]


def test_the_shadow_never_changes_what_is_served(build: Any) -> None:
    plain = build({"traffic": {"slateq": 1, "reinforce": 1}})
    shadowed = build({"traffic": {"slateq": 1, "reinforce": 1}, "shadow": "reinforce"})
    for _ in range(3):  # several batches: the generators stay in step batch after batch
        a = plain.recommend_many(_queries(40), log=False)
        b = shadowed.recommend_many(_queries(40), log=False)
        assert _slates(a) == _slates(b)
    policies = {v.split("@")[0] for _, _, v in _slates(a)}
    assert policies == {"slateq", "reinforce"}


def test_each_arm_serves_its_users_and_the_shadow_is_logged_beside(build: Any) -> None:
    rec = build({"traffic": {"slateq": 1, "reinforce": 1}, "shadow": "reinforce"})
    log = shared_event_log().source(["impressions"])
    before = len(log.poll(1_000_000, 0.05))
    out = rec.recommend_many(_queries(30))
    arms = rec.policies.assign([f"user-{i}" for i in range(30)])
    for o, arm in zip(out, arms, strict=True):
        assert isinstance(o, Recommendation)
        assert o.slate.policy == ("slateq", "reinforce")[arm]
    events = [r.event for r in log.poll(1_000_000, 0.05)[before:]]
    mine = [e for e in events if isinstance(e, ImpressionEvent) and e.user_id.startswith("user-")]
    assert len(mine) == 30
    for e in mine:
        assert e.shadow is not None
        assert e.shadow.policy == "reinforce"
        assert len(e.shadow.items) == 4
        assert all(0.0 < it.propensity <= 1.0 for it in e.shadow.items)
    text = TestClient(build_api(rec)).get("/metrics").text
    assert 'recsys_policy_slates_total{arm="slateq"' in text
    assert 'recsys_policy_slates_total{arm="reinforce"' in text
    assert 'recsys_shadow_slates_total{arm="reinforce"' in text
    assert 'recsys_policy_serving{arm="reinforce",role="shadow"' in text


def test_admin_routes_need_an_admin_key_compared_per_key(build: Any, root: Path) -> None:
    base = root / "policy-slateq"
    first = sorted(p.name for p in base.iterdir())[-1]
    republish(base / first, "zz-second")
    auth = AuthSettings(admin_keys=[ADMIN], client_keys=[CLIENT])  # type: ignore[list-item]
    rec = build(auth=auth)
    client = TestClient(build_api(rec, _settings(root, auth=auth).serving))
    assert client.get("/admin/policies").status_code == 401
    assert client.get("/admin/policies", headers={"X-API-Key": CLIENT}).status_code == 403
    wrong = client.post("/admin/policies/slateq/rollback", headers={"X-API-Key": ADMIN + "x"})
    assert wrong.status_code == 403
    assert wrong.json()["detail"][0]["field"] == "X-API-Key"
    hdr = {"X-API-Key": ADMIN}
    listing = client.get("/admin/policies", headers=hdr).json()
    assert listing["arms"][0]["serving_version"] == "zz-second"
    assert listing["arms"][0]["versions"] == [first, "zz-second"]
    back = client.post("/admin/policies/slateq/rollback", headers=hdr)
    assert back.status_code == 200, back.text
    assert back.json()["arms"][0]["pinned"] == first
    served = client.post("/recommend", json={"user_id": "u1", "slate_size": 3}).json()
    assert served["model_version"] == f"slateq@{first}"
    missing = client.post("/admin/policies/slateq/pin", json={"version": "nope"}, headers=hdr)
    assert missing.status_code == 404
    assert missing.json()["detail"][0]["field"] == "version"
    unknown = client.post("/admin/policies/myopic/rollback", headers=hdr)
    assert unknown.status_code == 404
    assert (
        client.delete("/admin/policies/slateq/pin", headers=hdr).json()["arms"][0][
            "serving_version"
        ]
        == "zz-second"
    )
    # /recommend stays open unless listed in auth.protect
    assert client.post("/recommend", json={"user_id": "u1", "slate_size": 3}).status_code == 200


def test_without_admin_keys_the_admin_api_is_off(rec_default: TestClient) -> None:
    resp = rec_default.get("/admin/policies", headers={"X-API-Key": ADMIN})
    assert resp.status_code == 403
    assert "off" in resp.json()["detail"][0]["message"]


@pytest.fixture
def rec_default(build: Any) -> TestClient:
    return TestClient(build_api(build()))


def test_protected_routes_need_a_key_before_the_body_is_read(build: Any, root: Path) -> None:
    keys_file = root / "client-keys"
    keys_file.write_text(f"# mounted Secret\n{CLIENT}\n\n")
    auth = AuthSettings(client_keys_file=keys_file, protect=["recommend", "feedback"])
    rec = build(auth=auth)
    client = TestClient(build_api(rec, _settings(root, auth=auth).serving))
    body = {"user_id": "u1", "slate_size": 3}
    assert client.post("/recommend", json=body).status_code == 401
    huge = client.post("/feedback", content=b"x" * 200_000)  # rejected unread: no 413
    assert huge.status_code == 401
    assert client.post("/recommend", json=body, headers={"X-API-Key": "x" * 20}).status_code == 403
    ok = client.post("/recommend", json=body, headers={"X-API-Key": CLIENT})
    assert ok.status_code == 200
    spec = client.get("/openapi.json").json()
    assert {"401", "403"} <= set(spec["paths"]["/recommend"]["post"]["responses"])
    assert client.get("/healthz").status_code == 200  # probes need no key


def test_keys_never_appear_in_printed_settings_but_reach_the_replicas(root: Path) -> None:
    settings = _settings(root, auth=AuthSettings(admin_keys=[ADMIN]))  # type: ignore[list-item]
    assert ADMIN not in settings.model_dump_json()
    assert ADMIN not in repr(settings)
    copy = Settings.model_validate_json(settings_json(settings))
    assert copy.serving.auth.admin_keys[0].get_secret_value() == ADMIN
    with pytest.raises(ValueError, match="at least 16"):
        AuthSettings(admin_keys=["short"])  # type: ignore[list-item]


def test_cors_is_off_by_default_and_on_for_listed_origins(build: Any, root: Path) -> None:
    rec = build()
    origin = {"Origin": "https://shop.example", "Access-Control-Request-Method": "POST"}
    off = TestClient(build_api(rec)).options("/recommend", headers=origin)
    assert "access-control-allow-origin" not in off.headers
    on = TestClient(
        build_api(rec, _settings(root, cors_origins=["https://shop.example"]).serving)
    ).options("/recommend", headers=origin)
    assert on.headers["access-control-allow-origin"] == "https://shop.example"


def test_readyz_waits_for_the_policy(root: Path, tmp_path: Path) -> None:
    empty = tmp_path / "no-policy"
    shutil.copytree(root, empty, ignore=shutil.ignore_patterns("policy-*"))
    rec = build_recommender(_settings(empty))
    try:
        client = TestClient(build_api(rec))
        resp = client.get("/readyz")
        assert resp.status_code == 503
        assert "slateq" in resp.json()["reason"]
        assert client.post("/recommend", json={"user_id": "u", "slate_size": 3}).status_code == 200
        shutil.copytree(root / "policy-slateq", empty / "policy-slateq")
        rec.policies.refresh()
        assert client.get("/readyz").status_code == 200
    finally:
        rec.close()


def test_the_guard_sees_paths_below_a_mount_prefix(build: Any, root: Path) -> None:
    """Behind a Serve route prefix the ASGI path still carries the prefix (``/ab/admin/...``
    with ``root_path`` ``/ab``): the admin API must stay guarded there."""
    from fastapi import FastAPI

    outer = FastAPI()
    outer.mount("/ab", build_api(build()))
    client = TestClient(outer)
    assert client.get("/ab/healthz").status_code == 200
    assert client.get("/ab/admin/policies").status_code == 403  # off: no admin key


def test_the_openapi_document_says_what_this_deployment_accepts(build: Any, root: Path) -> None:
    """Found by schemathesis (tests/integration/serving/test_schemathesis.py): the document
    declared no API key and looser bounds than the service takes."""
    auth = AuthSettings(admin_keys=[ADMIN], protect=["feedback"])  # type: ignore[list-item]
    rec = build(auth=auth)
    serving = _settings(root, auth=auth).serving
    spec = TestClient(build_api(rec, serving)).get("/openapi.json").json()
    scheme = spec["components"]["securitySchemes"]["ApiKey"]
    assert scheme == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    paths = spec["paths"]
    assert paths["/admin/policies/{arm}/pin"]["delete"]["security"] == [{"ApiKey": []}]
    assert paths["/feedback"]["post"]["security"] == [{"ApiKey": []}]
    assert "security" not in paths["/recommend"]["post"]
    models = spec["components"]["schemas"]
    props = models["RecommendRequest"]["properties"]
    assert props["slate_size"]["maximum"] == serving.max_slate_size
    assert props["num_candidates"]["anyOf"][0]["maximum"] == rec.num_items
    assert props["exclude"]["maxItems"] == serving.max_exclude
    assert props["exclude"]["items"]["maximum"] == rec.num_items - 1
    assert models["FeedbackRequest"]["properties"]["item_id"]["maximum"] == rec.num_items - 1


def test_a_405_allows_every_method_of_the_path_and_integers_may_be_written_5_0(
    build: Any, root: Path
) -> None:
    auth = AuthSettings(admin_keys=[ADMIN])  # type: ignore[list-item]
    client = TestClient(build_api(build(auth=auth), _settings(root, auth=auth).serving))
    put = client.put("/admin/policies/slateq/pin", headers={"X-API-Key": ADMIN})
    assert put.status_code == 405
    assert put.headers["allow"] == "DELETE, POST"  # two routes, one path
    assert put.json()["detail"][0]["field"] == "path"
    # JSON Schema's integer includes 5.0; 5.5, true and "5" stay errors naming the field.
    ok = client.post("/recommend", json={"user_id": "u", "slate_size": 3.0, "exclude": [1.0]})
    assert ok.status_code == 200, ok.text
    assert len(ok.json()["items"]) == 3
    for bad in (3.5, True, "3"):
        resp = client.post("/recommend", json={"user_id": "u", "slate_size": bad})
        assert resp.status_code == 422
        assert resp.json()["detail"][0]["field"] == "slate_size"
