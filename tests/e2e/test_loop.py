"""The whole loop over real components, with the trained slate policy served.

HTTP /recommend → a slate chosen by the published SlateQ policy, with propensities that the
impression in the broker carries unchanged; HTTP /feedback (every signal of a click) → events
in the broker → online updater → the user's event-derived state in the real Redis → the next
/recommend for that user never shows the clicked item, and the policy sees the new state.
"""

from __future__ import annotations

import time

import httpx
import pytest

from recsys.serving.wiring import build_fold
from recsys.store import build_user_state_store
from recsys.stream import KafkaEventSource, OnlineUpdater
from recsys.types import FeedbackEvent, ImpressionEvent
from tests.conftest import ServingStack

pytestmark = pytest.mark.e2e


def _find(source: KafkaEventSource, kind: type, request_id: str, timeout_s: float = 10.0) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for rec in source.poll(500, 0.5):
            if isinstance(rec.event, kind) and rec.event.request_id == request_id:
                return rec.event
    raise AssertionError(f"no {kind.__name__} for request {request_id} in the broker")


def test_feedback_flows_through_kafka_and_redis_into_the_next_slate(
    serving_stack: ServingStack,
) -> None:
    settings = serving_stack.settings
    user_id = "e2e-user-1"  # never seen before: a cold start, served all the same
    slateq = serving_stack.models.policies["slateq"]
    with httpx.Client(base_url=serving_stack.url, timeout=30.0) as http:
        first = http.post(
            "/recommend", json={"user_id": user_id, "slate_size": 5, "session_id": "s1"}
        )
        assert first.status_code == 200, first.text
        body = first.json()
        items = body["items"]
        assert len(items) == 5
        assert [it["position"] for it in items] == [0, 1, 2, 3, 4]
        assert len({it["item_id"] for it in items}) == 5
        assert all(0.0 < it["propensity"] <= 1.0 for it in items)
        assert body["policy"] == "slateq"
        # the published version, or a newer one another test of the session published
        assert body["model_version"].startswith("slateq@")
        assert body["model_version"] >= f"slateq@{slateq.version}"

        # The impression read back from the broker carries exactly the served propensities.
        impressions = KafkaEventSource(
            settings.stream.bootstrap, [settings.stream.impressions_topic]
        )
        impression = _find(impressions, ImpressionEvent, body["request_id"])
        impressions.close()
        assert isinstance(impression, ImpressionEvent)
        assert impression.session_id == "s1"
        assert impression.model_version == body["model_version"]
        assert [s.item_id for s in impression.items] == [it["item_id"] for it in items]
        assert [s.propensity for s in impression.items] == pytest.approx(
            [it["propensity"] for it in items], rel=1e-12
        )

        clicked_item = items[0]["item_id"]
        for event, value in (("click", None), ("dwell", 42.0), ("like", None)):
            payload = {
                "request_id": body["request_id"],
                "user_id": user_id,
                "item_id": clicked_item,
                "event": event,
            }
            if value is not None:
                payload["value"] = value
            fb = http.post("/feedback", json=payload)
            assert fb.status_code == 202, fb.text
            assert fb.json() == {"accepted": True, "request_id": body["request_id"]}

        feedback = KafkaEventSource(settings.stream.bootstrap, [settings.stream.feedback_topic])
        event = _find(feedback, FeedbackEvent, body["request_id"])
        feedback.close()
        assert isinstance(event, FeedbackEvent)
        assert event.item_id == clicked_item
        assert event.server_ts is not None

        # The online updater (Kafka consumer) folds the events into the real Redis.
        fold = build_fold(settings)
        store = build_user_state_store(settings.store)
        source = KafkaEventSource(
            settings.stream.bootstrap,
            [settings.stream.impressions_topic, settings.stream.feedback_topic],
        )
        updater = OnlineUpdater(source, store, "e2e-updater", fold)
        deadline = time.monotonic() + 20.0
        while time.monotonic() < deadline:
            updater.run_once(max_records=500, timeout_s=0.5)
            states, known = fold.codec.decode([store.get(user_id)])
            if known[0] and states["likes"][0] == 1:
                break
        source.close()
        store.close()
        assert known[0]
        assert states["steps"][0] >= 1
        assert states["clicks"][0] == 1
        assert states["recent"][0, 0] == clicked_item
        assert float(states["dwell_s"][0]) == pytest.approx(42.0)

        # The same user again never gets the clicked item.
        for _ in range(10):
            again = http.post(
                "/recommend", json={"user_id": user_id, "slate_size": 5, "session_id": "s1"}
            )
            assert again.status_code == 200, again.text
            assert clicked_item not in [it["item_id"] for it in again.json()["items"]]
