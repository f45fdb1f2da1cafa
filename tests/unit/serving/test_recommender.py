"""Recommender and HTTP app without Ray: in-memory store and stream behind the same Protocols."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from recsys.candidates import FaissRetriever
from recsys.config import ServingSettings, StreamSettings
from recsys.policy import MyopicPolicy
from recsys.serving.api import build_api
from recsys.serving.recommender import Recommender
from recsys.store import InMemoryUserStateStore
from recsys.stream import InMemoryEventLog, OnlineUpdater
from recsys.types import (
    EventType,
    FeedbackEvent,
    ImpressionEvent,
    InvalidRequestError,
    UnknownUserError,
    UserState,
    UserStateDelta,
)

NUM_ITEMS, DIM = 60, 8


@pytest.fixture
def parts() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    items = rng.normal(size=(NUM_ITEMS, DIM)).astype(np.float32)
    store = InMemoryUserStateStore()
    store.put_many(
        [
            UserState(user_id=f"u{i}", embedding=rng.normal(size=DIM).astype(np.float32))
            for i in range(5)
        ]
    )
    log = InMemoryEventLog(StreamSettings())
    rec = Recommender(
        store=store,
        candidates=FaissRetriever(items),
        policy=MyopicPolicy(0.05),
        sink=log.sink(),
        settings=ServingSettings(max_slate_size=20, max_exclude=30),
        default_k=30,
        model_version="v-test",
        seed=1,
    )
    return {"rec": rec, "store": store, "log": log}


def test_recommend_returns_distinct_items_with_propensities_and_logs_impression(
    parts: dict[str, Any],
) -> None:
    rec: Recommender = parts["rec"]
    out = rec.recommend("u1", slate_size=6)
    slate = out.slate
    assert len(slate) == 6
    assert len(set(slate.item_ids.tolist())) == 6
    assert slate.positions.tolist() == list(range(6))
    assert np.all((slate.propensities > 0) & (slate.propensities <= 1))
    assert out.model_version == "v-test"
    records = parts["log"].source(["impressions"]).poll(10, 0.1)
    assert len(records) == 1
    event = records[0].event
    assert isinstance(event, ImpressionEvent)
    assert event.request_id == out.request_id
    assert [s.item_id for s in event.items] == slate.item_ids.tolist()


def test_recommend_excludes_clicked_and_requested_items(parts: dict[str, Any]) -> None:
    rec: Recommender = parts["rec"]
    store: InMemoryUserStateStore = parts["store"]
    top = rec.recommend("u2", slate_size=5, num_candidates=5).slate.item_ids.tolist()
    clicks = UserStateDelta(user_id="u2", clicked=tuple(top[:2]), clicks=2)
    store.apply([clicks], offsets={"feedback:0": 1}, consumer="t")
    for _ in range(5):
        again = rec.recommend("u2", slate_size=5, num_candidates=5, exclude=[top[2]])
        assert not set(again.slate.item_ids.tolist()) & set(top[:3])


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"slate_size": 0}, "slate_size"),
        ({"slate_size": 21}, "slate_size"),
        ({"slate_size": 5, "num_candidates": 4}, "num_candidates"),
        ({"slate_size": 5, "num_candidates": NUM_ITEMS + 1}, "num_candidates"),
        ({"slate_size": 5, "exclude": [NUM_ITEMS]}, "exclude"),
        ({"slate_size": 5, "exclude": [-1]}, "exclude"),
        ({"slate_size": 5, "exclude": list(range(31))}, "exclude"),
    ],
)
def test_recommend_rejects_impossible_requests_without_side_effects(
    parts: dict[str, Any], kwargs: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidRequestError) as err:
        parts["rec"].recommend("u0", **kwargs)
    assert err.value.field == field
    assert parts["log"].source(["impressions"]).poll(10, 0.01) == []


def test_slate_larger_than_what_remains_after_exclusions_is_rejected(
    parts: dict[str, Any],
) -> None:
    store: InMemoryUserStateStore = parts["store"]
    seen = UserStateDelta(user_id="u4", clicked=tuple(range(45)), clicks=45)
    store.apply([seen], offsets={}, consumer="t")
    with pytest.raises(InvalidRequestError) as err:
        parts["rec"].recommend("u4", slate_size=16)
    assert err.value.field == "slate_size"
    assert "15 items remain" in err.value.message
    assert len(parts["rec"].recommend("u4", slate_size=15).slate) == 15


def test_unknown_user_raises(parts: dict[str, Any]) -> None:
    with pytest.raises(UnknownUserError):
        parts["rec"].recommend("nobody", slate_size=3)
    with pytest.raises(UnknownUserError):
        parts["rec"].feedback("r", "nobody", 1, EventType.CLICK)


def test_feedback_publishes_with_defaults_and_validates_item(parts: dict[str, Any]) -> None:
    rec: Recommender = parts["rec"]
    event = rec.feedback("req-1", "u0", 7, EventType.CLICK)
    assert event.value == 1.0
    assert event.ts > 0
    with pytest.raises(InvalidRequestError) as err:
        rec.feedback("req-1", "u0", NUM_ITEMS, EventType.CLICK)
    assert err.value.field == "item_id"
    records = parts["log"].source(["feedback"]).poll(10, 0.1)
    assert [r.event for r in records] == [event]
    assert isinstance(records[0].event, FeedbackEvent)


def test_in_process_loop_click_is_excluded_next_time(parts: dict[str, Any]) -> None:
    """Same loop as the e2e test, on the in-memory backends behind the same Protocols."""
    rec: Recommender = parts["rec"]
    store: InMemoryUserStateStore = parts["store"]
    log: InMemoryEventLog = parts["log"]
    first = rec.recommend("u3", slate_size=4, num_candidates=4)
    clicked = int(first.slate.item_ids[0])
    rec.feedback(first.request_id, "u3", clicked, EventType.CLICK)
    updater = OnlineUpdater(log.source(["impressions", "feedback"]), store, "unit")
    assert updater.run_once(max_records=100, timeout_s=0.1) == 2
    state = store.get("u3")
    assert state is not None
    assert state.clicked.tolist() == [clicked]
    assert state.impressions == 4
    nxt = rec.recommend("u3", slate_size=4, num_candidates=4)
    assert clicked not in nxt.slate.item_ids.tolist()


@pytest.fixture
def client(parts: dict[str, Any]) -> Iterator[TestClient]:
    app = build_api(parts["rec"], max_body_bytes=2048)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def test_api_round_trip(client: TestClient) -> None:
    resp = client.post("/recommend", json={"user_id": "u0", "slate_size": 3})
    assert resp.status_code == 200
    body = resp.json()
    assert len(body["items"]) == 3
    fb = client.post(
        "/feedback",
        json={"request_id": body["request_id"], "user_id": "u0", "item_id": 1, "event": "like"},
    )
    assert fb.status_code == 202
    assert fb.json()["accepted"] is True


@pytest.mark.parametrize(
    ("payload", "status", "field"),
    [
        ({"user_id": "u0", "slate_size": True}, 422, "slate_size"),
        ({"user_id": "u0", "slate_size": 0}, 422, "slate_size"),
        ({"user_id": "u0", "slate_size": 10_000}, 422, "slate_size"),
        ({"user_id": "u0", "slate_size": 21}, 422, "slate_size"),
        ({"user_id": "u 0", "slate_size": 2}, 422, "user_id"),
        ({"user_id": "x" * 300, "slate_size": 2}, 422, "user_id"),
        ({"user_id": "ghost", "slate_size": 2}, 404, "user_id"),
        ({"user_id": "u0", "exclude": [1, "b"]}, 422, "exclude.1"),
    ],
)
def test_api_errors_name_the_field(
    client: TestClient, payload: dict[str, Any], status: int, field: str
) -> None:
    resp = client.post("/recommend", json=payload)
    assert resp.status_code == status, resp.text
    assert field in [d["field"] for d in resp.json()["detail"]]


def test_api_body_limit_and_bad_content_length(client: TestClient) -> None:
    big = client.post(
        "/feedback", content=b"x" * 4096, headers={"content-type": "application/json"}
    )
    assert big.status_code == 413
    assert big.json()["error"] == "body_too_large"


def test_api_internal_error_is_json_500_without_details(parts: dict[str, Any]) -> None:
    class Broken:
        def get(self, user_id: str) -> None:
            raise RuntimeError("secret internals")

        def ping(self) -> bool:
            return False

    rec: Recommender = parts["rec"]
    rec._store = Broken()  # type: ignore[assignment]
    with TestClient(build_api(rec), raise_server_exceptions=False) as c:
        resp = c.post("/recommend", json={"user_id": "u0", "slate_size": 2})
        assert resp.status_code == 500
        assert "secret" not in resp.text
        assert c.get("/readyz").status_code == 503
