"""``ControlRow`` is the table: one field per ``table_control`` column, read through its row factory."""

from __future__ import annotations

import dataclasses
import typing
from datetime import datetime, timedelta
from decimal import Decimal

import psycopg
import pytest
from helpers import _ROW_DEFAULTS, add_row, make_claimed, make_row
from psycopg.rows import dict_row

from dagsters.control.rows import AnalysisClaim, ClaimedRow, ControlRow, fetch_all, fetch_one
from dagsters.control.table_listing import DeclaredTable, TableListingSql


def _columns(conn: psycopg.Connection, table: str = "table_control") -> list[str]:
    return [
        r["column_name"]
        for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = %s"
            " ORDER BY ordinal_position",
            (table,),
        )
    ]


def test_every_column_of_table_control_is_a_field_and_every_field_a_column(db):
    fields = [f.name for f in dataclasses.fields(ControlRow)]
    assert sorted(fields) == sorted(_columns(db))
    assert sorted(_ROW_DEFAULTS) == sorted(fields)  # the tests' make_row names every one too


def test_a_row_read_back_has_the_python_types_its_annotations_name(db):
    add_row(db, "t.typed", merge_keys=["id"], schedule_interval=timedelta(hours=1))
    row = fetch_one(db, ControlRow, "SELECT * FROM table_control WHERE control_key = 't.typed'")
    assert row is not None
    assert row.control_key == "t.typed" and row.merge_keys == ["id"]
    assert isinstance(row.lookback_window, timedelta)
    assert row.schedule_interval == timedelta(hours=1)
    assert isinstance(row.delete_max_fraction, Decimal)
    assert isinstance(row.created_at, datetime) and isinstance(row.db_config_value, dict)
    hints = typing.get_type_hints(ControlRow)
    assert row.load_strategy in typing.get_args(hints["load_strategy"])
    assert row.delete_detection in typing.get_args(hints["delete_detection"])
    assert row.verify_depth in typing.get_args(hints["verify_depth"])
    assert row.schema_change in typing.get_args(hints["schema_change"])
    # What the code reads is what the database holds, column for column.
    plain = db.cursor(row_factory=dict_row).execute(
        "SELECT * FROM table_control WHERE control_key = 't.typed'"
    )
    assert dataclasses.asdict(row) == plain.fetchone()


def test_a_column_the_type_does_not_know_is_left_out_and_a_missing_one_refused(db):
    add_row(db, "t.extra")
    [row] = fetch_all(db, ControlRow, "SELECT *, 42 AS not_a_column FROM table_control")
    assert not hasattr(row, "not_a_column")
    with pytest.raises(TypeError, match="config_id"):
        fetch_one(db, ControlRow, "SELECT control_key FROM table_control")


def test_rows_are_frozen_and_changed_only_by_replace():
    row = make_row(last_status="Failed")
    with pytest.raises(dataclasses.FrozenInstanceError):
        row.last_status = None  # type: ignore[misc]
    assert dataclasses.replace(row, needs_review=True).needs_review is True
    assert row.needs_review is False


def test_a_claimed_row_is_the_control_row_and_its_attempt():
    claimed = make_claimed(17, control_key="x.y", retry_count=2)
    assert isinstance(claimed, ControlRow) and claimed.metadata_id == 17
    assert claimed.control_key == "x.y" and claimed.retry_count == 2
    assert [f.name for f in dataclasses.fields(AnalysisClaim)][-1] == (
        "previous_analysis_requested_at"
    )
    assert [f.name for f in dataclasses.fields(ClaimedRow)][-1] == "metadata_id"


def test_the_declared_table_read_has_its_own_type(control_db, db):
    add_row(db, "t.declared", merge_keys=["id"])
    client = TableListingSql(control_db)
    try:
        [row] = client.active_tables(10)
    finally:
        client.close()
    assert isinstance(row, DeclaredTable)
    assert row.control_key == "t.declared" and row.merge_keys == ["id"]
    assert set(row.db_config_value) == {"host", "port", "database"}  # never the user or secret
