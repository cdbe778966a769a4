"""The merge-key uniqueness rules (load/keys.py) against an oracle: Arrow's own GROUP BY.

The loader counts distinct keys and finds duplicates by sorting (NumPy for one integer, date or
timestamp key; Arrow's sort otherwise), because a hash aggregation cost 4 s and +660 MiB for 10M
keys. Sorting must give exactly what a GROUP BY gives: for every key shape, with NULL keys, empty
tables and runs of equal keys.
"""

from __future__ import annotations

import datetime as dt
import functools

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from databricks_scripts.failures import DataMismatch
from databricks_scripts.load.keys import check_keys, count_keys, distinct_keys

UTC = dt.UTC
KEY_SETS = [("i",), ("s",), ("d",), ("t",), ("i", "s"), ("d", "i", "t")]

rows = st.lists(
    st.tuples(
        st.none() | st.integers(-3, 3),
        st.none() | st.sampled_from(["a", "b", "ä"]),
        st.none() | st.dates(dt.date(2024, 1, 1), dt.date(2024, 1, 3)),
        st.none() | st.integers(0, 2).map(lambda h: dt.datetime(2024, 1, 1, h, tzinfo=UTC)),
    ),
    max_size=40,
)


def _table(values: list[tuple]) -> pa.Table:
    columns = list(zip(*values, strict=True)) if values else [[], [], [], []]
    types = [pa.int64(), pa.string(), pa.date32(), pa.timestamp("us", "UTC")]
    return pa.table(
        [pa.array(list(c), t) for c, t in zip(columns, types, strict=True)],
        names=["i", "s", "d", "t"],
    )


@settings(max_examples=300, deadline=None)
@given(rows)
def test_distinct_keys_is_a_group_by(values):
    table = _table(values)
    for keys in KEY_SETS:
        assert distinct_keys(table, keys) == table.group_by(list(keys)).aggregate([]).num_rows


@settings(max_examples=300, deadline=None)
@given(rows)
def test_check_keys_refuses_exactly_the_duplicates_a_group_by_finds(values):
    for keys in KEY_SETS:
        table = _table(values)
        table = table.filter(functools.reduce(pc.and_, [pc.is_valid(table[k]) for k in keys]))
        counted = table.group_by(list(keys)).aggregate([([], "count_all")])
        repeated = counted.filter(pc.field("count_all") > 1)
        if repeated.num_rows == 0:
            check_keys(table, keys)
            continue
        with pytest.raises(DataMismatch) as raised:
            check_keys(table, keys)
        assert f"({repeated.num_rows} duplicated key(s), e.g. " in str(raised.value)
        if len(keys) == 1:  # the example named is the smallest duplicated key
            smallest = min(repeated.column(keys[0]).to_pylist())
            assert repr(smallest) in str(raised.value)


def test_a_null_key_is_refused_before_duplicates_are_looked_for():
    table = pa.table({"i": pa.array([1, 1, None], pa.int64())})
    with pytest.raises(DataMismatch, match="NULL in 1 source row"):
        check_keys(table, ("i",))


@settings(max_examples=300, deadline=None)
@given(rows, st.integers(1, 7), st.integers(-3, 3))
def test_count_keys_streamed_is_a_group_by(values, batch_rows, hint_off):
    """Streamed in batches of any size, with the announced row count right or wrong (a spill
    path, not a wrong answer), NULL keys included."""
    table = _table(values)
    for keys in KEY_SETS:
        part = table.select(list(keys))
        batches = part.to_batches(max_chunksize=batch_rows)
        expected = (part.num_rows, part.group_by(list(keys)).aggregate([]).num_rows)
        hint = max(part.num_rows + hint_off, 0)
        assert count_keys(batches, keys, hint) == expected


NUMBER_TYPES = [pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint64()]


@given(
    st.sampled_from(NUMBER_TYPES),
    st.integers(0, 2**70),
    st.lists(st.integers(0, 2**70), min_size=1, max_size=80),
    st.integers(1, 2**70),
)
def test_count_keys_of_dense_and_sparse_numbers_is_len_of_set(type_, base, offsets, stretch):
    """Integer keys of every width near both ends of their range, dense (a span within 4x their
    number: marked) or sparse (sorted), counted as a set would."""
    info = (-(2 ** (type_.bit_width - 1)), 2 ** (type_.bit_width - 1) - 1)
    if pa.types.is_unsigned_integer(type_):
        info = (0, 2**type_.bit_width - 1)
    width = info[1] - info[0] + 1
    values = [info[0] + (base + (o % 7 if stretch % 2 else o * stretch)) % width for o in offsets]
    column = pa.array(values, type_)
    batches = pa.table({"id": column}).to_batches(max_chunksize=7)
    assert count_keys(batches, ("id",), len(values)) == (len(values), len(set(values)))


def test_dense_keys_whose_differences_overflow_their_type_are_sorted_instead():
    # Span 201 within 4x the 54 keys, but 50 - (-100) = 150 overflows int8 to -106, which would
    # mark index 95 of the span: -5's mark.
    values = [-100, 100, 50, -5, *range(-90, -40)]
    batches = pa.table({"id": pa.array(values, pa.int8())}).to_batches()
    assert count_keys(batches, ("id",), len(values)) == (54, 54)
