"""A chunked upsert's MERGEs each cover their own key range, whatever order the source sends rows in.

A source read that starts mid-table (PostgreSQL's synchronized scans do) hands the first data file
rows from both ends of the key range, so the files' ranges overlap into one part. Chunks used to be
cut from that part in arrival order: a chunk then held keys from both ends and its MERGE scanned
every file (10M rows in chunks of 100,000 peaked at 1.8-2.0 GiB). They are cut by key now
(engines/arrow/merge.chunk_parts).
"""

from __future__ import annotations

import itertools

from deltalake import DeltaTable
from hypothesis import given, settings
from hypothesis import strategies as st
from test_loader_big_tables import (
    SMALL_FILES,
    destination_rows,
    keyed_params,
    load,
    source_rows,
    sql,
)
from test_loader_pipe import dest

from databricks_scripts.engines.arrow.merge import chunk_parts, key_parts

ranges = st.lists(
    st.tuples(st.integers(0, 10_000), st.integers(0, 5_000), st.integers(1, 50_000)).map(
        lambda r: (r[0], r[0] + r[1], r[2])
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(ranges, st.integers(1, 100_000), st.integers(1, 64))
def test_chunk_parts_cut_each_part_into_disjoint_ranges_that_cover_it(files, chunk, most):
    parts = key_parts(files, most)
    pieces = chunk_parts(files, chunk, most)
    assert len(pieces) <= max(most, len(parts))
    assert all(lo <= hi for lo, hi in pieces)
    assert all(a[1] < b[0] for a, b in itertools.pairwise(pieces))
    # Every part is covered exactly by its pieces: the same keys, no more, no fewer.
    for lo, hi in parts:
        inside = [p for p in pieces if lo <= p[0] <= hi]
        assert inside[0][0] == lo and inside[-1][1] == hi
        assert all(a[1] + 1 == b[0] for a, b in itertools.pairwise(inside))
    assert sum(hi - lo + 1 for lo, hi in pieces) == sum(hi - lo + 1 for lo, hi in parts)


def test_one_file_spanning_the_table_does_not_make_every_chunk_merge_every_file(
    source_db, lake_root, tmp_path
):
    # Physical order rotated: a seq scan returns ids 35001..40000 first, then 1..35000.
    rows, tail = 40_000, 35_000
    sql(source_db, "DROP TABLE IF EXISTS rotated")
    sql(source_db, "CREATE TABLE rotated (id int PRIMARY KEY, label text, updated_at int)")
    for low, high in ((tail + 1, rows), (1, tail)):
        sql(
            source_db,
            f"INSERT INTO rotated SELECT g, 'row ' || g, 1 FROM generate_series({low}, {high}) g",
        )
    params = keyed_params(source_db, "rotated")
    load(params, tmp_path, SMALL_FILES)
    path = dest(lake_root, params)
    table = DeltaTable(str(path))
    files = len(table.file_uris())
    assert files >= 20

    sql(source_db, "UPDATE rotated SET label = 'all', updated_at = 2")
    # The whole table upserted (a merge row reads every row, in the source's physical order).
    params = {**params, "metadata_id": 2, "load_strategy": "merge", "incremental_column": None}
    # Batches smaller than the rotation, as a big table's are: the chunks see the arrival order.
    env = {**SMALL_FILES, "DATALOADER_MERGE_CHUNK_ROWS": "4000", "DATALOADER_BATCH_BYTES": "32768"}
    load(params, tmp_path, env)
    table = DeltaTable(str(path))
    merges = [h for h in table.history(100) if h["operation"] == "MERGE"]
    assert len(merges) >= 8
    scanned = [int(h["operationMetrics"]["num_target_files_scanned"]) for h in merges]
    # Each chunk reads the files of its own key range (plus the one wide file), never most.
    assert max(scanned) < files // 2, scanned
    assert destination_rows(path) == source_rows(source_db, "rotated")
