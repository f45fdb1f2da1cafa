"""Id validation and delta merging shared by every backend."""

from __future__ import annotations

import pytest

from recsys.store._common import (
    check_expected,
    check_id,
    check_offsets,
    check_states,
    stale_partitions,
)


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


def test_expected_offsets_allow_none_and_stale_partitions_are_named() -> None:
    expected = check_expected({"a:0": None, "b:0": 3})
    assert expected == {"a:0": None, "b:0": 3}
    assert stale_partitions({"b:0": 3}, expected) == []
    assert stale_partitions({"a:0": 1, "b:0": 3}, expected) == ["a:0"]
    assert stale_partitions({}, expected) == ["b:0"]
    with pytest.raises(ValueError, match="offset"):
        check_expected({"a:0": -2})


def test_check_states_refuses_empty_oversized_and_non_bytes() -> None:
    assert check_states({"u": b"x"}) == {"u": b"x"}
    with pytest.raises(ValueError, match="bytes"):
        check_states({"u": b""})
    with pytest.raises(ValueError, match="bytes"):
        check_states({"u": b"x" * (64 * 1024 + 1)})
    with pytest.raises(TypeError, match="bytes"):
        check_states({"u": "x"})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="user_id"):
        check_states({"": b"x"})
