"""User and item featurisers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.features import (
    EventFold,
    ItemFeaturizer,
    UserFeaturizer,
    event_cross_blocks,
    session_key,
)
from recsys.types import EventType, FeedbackEvent, ImpressionEvent, SlateItem
from tests.unit.features.events import Step, make_fold, step_events, steps_strategy


def _states(fold: EventFold, lives: list[list[Step]]) -> np.ndarray:
    states = fold.codec.empty(len(lives))
    for u, life in enumerate(lives):
        events = [e for t, s in enumerate(life) for e in step_events(f"u{u}", t, s, float(t))]
        fold.fold_events(states[u : u + 1], [0] * len(events), events)
    return states


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(steps_strategy, min_size=0, max_size=6), min_size=2, max_size=5))
def test_features_of_a_batch_equal_features_row_by_row(lives: list[list[Step]]) -> None:
    fold = make_fold()
    users = UserFeaturizer(fold.spec)
    states = _states(fold, lives)
    batch = users.features(states)
    rows = np.concatenate([users.features(states[i : i + 1]) for i in range(len(lives))])
    assert batch.tobytes() == rows.tobytes()
    assert batch.shape == (len(lives), len(fold.spec.user_feature_names))
    assert np.isfinite(batch).all()


def test_a_cold_user_and_what_a_click_changes(fold: EventFold, featurizer: UserFeaturizer) -> None:
    names = featurizer.names
    s = fold.codec.empty(1)
    cold = featurizer.features(s)[0]
    assert cold[names.index("cold")] == 1.0
    assert not cold[: 4 * fold.spec.num_topics].any()
    item = 4
    fold.fold_events(
        s,
        [0, 0],
        [
            ImpressionEvent("r", "u", 0.0, "m", "p", (SlateItem(item, 0, 0.0, 1.0),), "s"),
            FeedbackEvent("r", "u", item, EventType.CLICK, 1.0, 0.0),
        ],
    )
    warm = featurizer.features(s)[0]
    t = fold.spec.num_topics
    top = int(np.argmax(fold.item_topics([item])[0]))
    assert warm[names.index("cold")] == 0.0
    assert int(np.argmax(warm[:t])) == top  # interest follows the click
    assert warm[names.index("ctr")] == pytest.approx(0.5)


def test_features_at_a_new_session_leave_the_stored_state_alone(
    fold: EventFold, featurizer: UserFeaturizer
) -> None:
    s = fold.codec.empty(1)
    imp = ImpressionEvent("r", "u", 0.0, "m", "p", (SlateItem(1, 0, 0.0, 1.0),), "s1")
    fold.fold_events(s, [0], [imp])
    before = s.tobytes()
    same = featurizer.features_at(fold, s, [0.0], [session_key("s1")])[0]
    new = featurizer.features_at(fold, s, [0.0], [session_key("s2")])[0]
    assert s.tobytes() == before
    step = featurizer.names.index("session_step")
    assert same[step] > 0.0
    assert new[step] == 0.0
    assert new[featurizer.names.index("sessions")] > same[featurizer.names.index("sessions")]


def test_item_features_gather_the_table_and_cross_with_user_blocks(fold: EventFold) -> None:
    spec = fold.spec
    n = fold.num_items
    table = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
    topics = fold.item_topics(np.arange(n))
    blocks, names = event_cross_blocks(spec)
    items = ItemFeaturizer(table, topics, ("a", "b"), blocks, names)
    users = np.random.default_rng(0).random((3, spec.user_dim)).astype(np.float32)
    cands = np.array([[0, 5, 9], [1, 2, 3], [7, 7, 7]])
    out = items.features(users, cands)
    assert out.shape == (3, 3, 2 + len(blocks))
    np.testing.assert_array_equal(out[..., :2], table[cands])
    t = spec.num_topics
    for k, start in enumerate(blocks):
        want = np.einsum("bct,bt->bc", topics[cands], users[:, start : start + t])
        np.testing.assert_allclose(out[..., 2 + k], want, rtol=1e-5, atol=1e-6)
    assert items.names[-len(blocks) :] == tuple(f"x_{b}" for b in names)
