"""Value types: the packed number sequences impressions carry."""

from __future__ import annotations

import operator
import pickle

import numpy as np
import pytest

from recsys.types import ImpressionEvent, PackedArray, SlateItem, as_array


def test_a_packed_array_is_the_sequence_of_its_values() -> None:
    packed = PackedArray.of([4, 1, 9], "<i4")
    assert len(packed) == 3
    assert packed[0] == 4
    assert packed[-1] == 9
    assert isinstance(packed[1], int)
    assert packed[1:] == (1, 9)
    assert list(packed) == [4, 1, 9]
    assert 9 in packed
    assert 5 not in packed
    assert packed.array.dtype == np.dtype("<i4")
    assert not packed.array.flags.writeable
    assert PackedArray(b"", "<f4") == ()
    assert not PackedArray(b"", "<f4")


def test_it_equals_and_hashes_like_the_tuple_of_its_values_whatever_the_dtype() -> None:
    ints = PackedArray.of([4, 1, 9], "<i4")
    assert ints == (4, 1, 9)
    assert operator.eq((4, 1, 9), ints)  # the tuple on the left: Python reflects to ours
    assert ints == [4, 1, 9]
    assert ints != (4, 1)
    assert ints != (4, 1, 8)
    assert hash(ints) == hash((4, 1, 9))
    assert ints == PackedArray.of([4, 1, 9], "<i8")  # other bytes, same values
    floats = PackedArray.of([0.5, -2.0], "<f4")
    assert floats == (0.5, -2.0)
    assert floats.__eq__("0.5") is NotImplemented


def test_events_holding_packed_or_tuple_lists_are_the_same_event() -> None:
    items = (SlateItem(3, 0, 1.0, 0.5),)
    plain = ImpressionEvent("r", "u", 1.0, "v", "p", items, candidates=(3, 8), features=(0.25,))
    packed = ImpressionEvent(
        "r", "u", 1.0, "v", "p", items,
        candidates=PackedArray.of([3, 8], "<i4"), features=PackedArray.of([0.25], "<f4"),
    )  # fmt: skip
    assert packed == plain
    assert operator.eq(plain, packed)
    assert hash(packed) == hash(plain)


def test_it_pickles_and_refuses_what_is_not_whole_values_of_a_known_dtype() -> None:
    packed = PackedArray.of([1.5, 2.5], "<f8")
    again = pickle.loads(pickle.dumps(packed))
    assert again == packed
    assert again.dtype == "<f8"
    assert repr(packed) == "PackedArray([1.5, 2.5], '<f8')"
    with pytest.raises(ValueError, match="whole <i4 values"):
        PackedArray(b"\x00\x01\x02", "<i4")
    with pytest.raises(ValueError, match="dtype must be one of"):
        PackedArray(b"\x00" * 8, ">i8")


def test_as_array_uses_packed_bytes_of_the_asked_dtype_without_a_copy() -> None:
    packed = PackedArray.of([7, 8], "<i8")
    assert np.shares_memory(as_array(packed, "<i8"), packed.array)
    np.testing.assert_array_equal(as_array(packed, "<i4"), [7, 8])
    np.testing.assert_array_equal(as_array((7, 8), "<f4"), np.array([7, 8], "<f4"))
