"""The wire codec: lossless round trips, and a clear EventDecodeError for everything else."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.config import StreamSettings
from recsys.stream import (
    SCHEMA_VERSION,
    EventDecodeError,
    decode_event,
    encode_event,
    topic_for,
)
from recsys.types import EventType, FeedbackEvent, ImpressionEvent, SlateItem
from tests.unit.stream.fakes import feedback, impression


def _payload(event: ImpressionEvent | FeedbackEvent) -> dict[str, Any]:
    obj = json.loads(encode_event(event))
    assert isinstance(obj, dict)
    return obj


def _bytes(obj: object) -> bytes:
    return json.dumps(obj).encode()


def test_impression_round_trip() -> None:
    event = impression("req-1", "user-é", [5, 3, 9], ts=1712345678.25)
    data = encode_event(event)
    assert decode_event(data) == event
    obj = json.loads(data)
    assert obj["v"] == SCHEMA_VERSION == 1
    assert obj["type"] == "impression"


def test_feedback_round_trip_for_every_event_type() -> None:
    for kind in EventType:
        event = feedback("req-1", "u1", 42, event=kind, value=3.5, ts=9.0)
        data = encode_event(event)
        assert decode_event(data) == event
        assert json.loads(data)["type"] == "feedback"


def test_empty_slate_round_trips() -> None:
    event = impression("r", "u", [])
    assert decode_event(encode_event(event)) == event


_text = st.text(min_size=1, max_size=20)
_finite = st.floats(allow_nan=False, allow_infinity=False)
_ids = st.integers(min_value=0, max_value=2**63 - 1)
_times = st.floats(min_value=0.0, max_value=2.0**32, exclude_max=True)
_probabilities = st.floats(min_value=0.0, max_value=1.0, exclude_min=True)


@settings(max_examples=60, deadline=None)
@given(
    request_id=_text,
    user_id=_text,
    ts=_times,
    items=st.lists(st.tuples(_ids, _finite, _probabilities), max_size=8),
)
def test_impression_round_trip_property(
    request_id: str, user_id: str, ts: float, items: list[tuple[int, float, float]]
) -> None:
    event = ImpressionEvent(
        request_id=request_id,
        user_id=user_id,
        ts=ts,
        model_version="m",
        policy="p",
        items=tuple(SlateItem(i, pos, s, p) for pos, (i, s, p) in enumerate(items)),
    )
    assert decode_event(encode_event(event)) == event


@settings(max_examples=60, deadline=None)
@given(user_id=_text, item_id=_ids, kind=st.sampled_from(EventType), value=_finite, ts=_times)
def test_feedback_round_trip_property(
    user_id: str, item_id: int, kind: EventType, value: float, ts: float
) -> None:
    event = FeedbackEvent("r", user_id, item_id, kind, value, ts)
    assert decode_event(encode_event(event)) == event


@pytest.mark.parametrize("version", [2, 0, None, "1", True, 1.5])
def test_unknown_version_is_rejected(version: object) -> None:
    obj = _payload(feedback("r", "u", 1))
    obj["v"] = version
    with pytest.raises(EventDecodeError, match="version"):
        decode_event(_bytes(obj))


def test_missing_version_is_rejected() -> None:
    obj = _payload(feedback("r", "u", 1))
    del obj["v"]
    with pytest.raises(EventDecodeError, match="version"):
        decode_event(_bytes(obj))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"\xff\xfe\x00",
        b"null",
        b"[1, 2]",
        b'"a string"',
        b"{",
        b"[" * 100_000,
    ],
)
def test_garbage_is_rejected(data: bytes) -> None:
    with pytest.raises(EventDecodeError):
        decode_event(data)


def test_non_bytes_payload_is_rejected() -> None:
    # Kafka tombstones have a None value.
    with pytest.raises(EventDecodeError, match="bytes"):
        decode_event(None)  # type: ignore[arg-type]


def test_unknown_type_is_rejected() -> None:
    obj = _payload(feedback("r", "u", 1))
    obj["type"] = "purchase"
    with pytest.raises(EventDecodeError, match="type"):
        decode_event(_bytes(obj))


def test_unknown_feedback_event_is_rejected() -> None:
    obj = _payload(feedback("r", "u", 1))
    obj["event"] = "hover"
    with pytest.raises(EventDecodeError, match="hover"):
        decode_event(_bytes(obj))


@pytest.mark.parametrize(
    "field", ["request_id", "user_id", "item_id", "event", "value", "ts", "type"]
)
def test_missing_feedback_field_is_rejected(field: str) -> None:
    obj = _payload(feedback("r", "u", 1))
    del obj[field]
    with pytest.raises(EventDecodeError, match=field):
        decode_event(_bytes(obj))


@pytest.mark.parametrize(
    "field", ["request_id", "user_id", "ts", "model_version", "policy", "items"]
)
def test_missing_impression_field_is_rejected(field: str) -> None:
    obj = _payload(impression("r", "u", [1, 2]))
    del obj[field]
    with pytest.raises(EventDecodeError, match=field):
        decode_event(_bytes(obj))


@pytest.mark.parametrize("field", ["item_id", "position", "score", "propensity"])
def test_missing_slate_item_field_is_rejected(field: str) -> None:
    obj = _payload(impression("r", "u", [1, 2]))
    del obj["items"][1][field]
    with pytest.raises(EventDecodeError, match=rf"items\[1\]\.{field}"):
        decode_event(_bytes(obj))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("item_id", "7"),
        ("item_id", 1.0),
        ("item_id", True),
        ("item_id", -1),
        ("item_id", 2**63),
        ("user_id", 12),
        ("request_id", None),
        ("value", "1.0"),
        ("value", False),
        ("ts", 10**400),
    ],
)
def test_mistyped_feedback_field_is_rejected(field: str, value: object) -> None:
    obj = _payload(feedback("r", "u", 1))
    obj[field] = value
    with pytest.raises(EventDecodeError, match=field):
        decode_event(_bytes(obj))


def test_non_finite_numbers_are_rejected_both_ways() -> None:
    with pytest.raises(EventDecodeError, match="NaN"):
        decode_event(b'{"v":1,"type":"feedback","request_id":"r","user_id":"u",'
                     b'"item_id":1,"event":"click","value":NaN,"ts":1}')  # fmt: skip
    with pytest.raises(ValueError, match="FeedbackEvent"):
        encode_event(feedback("r", "u", 1, value=float("inf")))


def test_items_must_be_a_list_of_objects() -> None:
    obj = _payload(impression("r", "u", [1]))
    obj["items"] = [3]
    with pytest.raises(EventDecodeError, match=r"items\[0\]"):
        decode_event(_bytes(obj))


def test_decode_error_is_a_value_error() -> None:
    assert issubclass(EventDecodeError, ValueError)


def test_topic_for_routes_by_event_type() -> None:
    cfg = StreamSettings(impressions_topic="imp", feedback_topic="fb")
    assert topic_for(impression("r", "u", [1]), cfg) == "imp"
    assert topic_for(feedback("r", "u", 1), cfg) == "fb"
    with pytest.raises(TypeError):
        topic_for("nope", cfg)  # type: ignore[arg-type]
