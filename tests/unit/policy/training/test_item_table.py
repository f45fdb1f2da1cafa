"""A static item table is checked once and gathered per step
(``recsys.policy.training.item_table``)."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.policy.training.item_table import check_item_table, gather_item_features


def test_a_float32_table_is_a_read_only_view_and_others_are_converted_once() -> None:
    table = np.arange(12, dtype=np.float32).reshape(4, 3)
    checked = check_item_table(table)
    assert np.shares_memory(checked, table)  # no copy of the catalog
    assert not checked.flags.writeable
    assert table.flags.writeable  # the caller's array keeps its flags
    ints = check_item_table(np.arange(6).reshape(3, 2))
    assert ints.dtype == np.float32
    np.testing.assert_array_equal(ints, [[0, 1], [2, 3], [4, 5]])


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (np.zeros(5, np.float32), r"must be \[num_items, item_dim\].*got shape \[5\]"),
        (np.zeros((2, 3, 4), np.float32), r"got shape \[2, 3, 4\]"),
        (np.zeros((0, 3), np.float32), r"both >= 1, got shape \[0, 3\]"),
        (np.zeros((3, 0), np.float32), r"both >= 1, got shape \[3, 0\]"),
        (np.array([["a", "b"]]), "must hold real numbers, got dtype <U1"),
        (np.zeros((2, 2), np.complex64), "must hold real numbers, got dtype complex64"),
        (np.array([[0.0, 1.0], [np.inf, np.nan]]), "2 non-finite values .the first in row 1"),
    ],
)
def test_a_bad_table_is_a_clear_error(table: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_item_table(table, "my_env item_table")


def test_gathering_equals_indexing_the_table() -> None:
    table = check_item_table(np.random.default_rng(0).random((50, 4)))
    ids = np.random.default_rng(1).integers(0, 50, (3, 7))
    got = gather_item_features(table, ids)
    assert got.shape == (3, 7, 4)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, table[ids])
    got[0, 0] = -1.0  # a fresh array: the table is untouched
    assert (table >= 0).all()


def test_padding_ids_are_not_looked_up_and_get_zero_features() -> None:
    table = check_item_table(np.ones((5, 2)))
    ids = np.array([[0, 4, -1], [9, 2, 3]])
    valid = np.array([[True, True, False], [False, True, True]])
    got = gather_item_features(table, ids, valid)
    np.testing.assert_array_equal(got[valid], np.ones((4, 2)))
    np.testing.assert_array_equal(got[~valid], np.zeros((2, 2)))


@pytest.mark.parametrize("bad", [-1, 5])
def test_an_id_out_of_range_is_a_clear_error(bad: int) -> None:
    table = check_item_table(np.ones((5, 2)))
    ids = np.array([[0, bad, 1]])
    with pytest.raises(ValueError, match=rf"obs 'ids' holds id {bad} .* has 5 items, ids 0 to 4"):
        gather_item_features(table, ids, where="obs 'ids'")
    with pytest.raises(ValueError, match="integer catalog ids, got dtype float64"):
        gather_item_features(table, ids.astype(np.float64))
