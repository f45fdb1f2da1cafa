"""The adaptation run's bookkeeping: windows of feedback events before and after the shift."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recsys.adaptation import AdaptationConfig, AdaptationRun, Round, long_items
from recsys.config import CatalogSettings
from recsys.data import make_world


def _round(index: int, shifted: bool, events_before: int, clicks: int) -> Round:
    return Round(
        index=index,
        shifted=shifted,
        slates=10,
        clicks=clicks,
        feedback_events=100,
        events_before=events_before,
        long_share=0.5,
        versions=["slateq@v1"],
    )


def test_windows_skip_the_warmup_and_count_from_the_shift() -> None:
    cfg = AdaptationConfig(users=(0, 1), warmup_rounds=1, after_events=300, window_events=150)
    run = AdaptationRun(learning=False, config=cfg)
    run.rounds = [
        _round(0, False, 0, 0),  # warm-up: not measured
        _round(1, False, 100, 8),
        _round(2, False, 200, 8),
        _round(3, True, 300, 2),  # after-window 0: events 0..149 after the shift
        _round(4, True, 400, 4),
        _round(5, True, 500, 7),  # window 1: 150..299 (200 from the shift)
    ]
    s = run.summary()
    assert s["before"]["rounds"] == 2
    assert s["before"]["click_rate"] == pytest.approx(0.8)
    assert [w["rounds"] for w in s["after"]] == [2, 1]
    assert [w["click_rate"] for w in s["after"]] == pytest.approx([0.3, 0.7])
    assert s["final_over_before"] == pytest.approx(0.7 / 0.8)
    assert s["recovered"] is True  # 0.875 >= 0.8
    run.rounds[-1].clicks = 6
    assert run.summary()["recovered"] is False  # 0.75 < 0.8


def test_an_empty_window_is_nan_and_not_recovered() -> None:
    cfg = AdaptationConfig(users=(0,), warmup_rounds=0, after_events=100, window_events=100)
    run = AdaptationRun(learning=True, config=cfg)
    run.rounds = [_round(0, False, 0, 5)]
    s = run.summary()
    assert math.isnan(s["after"][0]["click_rate"])
    assert s["recovered"] is False


def test_long_items_are_those_above_the_length_quantile() -> None:
    world = make_world(CatalogSettings(num_items=101, num_users=3, num_topics=4, seed=2))
    long = long_items(world, 0.5)
    median = np.median(world.item_length_s)
    assert long.sum() == 50
    assert (world.item_length_s[long] > median).all()
    assert (world.item_length_s[~long] <= median).all()


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("users", (), "segment"),
        ("after_events", 0, "after_events"),
        ("long_quantile", 1.0, "long_quantile"),
    ],
)
def test_bad_configs_are_refused(field: str, value: object, match: str) -> None:
    kwargs: dict[str, object] = {"users": (0,), field: value}
    with pytest.raises(ValueError, match=match):
        AdaptationConfig(**kwargs)  # type: ignore[arg-type]
