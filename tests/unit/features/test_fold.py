"""The event fold: session and decay rules, joins, and the same bytes on every path."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.features import EventFold, FeatureSpec, StateCodec, request_key, session_key
from recsys.features.spec import half_life_factor
from recsys.types import EventType, FeedbackEvent, ImpressionEvent, SlateItem
from tests.unit.features.events import NUM_ITEMS, Step, make_fold, step_events, steps_strategy


def _impression(req: str, items: list[int], session: str = "s", ts: float = 0.0) -> ImpressionEvent:
    slate = tuple(SlateItem(i, p, 0.0, 1.0) for p, i in enumerate(items))
    return ImpressionEvent(req, "u", ts, "m", "p", slate, session_id=session)


def _fb(req: str, item: int, kind: EventType, value: float = 1.0) -> FeedbackEvent:
    return FeedbackEvent(req, "u", item, kind, value, 0.0)


def test_impression_adds_topic_mass_ads_and_counters(fold: EventFold) -> None:
    s = fold.codec.empty(1)
    fold.fold_events(s, [0], [_impression("r1", [3, 5, 7])])
    mass = fold.item_topics([3, 5, 7]).sum(axis=0)
    np.testing.assert_allclose(s["impressions"][0].astype(np.float32), mass, rtol=1e-3)
    ads = sum(bool(fold._ads[i]) for i in (3, 5, 7))
    assert float(s["ad_exposure"][0]) == pytest.approx(ads)
    assert (s["steps"][0], s["session_step"][0], s["sessions"][0]) == (1, 1, 1)
    assert s["request"][0] == request_key("r1")


def test_click_adds_its_topics_and_remembers_the_item_newest_first(fold: EventFold) -> None:
    s = fold.codec.empty(1)
    events = [_impression("r1", [3, 5]), _fb("r1", 5, EventType.CLICK)]
    events += [_impression("r2", [8, 9]), _fb("r2", 9, EventType.CLICK)]
    fold.fold_events(s, [0] * len(events), events)
    assert s["recent"][0].tolist() == [9, 5, -1]
    assert s["clicks"][0] == 2
    assert float(s["clicks_slow"][0].astype(np.float32).sum()) == pytest.approx(
        1.0 * half_life_factor(fold.spec.slow_half_life) + 1.0, rel=2e-3
    )


def test_feedback_for_another_request_is_an_orphan(fold: EventFold) -> None:
    s = fold.codec.empty(1)
    counts = fold.fold_events(
        s,
        [0, 0, 0],
        [_impression("r1", [1, 2]), _fb("nope", 1, EventType.CLICK), _fb("r1", 2, EventType.LIKE)],
    )
    assert (counts.impressions, counts.feedback, counts.orphans) == (1, 1, 1)
    assert s["clicks"][0] == 0
    assert s["likes"][0] == 1


def test_late_feedback_for_the_previous_slate_still_joins(fold: EventFold) -> None:
    s = fold.codec.empty(1)
    events = [_impression("r1", [1]), _impression("r2", [2]), _fb("r1", 1, EventType.CLICK)]
    events += [_impression("r3", [3]), _fb("r1", 1, EventType.LIKE)]
    counts = fold.fold_events(s, [0] * len(events), events)
    assert (counts.feedback, counts.orphans) == (1, 1)
    assert s["clicks"][0] == 1
    assert s["likes"][0] == 0


def test_a_new_session_decays_by_the_gap_and_resets_the_session_step(fold: EventFold) -> None:
    spec = fold.spec
    s = fold.codec.empty(2)
    first = [_impression("a", [1]), _fb("a", 1, EventType.CLICK)]
    fold.fold_events(s, [0, 0, 1, 1], [*first, *first])
    before = s["clicks_fast"].astype(np.float32).copy()
    fold.fold_events(s, [0, 1], [_impression("b", [2], "s"), _impression("b", [2], "other")])
    same, new = s[0], s[1]
    assert (same["session_step"], same["sessions"]) == (2, 1)
    assert (new["session_step"], new["sessions"]) == (1, 2)
    step = half_life_factor(spec.fast_half_life)
    gap = half_life_factor(spec.fast_half_life, 1 + spec.session_gap_steps)
    np.testing.assert_allclose(same["clicks_fast"].astype(np.float32), before[0] * step, rtol=2e-3)
    np.testing.assert_allclose(
        new["clicks_fast"].astype(np.float32), before[1] * gap, rtol=2e-3, atol=1e-4
    )


def test_without_a_session_id_inactivity_starts_a_session(fold: EventFold) -> None:
    gap = fold.spec.session_gap_s
    s = fold.codec.empty(1)
    fold.fold_events(s, [0], [_impression("a", [1], "", ts=1000.0)])
    fold.fold_events(s, [0], [_impression("b", [1], "", ts=1000.0 + gap / 2)])
    assert s["sessions"][0] == 1
    fold.fold_events(s, [0], [_impression("c", [1], "", ts=1000.0 + gap * 3)])
    assert (s["sessions"][0], s["session_step"][0]) == (2, 1)


def test_dwell_is_clamped_and_unknown_items_have_no_topics(fold: EventFold) -> None:
    s = fold.codec.empty(1)
    events = [
        _impression("a", [1, NUM_ITEMS + 50]),
        _fb("a", 1, EventType.DWELL, -5.0),
        _fb("a", 1, EventType.DWELL, 1e12),
        _fb("a", NUM_ITEMS + 50, EventType.CLICK),
    ]
    fold.fold_events(s, [0] * 4, events)
    assert float(s["dwell_s"][0]) == pytest.approx(86_400.0)
    assert s["recent"][0, 0] == -1
    assert s["clicks"][0] == 1
    assert float(s["clicks_slow"][0].astype(np.float32).sum()) == 0.0


def test_counters_saturate_instead_of_wrapping(fold: EventFold) -> None:
    s = fold.codec.empty(1)
    s["likes"] = 65535
    fold.fold_events(s, [0, 0], [_impression("a", [1]), _fb("a", 1, EventType.LIKE)])
    assert s["likes"][0] == 65535


def test_codec_round_trips_and_refuses_other_layouts(fold: EventFold) -> None:
    codec = fold.codec
    s = codec.empty(2)
    fold.fold_events(s, [0, 1], [_impression("a", [1, 2]), _impression("b", [3])])
    blobs = codec.encode(s)
    assert all(len(b) == codec.nbytes for b in blobs)
    back, known = codec.decode([blobs[0], None, blobs[1]])
    assert known.tolist() == [True, False, True]
    assert back[[0, 2]].tobytes() == s.tobytes()
    assert back[1].tobytes() == codec.empty(1)[0].tobytes()
    with pytest.raises(ValueError, match="expects"):
        codec.decode([blobs[0][:-1]])
    with pytest.raises(ValueError, match="layout"):
        codec.decode([b"\x09" + blobs[0][1:]])


def test_state_size_is_125_plus_8_bytes_per_topic() -> None:
    for t in (1, 16, 100):
        assert StateCodec(FeatureSpec(num_topics=t)).nbytes == 125 + 8 * t


def _fold_steps_like_the_simulator(fold: EventFold, lives: list[list[Step]]) -> np.ndarray:
    """Every user's steps through ``fold_step`` (vectorised over users, one call per time)."""
    states = fold.codec.empty(len(lives))
    for t in range(max(len(life) for life in lives)):
        rows = np.array([u for u, life in enumerate(lives) if t < len(life)])
        sub = states[rows]
        steps = [lives[u][t] for u in rows]
        width = max(len(x.slate) for x in steps)
        slates = np.full((rows.size, width), -1, dtype=np.int64)
        for b, x in enumerate(steps):
            slates[b, : len(x.slate)] = x.slate
        clicked = np.array(
            [
                x.slate[x.click] if x.click is not None and x.click < len(x.slate) else -1
                for x in steps
            ]
        )
        fold.fold_step(
            sub,
            ts=np.full(rows.size, float(t)),
            sessions=[session_key(f"s{x.session}") for x in steps],
            requests=[request_key(f"u{u}-r{t}") for u in rows],
            slates=slates,
            clicked_item=clicked,
            dwell_s=[x.dwell_s for x in steps],
            like=[x.like for x in steps],
            conversion=[x.conversion for x in steps],
            skip=[x.skip for x in steps],
        )
        states[rows] = sub
    return states


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(steps_strategy, min_size=1, max_size=8), min_size=1, max_size=4))
def test_every_path_folds_the_same_bytes(lives: list[list[Step]]) -> None:
    """Vectorised simulator steps, one interleaved event list, and user by user, event by
    event: identical states and features."""
    fold = make_fold()
    simulated = _fold_steps_like_the_simulator(fold, lives)

    events: list[ImpressionEvent | FeedbackEvent] = []
    rows: list[int] = []
    per_user = [
        [e for t, step in enumerate(life) for e in step_events(f"u{u}", t, step, float(t))]
        for u, life in enumerate(lives)
    ]
    # Interleave users round-robin, as a stream would deliver them.
    for j in range(max(len(p) for p in per_user)):
        for u, evs in enumerate(per_user):
            if j < len(evs):
                events.append(evs[j])
                rows.append(u)
    streamed = fold.codec.empty(len(lives))
    fold.fold_events(streamed, rows, events)

    one_by_one = fold.codec.empty(len(lives))
    for row, event in zip(rows, events, strict=True):
        single = one_by_one[row : row + 1]
        fold.fold_events(single, [0], [event])

    assert streamed.tobytes() == simulated.tobytes()
    assert one_by_one.tobytes() == simulated.tobytes()


def test_forged_feedback_is_an_orphan_and_changes_nothing(fold: EventFold) -> None:
    s = fold.codec.empty(2)
    fold.fold_events(s, [0, 1], [_impression("a", [1, 2, 3]), _impression("b", [4, 5, 6])])
    before = s.copy()
    forged = [
        _fb("zzz", 1, EventType.CLICK),  # a request id that was never issued
        _fb("a", 7, EventType.CLICK),  # an item that was not in the slate
        _fb("b", 4, EventType.CLICK),  # another user's request id (row 0 is user "a")
        _fb("a", 9, EventType.LIKE),
    ]
    counts = fold.fold_events(s, [0] * len(forged), forged)
    assert (counts.feedback, counts.orphans) == (0, 4)
    assert s.tobytes() == before.tobytes()
    counts = fold.fold_events(
        s, [0, 0], [_fb("a", 3, EventType.CLICK), _fb("a", 1, EventType.LIKE)]
    )
    assert (counts.feedback, counts.orphans) == (2, 0)
    assert (s["clicks"][0], s["likes"][0], s["recent"][0, 0]) == (1, 1, 3)


def test_late_feedback_must_name_an_item_of_the_previous_slate(fold: EventFold) -> None:
    s = fold.codec.empty(1)
    fold.fold_events(s, [0, 0], [_impression("a", [1, 2]), _impression("b", [3, 4])])
    counts = fold.fold_events(
        s, [0, 0], [_fb("a", 3, EventType.CLICK), _fb("a", 2, EventType.CLICK)]
    )
    assert (counts.feedback, counts.orphans) == (1, 1)
    assert s["recent"][0, 0] == 2


def test_slate_bloom_has_no_false_negatives_and_few_false_positives() -> None:
    from recsys.features.fold import bloom_contains, slate_bloom

    rng = np.random.default_rng(3)
    slates = rng.integers(0, 1_000_000, size=(2000, 10))
    blooms = slate_bloom(slates)
    for slot in range(10):
        assert bloom_contains(blooms, slates[:, slot]).all()
    others = rng.integers(1_000_000, 2_000_000, size=(2000, 50))
    rate = np.mean([bloom_contains(blooms, others[:, j]).mean() for j in range(50)])
    assert rate < 0.005, rate  # theory for 10 items, 256 bits, 3 hashes: 0.14%
