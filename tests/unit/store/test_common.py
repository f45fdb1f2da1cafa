"""Id validation and delta merging shared by every backend."""

from __future__ import annotations

import pytest

from recsys.store._common import aggregate_deltas, check_id, check_offsets
from recsys.types import UserStateDelta


@pytest.mark.parametrize("value", ["u", "x" * 256, "ユーザー", "a:b/c@d e", "zero\u200bwidth"])
def test_check_id_accepts_printable_ids_up_to_256_chars(value: str) -> None:
    assert check_id("user_id", value) == value


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "non-empty"),
        ("x" * 257, "257 characters"),
        ("a\tb", "control character '\\t' at index 1"),
        ("\x9b", "control character"),
        ("\ud800", "control character"),
    ],
)
def test_check_id_names_the_problem(value: str, message: str) -> None:
    with pytest.raises(ValueError, match="user_id") as info:
        check_id("user_id", value)
    assert message in str(info.value)


def test_check_id_rejects_non_strings() -> None:
    with pytest.raises(ValueError, match="must be a str"):
        check_id("user_id", 42)  # type: ignore[arg-type]


def test_check_offsets_rejects_negative_and_bool_offsets() -> None:
    assert check_offsets({"p:0": 0, "p:1": 5}) == {"p:0": 0, "p:1": 5}
    with pytest.raises(ValueError, match=">= 0"):
        check_offsets({"p:0": -1})
    with pytest.raises(TypeError, match="bool"):
        check_offsets({"p:0": True})
    with pytest.raises(ValueError, match="partition"):
        check_offsets({"": 1})


def test_aggregate_deltas_merges_per_user_in_first_seen_order() -> None:
    merged, skipped = aggregate_deltas(
        [
            UserStateDelta("b", clicked=(1,), impressions=2, clicks=1, ts=5.0),
            UserStateDelta("a", impressions=1, ts=9.0),
            UserStateDelta("b", clicked=(2, 3), impressions=1, clicks=2, ts=4.0),
            UserStateDelta("bad\x00", impressions=1),
        ]
    )

    assert skipped == 1
    assert list(merged) == ["b", "a"]
    b = merged["b"]
    assert (b.clicked, b.impressions, b.clicks, b.ts) == ([1, 2, 3], 3, 3, 5.0)
    assert b.recent_clicked(2) == [2, 3]


def test_aggregate_deltas_rejects_malformed_content() -> None:
    with pytest.raises(ValueError, match="finite"):
        aggregate_deltas([UserStateDelta("a", ts=float("inf"))])
    with pytest.raises(ValueError, match="int64"):
        aggregate_deltas([UserStateDelta("a", clicked=(2**63,))])
