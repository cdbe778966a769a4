"""Which commit is a load's: never a maintenance commit (OPTIMIZE) carrying the load's metadata,
and every Spark write names its attempt per write (writer options, or the MERGE's own statement
configurations), never for the session.

The Arrow engine's part runs on real Delta tables (deltalake); the Spark engine's history rows
are given as Databricks returns them (DESCRIBE HISTORY is not executed on Sail), its writes'
options and configurations are checked as generated. tests/loader/spark/test_spark_exactly_once_sail.py runs
the writes on Sail.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from databricks_scripts.contract import RECORDED_METADATA_ID_PARAM
from databricks_scripts.engines.arrow.commits import commit_properties, unrecorded_commit
from databricks_scripts.engines.spark.commits import (
    TXN_APP_ID_CONF,
    TXN_VERSION_CONF,
    USER_METADATA_CONF,
    last_dataloader_commit,
    statement_confs,
    user_metadata,
    write_options,
)
from databricks_scripts.engines.spark.writes import (
    APPEND,
    CREATE,
    MERGE,
    SparkWrite,
    created,
    run_write,
)
from databricks_scripts.load.commits import UnrecordedCommit
from databricks_scripts.load.interrupt import StopSignal
from databricks_scripts.load.params import parse_load_spec


def spec(metadata_id=7, recorded=5, **kw):
    return parse_load_spec(
        {
            "config_id": 3,
            "control_key": "erp.orders",
            "metadata_id": metadata_id,
            "source_table_name": "src",
            "destination_catalog": "main",
            "destination_schema_name": "bronze",
            "destination_table_name": "orders",
            "db_type": "databricks",
            "load_strategy": "merge",
            "merge_keys": ["id"],
            RECORDED_METADATA_ID_PARAM: recorded,
            **kw,
        }
    )


def test_spark_an_optimize_commit_with_our_metadata_is_never_taken_for_ours():
    """Auto compaction runs inside the MERGE's statement, so its OPTIMIZE commit carries the
    same userMetadata: the MERGE is the load's commit, not the OPTIMIZE after it."""
    meta = user_metadata(spec(metadata_id=9), "merge")
    rows = [
        {"version": 12, "operation": "OPTIMIZE", "userMetadata": meta},
        {"version": 11, "operation": "MERGE", "userMetadata": meta},
        {"version": 10, "operation": "WRITE", "userMetadata": None},
    ]
    assert last_dataloader_commit(rows) == UnrecordedCommit(9, 11)
    only_optimize = [{"version": 4, "operation": "OPTIMIZE", "userMetadata": meta}]
    assert last_dataloader_commit(only_optimize) is None
    for operation in ("CREATE TABLE AS SELECT", "CREATE OR REPLACE TABLE AS SELECT", "WRITE"):
        found = last_dataloader_commit(
            [{"version": 2, "operation": operation, "userMetadata": meta}]
        )
        assert found == UnrecordedCommit(9, 2), operation


def test_arrow_an_optimize_commit_with_our_metadata_is_never_taken_for_ours(tmp_path):
    """The same on a real Delta table: attempt 6's write, then an OPTIMIZE given attempt 6's
    commit properties. The unrecorded attempt is reported at its write's version."""
    path = str(tmp_path / "t")
    rows = pa.table({"id": [1, 2], "v": ["a", "b"]})
    write_deltalake(path, rows, commit_properties=commit_properties(spec(metadata_id=5), "merge"))
    write_deltalake(
        path, rows, mode="append", commit_properties=commit_properties(spec(metadata_id=6), "merge")
    )
    table = DeltaTable(path)
    table.optimize.compact(commit_properties=commit_properties(spec(metadata_id=6), "merge"))
    table = DeltaTable(path)
    newest = table.history(1)[0]
    assert newest["operation"] == "OPTIMIZE" and newest["dataloader.metadata_id"] == "6"
    assert unrecorded_commit(table, spec(metadata_id=7, recorded=5)) == UnrecordedCommit(6, 1)


def test_writer_options_name_the_attempt_and_key_idempotence_on_the_row_and_attempt():
    options = write_options(spec(metadata_id=42), "merge")
    assert options["txnAppId"] == "dataloader:3"  # the control row (config_id)
    assert options["txnVersion"] == "42"  # the attempt
    assert json.loads(options["userMetadata"])["dataloader.metadata_id"] == "42"
    assert write_options(spec(metadata_id=None), "merge") == {}
    assert statement_confs(spec(metadata_id=42), "merge") == {
        USER_METADATA_CONF: options["userMetadata"],
        TXN_APP_ID_CONF: "dataloader:3",
        TXN_VERSION_CONF: "42",
    }


class _Recorder:
    """A session that records what each write ran with (statement text, configurations set at
    that moment, DataFrame writer calls)."""

    def __init__(self):
        self.confs: dict[str, str] = {}
        self.ran: list[tuple] = []
        self.conf = self

    def set(self, name, value):
        self.confs[name] = value

    def unset(self, name):
        self.confs.pop(name, None)

    def sql(self, text, args=None):
        self.ran.append(("sql", text, dict(self.confs)))
        return self

    def collect(self):
        return []

    def writeTo(self, target):
        self.ran.append(("writeTo", target))
        return self

    def __getattr__(self, name):
        def call(*a, **kw):
            self.ran.append((name, a, kw))
            return self

        return call


def test_a_merge_runs_with_its_own_statement_configurations_cleared_after_it():
    session = _Recorder()
    run_write(session, SparkWrite(MERGE, "`t`", "MERGE INTO `t` ..."), spec(), "merge")
    (_, text, confs), *_ = session.ran
    assert text == "MERGE INTO `t` ..." and confs == statement_confs(spec(), "merge")
    assert session.confs == {}  # nothing left for the session


def test_dataframe_writes_carry_writer_options_and_never_set_the_session():
    session = _Recorder()
    run_write(session, SparkWrite(APPEND, "`t`", "SELECT 1"), spec(), "incremental")
    assert ("options", (), write_options(spec(), "incremental")) in session.ran
    assert ("append", (), {}) in session.ran
    assert all(not r[2] for r in session.ran if r[0] == "sql")  # no configuration set
    write = created("`t`", "SELECT * FROM v", ["id", "a b"], replace=False)
    assert write.kind == CREATE and write.properties == {"delta.columnMapping.mode": "name"}
    assert "TBLPROPERTIES ('delta.columnMapping.mode' = 'name')" in write.text
    run_write(session, write, spec(), "full")
    assert ("tableProperty", ("delta.columnMapping.mode", "name"), {}) in session.ran
    assert created("`t`", "SELECT 1", ["id", "a_b"], replace=True).properties == {}


@pytest.mark.parametrize("kind", [MERGE, APPEND, CREATE])
def test_serverless_writes_set_no_conf_and_a_merge_is_named_by_a_marker_after_it(kind):
    """On serverless (``marker``) no write sets a Spark configuration; a MERGE runs as it is,
    then the marker: an empty append of the same table with this attempt's writer options."""
    session = _Recorder()
    query = "MERGE INTO `t` ..." if kind == MERGE else "SELECT 1"
    rows = run_write(session, SparkWrite(kind, "`t`", query), spec(), "merge", marker=True)
    assert rows == []
    assert all(not r[2] for r in session.ran if r[0] == "sql")  # no configuration set, ever
    if kind != MERGE:
        return
    assert [r[1] for r in session.ran if r[0] == "sql"] == [
        "MERGE INTO `t` ...",  # first the MERGE
        "SELECT * FROM `t` LIMIT 0",  # then the marker's empty rows, appended to the table
    ]
    assert session.ran[-3:] == [
        ("writeTo", "`t`"),
        ("options", (), write_options(spec(), "merge")),
        ("append", (), {}),
    ]
    unnamed = _Recorder()  # a test run (no metadata_id): nothing to name, no marker
    run_write(unnamed, SparkWrite(MERGE, "`t`", "MERGE"), spec(metadata_id=None), "m", marker=True)
    assert [r[1] for r in unnamed.ran] == ["MERGE"]


class _MarkerFails(_Recorder):
    """A session whose marker commit (the empty append after a serverless MERGE) fails."""

    def append(self, *a, **kw):
        raise RuntimeError("cancelled")


@pytest.mark.parametrize(("kind", "marker"), [(MERGE, False), (MERGE, True), (APPEND, True)])
def test_a_spark_write_tells_the_stop_signal_once_its_data_is_committed(kind, marker):
    """A stop after the Spark engine's commit says the commit stays (not "committed nothing");
    the serverless MERGE counts before its marker, so a cancelled marker still says so."""
    stop = StopSignal()
    query = "MERGE INTO `t` ..." if kind == MERGE else "SELECT 1"
    run_write(
        _Recorder(),
        SparkWrite(kind, "`t`", query),
        spec(),
        "m",
        marker=marker,
        committed=stop.leave_commit,
    )
    assert stop.commits_done == 1
    cancelled = StopSignal()
    if kind == MERGE and marker:
        with pytest.raises(RuntimeError, match="the MERGE committed, but the marker"):
            run_write(
                _MarkerFails(),
                SparkWrite(MERGE, "`t`", query),
                spec(),
                "m",
                marker=True,
                committed=cancelled.leave_commit,
            )
        assert cancelled.commits_done == 1
        assert "its 1 earlier commit(s) stay" in cancelled.finish_stop()
