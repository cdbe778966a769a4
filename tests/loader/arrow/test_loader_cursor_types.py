"""Column types the loader gets right: uuid and json load as text, unordered cursor types are refused
at the probe, and a text cursor with mixed formats fails before its commit (real PostgreSQL, real
Delta)."""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg
import pytest
from deltalake import DeltaTable
from helpers import pg_config

from databricks_scripts.engines.arrow import engine as la
from databricks_scripts.load import params as lp
from databricks_scripts.sources import readers as ls


def _spec(source_db: str, table: str, **overrides) -> lp.LoadSpec:
    return lp.parse_load_spec(
        {
            "control_key": f"test.{table}",
            "source_schema_name": "public",
            "source_table_name": table,
            "destination_catalog": "lake",
            "destination_schema_name": "landing",
            "destination_table_name": table,
            "db_type": "postgresql",
            "db_config_value": pg_config(source_db),
            "load_strategy": "full",
            **overrides,
        }
    )


def _load(spec: lp.LoadSpec, destination: Path) -> la.LoadResult:
    source = ls.open_source(spec, None, batch_bytes=1 << 20, batch_rows=2)
    try:
        return la.run_arrow_load(spec, source, destination, log=lambda _m: None)
    finally:
        source.close()


def _sql(conninfo: str, statement: str, params=None) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(statement, params)


def test_uuid_and_json_columns_load_as_their_text(source_db, tmp_path):
    ids = [uuid.uuid4(), uuid.uuid4()]
    _sql(source_db, "CREATE TABLE things (id int, ref uuid, doc jsonb, raw json)")
    _sql(
        source_db,
        "INSERT INTO things VALUES (1, %s, '{\"a\": 1}', '[1, 2]'), (2, %s, NULL, NULL),"
        " (3, NULL, '{}', '{}')",
        (ids[0], ids[1]),
    )
    destination = tmp_path / "things"
    result = _load(_spec(source_db, "things"), destination)

    assert result.rows_written == 3
    table = DeltaTable(str(destination)).to_pyarrow_table()
    assert str(table.schema.field("ref").type) in ("string", "large_string", "string_view")
    rows = sorted(table.to_pylist(), key=lambda r: r["id"])
    assert [r["ref"] for r in rows] == [str(ids[0]), str(ids[1]), None]
    assert [r["doc"] for r in rows] == ['{"a": 1}', None, "{}"]
    assert [r["raw"] for r in rows] == ["[1, 2]", None, "{}"]


@pytest.mark.parametrize("column_type", ["uuid", "jsonb", "json", "boolean", "bytea"])
def test_an_unordered_cursor_type_is_refused_at_the_probe(source_db, tmp_path, column_type):
    _sql(source_db, f"CREATE TABLE odd (id int, cursor_col {column_type})")
    spec = _spec(source_db, "odd", load_strategy="incremental", incremental_column="cursor_col")
    destination = tmp_path / "odd"
    with pytest.raises(la.LoadStepError) as refused:
        _load(spec, destination)

    assert refused.value.step == "probe source"
    assert "incremental_column 'cursor_col' cannot be a cursor" in str(refused.value)
    assert "Traceback" not in str(refused.value)
    assert not destination.exists()


def test_a_text_cursor_with_mixed_formats_fails_before_the_commit(source_db, tmp_path):
    _sql(source_db, "CREATE TABLE dated (id int, day_text text)")
    _sql(source_db, "INSERT INTO dated VALUES (1, '2025-05-30'), (2, '2025-05-31')")
    spec = _spec(source_db, "dated", load_strategy="incremental", incremental_column="day_text")
    destination = tmp_path / "dated"
    first = _load(spec, destination)
    assert first.watermark_after == "2025-05-31"

    # A value of another format would sort after every date and hide later dates for ever.
    _sql(source_db, "INSERT INTO dated VALUES (3, 'zzz'), (4, '2025-06-01')")
    again = lp.parse_load_spec({**spec.extra, "incremental_value": first.watermark_after})
    with pytest.raises(la.LoadStepError) as refused:
        _load(again, destination)

    message = str(refused.value)
    assert "text incremental_column 'day_text' holds values of different formats" in message
    assert "'zzz'" in message and "'2025-05-31'" in message
    assert DeltaTable(str(destination)).version() == 0  # nothing committed

    # One format again: the load goes on from the stored watermark.
    _sql(source_db, "DELETE FROM dated WHERE day_text = 'zzz'")
    result = _load(again, destination)
    assert (result.rows_written, result.watermark_after) == (1, "2025-06-01")
