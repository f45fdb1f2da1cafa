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


# JSON tokens a producer (or an attacker) might put in any field: every type, the edges of
# each range, non-finite numbers, strings that are and are not base64.
_TOKENS = [
    "null", "true", "false", "0", "1", "-1", "1.0", "0.5", "-0.0", "1e-320", "2147483648",
    "9223372036854775807", "9223372036854775808", "18446744073709551616", "1e300", "1e999",
    "-1e999", "NaN", "Infinity", "4294967295.5", '""', '"x"', '"click"', '"AAAA"', '"AAA="',
    '"AAAAAAAA"', '"/////w=="', '"//////8="', '"AACAfw=="', '"%%%"', "[]", "{}", "[1]",
    '[{"item_id":1}]',
]  # fmt: skip
_IMPRESSION_KEYS = [
    "v", "type", "request_id", "user_id", "ts", "model_version", "policy", "session_id",
    "items", "shadow", "candidates", "features",
]  # fmt: skip
_FEEDBACK_KEYS = [
    "v", "type", "request_id", "user_id", "item_id", "event", "value", "ts", "server_ts"
]  # fmt: skip
_ITEM_KEYS = ["item_id", "position", "score", "propensity"]


def _full_impression() -> ImpressionEvent:
    from dataclasses import replace

    from recsys.types import ShadowSlate

    base = impression("r1", "u1", [4, 7, 9], ts=1712345678.5)
    shadow = ShadowSlate("other", "v0", impression("r1", "u1", [9, 4]).items)
    return replace(base, shadow=shadow, candidates=(4, 7, 9, 12), features=(0.25, -1.5, 3.0))


@settings(max_examples=400, deadline=None)
@given(
    kind=st.sampled_from(["impression", "feedback"]),
    where=st.sampled_from(["top", "item", "shadow-item"]),
    key_index=st.integers(min_value=0, max_value=20),
    token=st.sampled_from([*_TOKENS, "<delete>"]),
)
def test_the_fast_decoder_agrees_with_the_strict_one(
    kind: str, where: str, key_index: int, token: str
) -> None:
    """msgspec's layer never accepts what the strict decoder refuses, and builds the very
    same event (types included: ``repr`` tells ``1`` from ``1.0``) for what both accept."""
    from recsys.stream.events import _decode_strict, decode_events

    if kind == "feedback":
        obj = _payload(FeedbackEvent("r1", "u1", 7, EventType.DWELL, 3.5, 17.0, server_ts=18.0))
        where = "top"
        keys = _FEEDBACK_KEYS
    else:
        obj = _payload(_full_impression())
        keys = _IMPRESSION_KEYS if where == "top" else _ITEM_KEYS
    target = {"top": obj, "item": obj.get("items", [{}])[0]}.get(where)
    if target is None:
        target = obj["shadow"]["items"][1]
    key = keys[key_index % len(keys)]
    if token == "<delete>":
        target.pop(key, None)
    else:
        target[key] = "@@TOKEN@@"
    data = json.dumps(obj).replace('"@@TOKEN@@"', token).encode()
    (fast,) = decode_events([data])
    try:
        strict: object = _decode_strict(data)
    except EventDecodeError as exc:
        strict = exc
    if isinstance(strict, EventDecodeError):
        assert isinstance(fast, EventDecodeError)
        assert str(fast) == str(strict)
    else:
        assert repr(fast) == repr(strict)


def test_a_batch_keeps_each_payloads_place_and_isolates_poison() -> None:
    from recsys.stream.events import decode_events

    good = [_full_impression(), feedback("r1", "u1", 7), impression("r2", "u2", [1])]
    bad = _payload(impression("r3", "u3", [1, 2]))
    bad["items"][1]["propensity"] = 2.0
    negative = _payload(_full_impression())
    negative["candidates"] = "/////w=="  # one int32: -1
    payloads = [
        encode_event(good[0]), b"{", encode_event(good[1]), _bytes(bad), None,
        _bytes(negative), encode_event(good[2]),
    ]  # fmt: skip
    out = decode_events(payloads)
    assert [out[0], out[2], out[6]] == good
    assert [type(out[i]) for i in (1, 3, 4, 5)] == [EventDecodeError] * 4
    assert "items[1].propensity" in str(out[3])
    assert "non-negative item ids" in str(out[5])


def test_decode_error_is_a_value_error() -> None:
    assert issubclass(EventDecodeError, ValueError)


def test_topic_for_routes_by_event_type() -> None:
    cfg = StreamSettings(impressions_topic="imp", feedback_topic="fb")
    assert topic_for(impression("r", "u", [1]), cfg) == "imp"
    assert topic_for(feedback("r", "u", 1), cfg) == "fb"
    with pytest.raises(TypeError):
        topic_for("nope", cfg)  # type: ignore[arg-type]


def test_decoded_lists_stay_packed_and_re_encode_to_the_same_bytes() -> None:
    """Consumers never build a Python number per candidate id or feature: the decoded
    impression holds the wire's bytes, and encoding it again writes them back unchanged."""
    from recsys.types import PackedArray

    event = _full_impression()
    data = encode_event(event)
    decoded = decode_event(data)
    assert isinstance(decoded, ImpressionEvent)
    assert isinstance(decoded.candidates, PackedArray)
    assert decoded.candidates.dtype == "<i4"
    assert isinstance(decoded.features, PackedArray)
    assert decoded.features.dtype == "<f4"
    assert decoded.candidates == event.candidates
    assert decoded.features == event.features
    assert encode_event(decoded) == data


def test_packed_lists_are_checked_like_any_other_on_encode() -> None:
    from dataclasses import replace

    from recsys.types import PackedArray

    event = _full_impression()
    with pytest.raises(ValueError, match="item ids in"):
        encode_event(replace(event, candidates=PackedArray.of([3, -1], "<i4")))
    with pytest.raises(ValueError, match="must be finite"):
        encode_event(replace(event, features=PackedArray.of([0.5, float("nan")], "<f4")))
    wide = replace(event, candidates=PackedArray.of([3, 2**40], "<i8"))
    with pytest.raises(ValueError, match="item ids in"):
        encode_event(wide)
