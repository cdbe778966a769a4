"""The load's report on the wire: the script builds a ``LoadReport`` from its engine's result and
reports ``to_metadata()``; the asset reads it back with ``from_metadata``."""

from __future__ import annotations

import dagster as dg
import pyarrow as pa

from databricks_scripts.contract import LoadMetadata, LoadReport
from databricks_scripts.dataloader_pipe import load_report
from databricks_scripts.engines.arrow.verify import Verification
from databricks_scripts.load import params as lp
from databricks_scripts.load.commits import UnrecordedCommit
from databricks_scripts.load.plan import LoadResult

ALWAYS = {
    LoadMetadata.ROWS_READ,
    LoadMetadata.ROWS_WRITTEN,
    LoadMetadata.WATERMARK_BEFORE,
    LoadMetadata.WATERMARK_AFTER,
    LoadMetadata.DURATION_SECONDS,
    LoadMetadata.DESTINATION,
    LoadMetadata.LOAD_STRATEGY,
    LoadMetadata.REQUESTED_LOAD_STRATEGY,
    LoadMetadata.ENGINE,
    LoadMetadata.TABLE_NAME,
    LoadMetadata.COLUMN_SCHEMA,
}


def _spec(**overrides) -> lp.LoadSpec:
    return lp.parse_load_spec(
        {
            "control_key": "test.t",
            "source_schema_name": "public",
            "source_table_name": "t",
            "destination_catalog": "lake",
            "destination_schema_name": "landing",
            "destination_table_name": "t",
            "db_type": "postgresql",
            "db_config_value": {"host": "127.0.0.1", "database": "d", "user": "u"},
            "load_strategy": "incremental",
            "incremental_column": "updated_at",
            **overrides,
        }
    )


def _result(**overrides) -> LoadResult:
    values = {
        "rows_read": 5,
        "rows_written": 4,
        "watermark_before": "1",
        "watermark_after": "9",
        "applied_strategy": "incremental",
        "destination": "/lake/landing/t",
        "schema": pa.schema([("id", pa.int64())]),
        "row_count": 12,
        "committed": True,
        **overrides,
    }
    return LoadResult(**values)


def test_a_plain_incremental_load_reports_the_always_reported_keys_and_its_row_count():
    metadata = load_report(_spec(), _result(), "arrow", 1.5, []).to_metadata()
    assert set(metadata) == ALWAYS | {LoadMetadata.ROW_COUNT}
    assert metadata[LoadMetadata.ROWS_WRITTEN] == 4
    assert metadata[LoadMetadata.REQUESTED_LOAD_STRATEGY] == "incremental"
    assert metadata[LoadMetadata.TABLE_NAME] == "lake.landing.t"
    assert metadata[LoadMetadata.COLUMN_SCHEMA]["type"] == "table_schema"


def test_a_full_load_reports_what_its_reader_counted_unless_the_check_counted_the_source():
    full = _result(applied_strategy="full", destination_rows_before=0, full_reason="first load")
    metadata = load_report(_spec(), full, "arrow", 1.0, []).to_metadata()
    assert metadata[LoadMetadata.SOURCE_ROWS] == 5
    assert metadata[LoadMetadata.DESTINATION_ROWS_BEFORE] == 0
    assert metadata[LoadMetadata.FULL_REASON] == "first load"
    checked = Verification(True, "7 rows on both sides", {"source_rows": 7, "destination_rows": 7})
    metadata = load_report(
        _spec(), _result(verification=checked, applied_strategy="full"), "arrow", 1.0, []
    ).to_metadata()
    assert metadata[LoadMetadata.SOURCE_ROWS] == 7
    assert metadata["destination_rows"] == 7
    assert metadata[LoadMetadata.VERIFIED] is True
    assert metadata[LoadMetadata.VERIFY_DEPTH] == "counts"


def test_a_failed_check_column_control_and_notes_make_one_redacted_sentence_list():
    spec = _spec(columns_exclude=["ssn"], columns_hash=["email"])
    failed = Verification(False, "source has 3 rows, password=hunter2", {"source_rows": 3})
    result = _result(verification=failed, notes=["read in one partition"])
    report = load_report(spec, result, "arrow", 1.0, ["hunter2"])
    assert report.columns_excluded == "ssn" and report.columns_hashed == "email"
    assert report.verified is False
    assert "hunter2" not in (report.notes or "") and "hunter2" not in (report.verification or "")
    assert report.notes is not None
    assert report.notes.startswith("columns excluded: ssn; columns hashed: email; read in one")
    assert "RECONCILIATION FAILED (counts)" in report.notes


def test_a_reconciled_load_reports_the_earlier_commit_and_no_counts():
    result = _result(
        rows_read=0,
        rows_written=0,
        applied_strategy="full",
        destination_rows_before=3,
        full_reason="forced",
        reconciled=UnrecordedCommit(metadata_id=41, version=7),
    )
    report = load_report(_spec(), result, "arrow", 0.1, [])
    metadata = report.to_metadata()
    assert metadata[LoadMetadata.RECONCILED_METADATA_ID] == 41
    assert metadata[LoadMetadata.RECONCILED_VERSION] == 7
    assert not {LoadMetadata.SOURCE_ROWS, LoadMetadata.DESTINATION_ROWS_BEFORE} & set(metadata)
    assert report.reconciled


def test_the_asset_reads_back_what_the_script_reported_wrapped_or_not():
    checked = Verification(True, "ok", {"source_rows": 7, "destination_rows": 7})
    spec = _spec(columns_exclude=["ssn"])
    report = load_report(spec, _result(verification=checked), "spark", 2.0, [])
    metadata = report.to_metadata()
    assert LoadReport.from_metadata(metadata) == report
    wrapped = {
        key: dg.MetadataValue.int(value) if type(value) is int else value
        for key, value in metadata.items()
    }
    back = LoadReport.from_metadata(wrapped)
    assert (back.rows_read, back.rows_written, back.source_rows) == (5, 4, 7)
    assert back.facts == {"destination_rows": 7}
    assert back.to_metadata() == metadata
