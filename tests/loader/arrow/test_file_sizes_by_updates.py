"""A keyed table's files sized by how its upserts touch them (engines/arrow/merge.py).

Scattered updates rewrite (nearly) every file whatever their size, and a MERGE costs more the more
files it writes: once one MERGE rewrites most of the table, its files are written bigger. A big
upsert in chunks (each chunk rewrites its key range) brings the small files back. Real script,
real PostgreSQL, real Delta tables; the data is compared with the source after every load.
"""

from __future__ import annotations

from deltalake import DeltaTable
from test_loader_big_tables import (
    SMALL_FILES,
    destination_rows,
    keyed_params,
    load,
    make_source,
    source_rows,
    sql,
)
from test_loader_pipe import dest

from databricks_scripts.engines.arrow.merge import FILE_SIZE_PROPERTY, SCATTERED_FILE_FACTOR

SMALL = int(SMALL_FILES["DATALOADER_TARGET_FILE_BYTES"])


def _size(path) -> str | None:
    return DeltaTable(str(path)).metadata().configuration.get(FILE_SIZE_PROPERTY)


def test_scattered_upserts_get_bigger_files_and_chunked_upserts_small_ones_again(
    source_db, lake_root, tmp_path
):
    make_source(source_db, "sized", rows=40_000)
    params = keyed_params(source_db, "sized")
    first = load(params, tmp_path, SMALL_FILES)
    path = dest(lake_root, params)
    files = len(DeltaTable(str(path)).file_uris())
    assert files >= 16 and _size(path) == str(SMALL)

    # A clustered update (one key range): small files stay.
    sql(source_db, "UPDATE sized SET label = 'near', updated_at = 100000 WHERE id BETWEEN 5 AND 9")
    params = {**params, "metadata_id": 2, "incremental_value": first["watermark_after"]}
    second = load(params, tmp_path, SMALL_FILES)
    assert _size(path) == str(SMALL) and not second.get("load_notes")

    # Scattered updates (every 100th id): one MERGE rewrites most files; they are written bigger.
    sql(source_db, "UPDATE sized SET label = 'far', updated_at = 200000 WHERE id % 100 = 50")
    params = {**params, "metadata_id": 3, "incremental_value": second["watermark_after"]}
    third = load(params, tmp_path, SMALL_FILES)
    assert _size(path) == str(SMALL * SCATTERED_FILE_FACTOR)
    assert "the table's files are written at" in third["load_notes"]
    merge = DeltaTable(str(path)).history(1)[0]
    assert merge["operation"] == "MERGE"
    assert merge["operationMetrics"]["num_target_files_added"] < files
    assert destination_rows(path) == source_rows(source_db, "sized")

    # Every row changed, in chunks: each chunk rewrites its range, so small files come back.
    sql(source_db, "UPDATE sized SET label = 'all', updated_at = 300000")
    params = {**params, "metadata_id": 4, "incremental_value": third["watermark_after"]}
    fourth = load(params, tmp_path, {**SMALL_FILES, "DATALOADER_MERGE_CHUNK_ROWS": "5000"})
    assert _size(path) == str(SMALL)
    assert "MERGEs, each rewriting its range" in fourth["load_notes"]
    assert destination_rows(path) == source_rows(source_db, "sized")


def test_a_file_size_a_person_set_is_kept(source_db, lake_root, tmp_path):
    make_source(source_db, "sized_own", rows=40_000)
    params = keyed_params(source_db, "sized_own")
    first = load(params, tmp_path, SMALL_FILES)
    path = dest(lake_root, params)
    DeltaTable(str(path)).alter.set_table_properties({FILE_SIZE_PROPERTY: "12345"})
    sql(source_db, "UPDATE sized_own SET label = 'far', updated_at = 200000 WHERE id % 100 = 50")
    params = {**params, "metadata_id": 2, "incremental_value": first["watermark_after"]}
    load(params, tmp_path, SMALL_FILES)
    assert _size(path) == "12345"
    assert destination_rows(path) == source_rows(source_db, "sized_own")
