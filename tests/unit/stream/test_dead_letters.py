"""Records no consumer can use are counted, kept on the dead-letter topic, and never stop the
updater; absurd values are refused at decode time."""

from __future__ import annotations

import json

import pytest
from prometheus_client import CollectorRegistry

from recsys.config import StreamSettings
from recsys.store import InMemoryUserStateStore
from recsys.stream import EventDecodeError, InMemoryEventLog, OnlineUpdater, decode_event
from recsys.stream.events import decode_dead_letter, encode_event
from recsys.stream.metrics import StatsExporter
from tests.unit.stream.fakes import (
    feedback,
    impression,
    reference_states,
    small_fold,
    stored_states,
)


def _feedback_json(**overrides: object) -> bytes:
    obj = json.loads(encode_event(feedback("r1", "u", 1, ts=10.0)))
    obj.update(overrides)
    return json.dumps(obj).encode()


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "not a JSON event"),
        (_feedback_json(v=99), "unsupported event schema version"),
        (_feedback_json(user_id=None), "user_id"),
        (_feedback_json(ts=1e11), "'ts' must be seconds since the epoch"),
        (_feedback_json(ts=-5.0), "'ts' must be seconds since the epoch"),
        (_feedback_json(server_ts=1e12), "'server_ts' must be seconds since the epoch"),
    ],
)
def test_malformed_and_absurd_records_do_not_decode(payload: bytes, reason: str) -> None:
    with pytest.raises(EventDecodeError, match=reason):
        decode_event(payload)


def test_a_propensity_outside_zero_one_does_not_decode() -> None:
    obj = json.loads(encode_event(impression("r1", "u", [1, 2])))
    obj["items"][1]["propensity"] = 1.5
    with pytest.raises(EventDecodeError, match=r"items\[1\].propensity"):
        decode_event(json.dumps(obj).encode())
    obj["items"][1]["propensity"] = 0.0
    with pytest.raises(EventDecodeError, match="probability"):
        decode_event(json.dumps(obj).encode())


def test_candidates_and_features_round_trip_and_bad_ones_are_refused() -> None:
    from dataclasses import replace

    event = replace(impression("r1", "u", [4, 5]), candidates=(4, 5, 9), features=(0.5, -2.0))
    assert decode_event(encode_event(event)) == event
    obj = json.loads(encode_event(event))
    obj["features"] = "%%%"
    with pytest.raises(EventDecodeError, match="'features' is not base64"):
        decode_event(json.dumps(obj).encode())
    obj["features"] = "AAA="  # two bytes: not a whole float32
    with pytest.raises(EventDecodeError, match="whole 4-byte values"):
        decode_event(json.dumps(obj).encode())


def test_updater_dead_letters_poison_and_folds_everything_else() -> None:
    settings = StreamSettings()
    log = InMemoryEventLog(settings)
    fold = small_fold()
    good = [impression("r1", "u1", [1, 2], ts=10.0), feedback("r1", "u1", 2, ts=11.0)]
    log.publish(good[0])
    poison = [b"\xff\xfe garbage", _feedback_json(v=7), _feedback_json(ts=1e11)]
    for raw in poison:
        log.append(settings.feedback_topic, raw)
    log.publish(good[1])

    source = log.source(dead_letters=log.dead_letter_handler())
    store = InMemoryUserStateStore()
    updater = OnlineUpdater(source, store, "dlq-test", fold)
    for _ in range(5):
        updater.run_once(100, 0.05)

    assert stored_states(fold, store, ["u1"]) == reference_states(fold, ["u1"], good)
    assert source.decode_errors == 3
    dlq = log.source([settings.dead_letter_topic])
    raw_letters = dlq._log._read({settings.dead_letter_topic: 0}, [settings.dead_letter_topic], 10)
    letters = [decode_dead_letter(raw) for _, _, raw in raw_letters]
    assert [letter.payload for letter in letters] == poison
    assert [letter.offset for letter in letters] == [0, 1, 2]
    assert all(letter.partition == f"{settings.feedback_topic}:0" for letter in letters)
    assert "not a JSON event" in letters[0].reason
    assert "version" in letters[1].reason
    # Offsets past the poison are committed with the good records: a restart skips it.
    assert store.offsets("dlq-test")[f"{settings.feedback_topic}:0"] == 4


def test_stats_exporter_copies_counters_and_lag() -> None:
    settings = StreamSettings()
    log = InMemoryEventLog(settings)
    for i in range(3):
        log.publish(impression(f"r{i}", "u", [1], ts=float(i)))
    source = log.source()
    updater = OnlineUpdater(source, InMemoryUserStateStore(), "m", small_fold())
    registry = CollectorRegistry()
    exporter = StatsExporter("updater", lambda: updater.stats, registry, source.lag)
    exporter.sample()
    lag = registry.get_sample_value
    assert lag("recsys_updater_lag_records", {"partition": f"{settings.impressions_topic}:0"}) == 3
    for _ in range(3):
        updater.run_once(10, 0.05)
    exporter.sample()
    assert lag("recsys_updater_impressions_total") == 3
    assert lag("recsys_updater_lag_records", {"partition": f"{settings.impressions_topic}:0"}) == 0
