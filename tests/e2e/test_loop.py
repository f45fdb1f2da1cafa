"""The whole loop over real components.

HTTP /recommend → slate with propensities (and an impression in the broker); HTTP /feedback →
event in the broker → online updater → user state changed in the real Redis → the next
/recommend for that user excludes the clicked item.
"""

from __future__ import annotations

import time

import httpx
import pytest

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
    user_id = serving_stack.models.world.user_ids[3]
    with httpx.Client(base_url=serving_stack.url, timeout=30.0) as http:
        first = http.post("/recommend", json={"user_id": user_id, "slate_size": 5})
        assert first.status_code == 200, first.text
        body = first.json()
        items = body["items"]
        assert len(items) == 5
        assert [it["position"] for it in items] == [0, 1, 2, 3, 4]
        assert len({it["item_id"] for it in items}) == 5
        assert all(0.0 < it["propensity"] <= 1.0 for it in items)
        assert body["policy"] == "myopic"
        assert body["model_version"] == serving_stack.models.artifact.version

        impressions = KafkaEventSource(
            settings.stream.bootstrap, [settings.stream.impressions_topic]
        )
        impression = _find(impressions, ImpressionEvent, body["request_id"])
        impressions.close()
        assert isinstance(impression, ImpressionEvent)
        assert [s.item_id for s in impression.items] == [it["item_id"] for it in items]
        assert [s.propensity for s in impression.items] == pytest.approx(
            [it["propensity"] for it in items]
        )

        clicked_item = items[0]["item_id"]
        fb = http.post(
            "/feedback",
            json={
                "request_id": body["request_id"],
                "user_id": user_id,
                "item_id": clicked_item,
                "event": "click",
            },
        )
        assert fb.status_code == 202, fb.text
        assert fb.json() == {"accepted": True, "request_id": body["request_id"]}

        feedback = KafkaEventSource(settings.stream.bootstrap, [settings.stream.feedback_topic])
        event = _find(feedback, FeedbackEvent, body["request_id"])
        feedback.close()
        assert isinstance(event, FeedbackEvent)
        assert event.item_id == clicked_item

        # The online updater (Kafka consumer) writes the click into the real Redis.
        store = build_user_state_store(settings.store)
        before = store.get(user_id)
        assert before is not None
        assert clicked_item not in before.clicked.tolist()
        source = KafkaEventSource(
            settings.stream.bootstrap,
            [settings.stream.impressions_topic, settings.stream.feedback_topic],
        )
        updater = OnlineUpdater(source, store, "e2e-updater")
        deadline = time.monotonic() + 20.0
        after = before
        while time.monotonic() < deadline:
            updater.run_once(max_records=500, timeout_s=0.5)
            after = store.get(user_id)
            assert after is not None
            if clicked_item in after.clicked.tolist():
                break
        source.close()
        assert clicked_item in after.clicked.tolist()
        assert after.clicks == before.clicks + 1
        assert after.impressions >= before.impressions + 5
        store.close()

        # The same request again never shows the clicked item.
        for _ in range(10):
            again = http.post("/recommend", json={"user_id": user_id, "slate_size": 5})
            assert again.status_code == 200, again.text
            assert clicked_item not in [it["item_id"] for it in again.json()["items"]]
