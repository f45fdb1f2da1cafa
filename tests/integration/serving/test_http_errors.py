"""Bad input over real Ray Serve HTTP: always a 4xx JSON body naming the problem, never a 500."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import ServingStack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def http(serving_stack: ServingStack) -> Any:
    with httpx.Client(base_url=serving_stack.url, timeout=30.0) as client:
        yield client


def _user(stack: ServingStack) -> str:
    return stack.models.world.user_ids[0]


def _assert_error(resp: httpx.Response, status: int, field: str) -> None:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert isinstance(body["error"], str)
    fields = [d["field"] for d in body["detail"]]
    assert any(field in f for f in fields), (field, body)


@pytest.mark.parametrize(
    ("payload", "status", "field"),
    [
        ({}, 422, "user_id"),
        ({"slate_size": 5}, 422, "user_id"),
        ({"user_id": 12, "slate_size": 5}, 422, "user_id"),
        ({"user_id": "USER", "slate_size": "five"}, 422, "slate_size"),
        ({"user_id": "USER", "slate_size": 0}, 422, "slate_size"),
        ({"user_id": "USER", "slate_size": 10_000}, 422, "slate_size"),
        ({"user_id": "USER", "slate_size": 51}, 422, "slate_size"),
        ({"user_id": "USER", "slate_size": 5.5}, 422, "slate_size"),
        ({"user_id": "USER", "slate_size": 5, "num_candidates": 2}, 422, "num_candidates"),
        ({"user_id": "USER", "slate_size": 5, "num_candidates": 10**6}, 422, "num_candidates"),
        ({"user_id": "USER", "slate_size": 5, "exclude": [10**9]}, 422, "exclude"),
        ({"user_id": "USER", "slate_size": 5, "exclude": ["a"]}, 422, "exclude"),
        ({"user_id": "USER", "slate_size": 5, "colour": "red"}, 422, "colour"),
        ({"user_id": "", "slate_size": 5}, 422, "user_id"),
        ({"user_id": "USER", "slate_size": 5, "session_id": "a b"}, 422, "session_id"),
        ({"user_id": "USER", "slate_size": 5, "session_id": 7}, 422, "session_id"),
    ],
)
def test_recommend_rejects_bad_input(
    serving_stack: ServingStack,
    http: httpx.Client,
    payload: dict[str, Any],
    status: int,
    field: str,
) -> None:
    if payload.get("user_id") == "USER":
        payload = {**payload, "user_id": _user(serving_stack)}
    _assert_error(http.post("/recommend", json=payload), status, field)


@pytest.mark.parametrize(
    ("payload", "status", "field"),
    [
        ({}, 422, "request_id"),
        ({"request_id": "r1", "user_id": "USER", "item_id": 1}, 422, "event"),
        ({"request_id": "r1", "user_id": "USER", "item_id": 1, "event": "poke"}, 422, "event"),
        ({"request_id": "r1", "user_id": "USER", "item_id": "x", "event": "click"}, 422, "item_id"),
        ({"request_id": "r1", "user_id": "USER", "item_id": -1, "event": "click"}, 422, "item_id"),
        (
            {"request_id": "r1", "user_id": "USER", "item_id": 10**9, "event": "click"},
            422,
            "item_id",
        ),
        (
            {"request_id": "r1", "user_id": "USER", "item_id": 1, "event": "dwell", "value": "x"},
            422,
            "value",
        ),
        # Strict types: no bool or numeric string is coerced into a number.
        (
            {"request_id": "r1", "user_id": "USER", "item_id": 1, "event": "like", "value": True},
            422,
            "value",
        ),
        (
            {"request_id": "r1", "user_id": "USER", "item_id": 1, "event": "dwell", "value": "5"},
            422,
            "value",
        ),
        (
            {"request_id": "r1", "user_id": "USER", "item_id": 1, "event": "click", "ts": False},
            422,
            "ts",
        ),
        (
            {"request_id": "r1", "user_id": "USER", "item_id": 1, "event": "click", "ts": "123.5"},
            422,
            "ts",
        ),
    ],
)
def test_feedback_rejects_bad_input(
    serving_stack: ServingStack,
    http: httpx.Client,
    payload: dict[str, Any],
    status: int,
    field: str,
) -> None:
    if payload.get("user_id") == "USER":
        payload = {**payload, "user_id": _user(serving_stack)}
    _assert_error(http.post("/feedback", json=payload), status, field)


def test_a_user_without_state_is_a_cold_start_not_an_error(http: httpx.Client) -> None:
    rec = http.post("/recommend", json={"user_id": "never-seen-before", "slate_size": 3})
    assert rec.status_code == 200, rec.text
    fb = http.post(
        "/feedback",
        json={
            "request_id": rec.json()["request_id"],
            "user_id": "never-seen-before",
            "item_id": rec.json()["items"][0]["item_id"],
            "event": "click",
        },
    )
    assert fb.status_code == 202, fb.text


def test_malformed_json_is_422(http: httpx.Client) -> None:
    resp = http.post(
        "/recommend",
        content=b'{"user_id": "u0", "slate',
        headers={"content-type": "application/json"},
    )
    _assert_error(resp, 422, "body")


def test_huge_body_is_413_and_service_keeps_working(
    serving_stack: ServingStack, http: httpx.Client
) -> None:
    huge = {"user_id": _user(serving_stack), "slate_size": 5, "exclude": list(range(200_000))}
    _assert_error(http.post("/recommend", json=huge), 413, "body")

    def chunks() -> Any:
        for _ in range(64):
            yield b" " * 4096

    streamed = http.post(
        "/feedback", content=chunks(), headers={"content-type": "application/json"}
    )
    _assert_error(streamed, 413, "body")
    ok = http.post("/recommend", json={"user_id": _user(serving_stack), "slate_size": 3})
    assert ok.status_code == 200, ok.text


def test_health_ready_metrics_and_openapi(http: httpx.Client) -> None:
    assert http.get("/healthz").json() == {"status": "ok"}
    ready = http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    http.post("/recommend", json={"user_id": "u", "slate_size": 1, "num_candidates": 10**5})
    metrics = http.get("/metrics").text
    assert "recsys_requests_total" in metrics
    assert 'outcome="error"' in metrics
    spec = http.get("/openapi.json").json()
    assert {"/recommend", "/feedback"} <= set(spec["paths"])


def test_unknown_route_is_json_404(http: httpx.Client) -> None:
    _assert_error(http.get("/nope"), 404, "path")


def test_ads_filter_exclude_is_applied_and_keeps_slate_size(
    serving_stack: ServingStack, http: httpx.Client
) -> None:
    is_ad = serving_stack.models.world.item_is_ad
    resp = http.post(
        "/recommend",
        json={"user_id": _user(serving_stack), "slate_size": 5, "filters": {"ads": "exclude"}},
    )
    assert resp.status_code == 200, resp.text
    items = [it["item_id"] for it in resp.json()["items"]]
    assert len(items) == 5
    assert not any(bool(is_ad[i]) for i in items)


def test_only_ads_beyond_the_ad_load_is_a_clear_422(
    serving_stack: ServingStack, http: httpx.Client
) -> None:
    """The policy places at most max_ads ads per slate: five ads is not a slate it serves."""
    resp = http.post(
        "/recommend",
        json={"user_id": _user(serving_stack), "slate_size": 5, "filters": {"ads": "only"}},
    )
    _assert_error(resp, 422, "filters")
    assert "ads" in resp.json()["detail"][0]["message"]


@pytest.mark.parametrize(
    "filters",
    [{"ads": "maybe"}, {"categories": []}, {"categories": ["x"]}, {"colour": 1}],
)
def test_bad_filters_are_422(
    serving_stack: ServingStack, http: httpx.Client, filters: dict[str, Any]
) -> None:
    resp = http.post(
        "/recommend",
        json={"user_id": _user(serving_stack), "slate_size": 5, "filters": filters},
    )
    _assert_error(resp, 422, "filters")


def test_unknown_category_is_422(serving_stack: ServingStack, http: httpx.Client) -> None:
    resp = http.post(
        "/recommend",
        json={"user_id": _user(serving_stack), "slate_size": 5, "filters": {"categories": [999]}},
    )
    _assert_error(resp, 422, "filters")
