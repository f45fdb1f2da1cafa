"""SlateQ's replay: sized in transitions (user-steps), uniform over every row it holds."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.policy.batch import SlateAction, SlateObs, SlateResponse, Transition
from recsys.policy.training.replay import TransitionReplay


def _step(ids: list[int], valid: list[bool] | None = None) -> Transition:
    """A step whose rows are told apart by their user feature (the row's id)."""
    b = len(ids)
    obs = SlateObs(
        np.asarray(ids, np.float32)[:, None],
        np.zeros((b, 2, 1), np.float32),
        np.tile(np.arange(2), (b, 1)),
    )
    slates = np.zeros((b, 1), np.int64)
    action = SlateAction(slates, np.ones((b, 1), np.float32), np.zeros(b, np.float32))
    response = SlateResponse.from_signals(np.zeros((b, 1, 6), np.float32))
    done = np.zeros(b, np.bool_)
    return Transition(
        obs,
        action,
        response,
        np.zeros((b, 1), np.float32),
        obs,
        done,
        valid=None if valid is None else np.asarray(valid),
    )


def _ids(tr: Transition) -> list[int]:
    return sorted(int(x) for x in tr.obs.user_features[:, 0])


def test_capacity_counts_rows_not_steps() -> None:
    replay = TransitionReplay(5)
    replay.add(_step([0, 1, 2]))
    replay.add(_step([3, 4, 5]))  # 6 rows: the oldest one goes
    assert len(replay) == 5
    held = set(_ids(replay.sample(2000, np.random.default_rng(0))))
    assert held == {1, 2, 3, 4, 5}
    replay.add(_step([6, 7, 8, 9, 10, 11, 12]))  # a step larger than the capacity
    assert len(replay) == 5
    assert set(_ids(replay.sample(2000, np.random.default_rng(1)))) == {8, 9, 10, 11, 12}


def test_reset_rows_are_not_stored() -> None:
    replay = TransitionReplay(10)
    replay.add(_step([0, 1, 2], valid=[True, False, True]))
    replay.add(_step([3], valid=[False]))
    assert len(replay) == 2
    assert set(_ids(replay.sample(200, np.random.default_rng(0)))) == {0, 2}


def test_rows_are_drawn_uniformly_whatever_the_step_sizes() -> None:
    """One big step and many one-row steps: every row, not every step, is equally likely
    (drawing steps first would give the big step's rows 1/10 of the chances of the others)."""
    replay = TransitionReplay(1000)
    replay.add(_step(list(range(100))))
    for i in range(100, 110):
        replay.add(_step([i]))
    batch = replay.sample(110_000, np.random.default_rng(0))
    counts = np.bincount(batch.obs.user_features[:, 0].astype(np.int64), minlength=110)
    assert batch.batch_size == 110_000
    assert counts.min() > 850, counts.min()
    assert counts.max() < 1150, counts.max()


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="capacity"):
        TransitionReplay(0)
    with pytest.raises(ValueError, match="empty"):
        TransitionReplay(3).sample(1, np.random.default_rng(0))
