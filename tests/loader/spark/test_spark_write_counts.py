"""Rows read / written by a Spark load come from OUR commit, not the newest one (issue 12, item 2).

On Databricks, auto compaction and predictive optimization add OPTIMIZE commits right after a
write, and other writers may commit too: ``DESCRIBE HISTORY ... LIMIT 1`` then reported 0/0. The
loader now reads the table version before the write and takes the oldest commit after it whose
operation is its own, and prefers the written count the MERGE / INSERT statement itself returns.
The rows are real ``pyspark.sql.Row`` objects shaped as Databricks returns them (no Delta
runtime is available offline, so the statements themselves are not run here).
"""

import pytest
from pyspark.sql import Row

from databricks_scripts.engines.spark import engine as lsp

MERGE_METRICS = {
    "numSourceRows": "3",
    "numTargetRowsInserted": "1",
    "numTargetRowsUpdated": "2",
    "numTargetRowsCopied": "997",
    "numOutputRows": "1000",
}


def _commit(version: int, operation: str, metrics: dict | None = None) -> Row:
    return Row(version=version, operation=operation, operationMetrics=metrics or {})


# DESCRIBE HISTORY answers newest first.
HISTORY_WITH_AUTO_COMPACTION = [
    _commit(8, "OPTIMIZE", {"numRemovedFiles": "4", "numAddedFiles": "1"}),
    _commit(7, "MERGE", MERGE_METRICS),
    _commit(6, "WRITE", {"numOutputRows": "50"}),  # the previous load: before our version
]


def test_an_optimize_after_our_merge_does_not_hide_its_counts():
    commit = lsp.our_commit(HISTORY_WITH_AUTO_COMPACTION, 6, lsp.write_operation("MERGE INTO t"))
    assert commit["version"] == 7
    assert lsp.commit_counts(commit["operation"], commit["operationMetrics"]) == (3, 3)
    # What LIMIT 1 used to read: the OPTIMIZE commit, 0 read, 0 written.
    newest = HISTORY_WITH_AUTO_COMPACTION[0]
    assert lsp.commit_counts(newest["operation"], newest["operationMetrics"]) == (0, 0)


def test_another_writers_later_commit_is_not_taken_for_ours():
    history = [
        _commit(12, "MERGE", {"numSourceRows": "9", "numTargetRowsInserted": "9"}),  # theirs
        _commit(11, "OPTIMIZE"),
        _commit(10, "WRITE", {"numOutputRows": "25"}),  # ours: the first WRITE after 9
        _commit(9, "WRITE", {"numOutputRows": "5"}),
    ]
    insert = lsp.write_operation("INSERT INTO t SELECT * FROM v")
    assert insert == "WRITE"
    assert lsp.our_commit(history, 9, insert)["version"] == 10
    assert lsp.our_commit(history, 9, "MERGE")["version"] == 12
    assert lsp.our_commit(history, 12, insert) is None


@pytest.mark.parametrize(
    ("statement", "operation"),
    [
        ("CREATE TABLE t AS SELECT * FROM v", "CREATE TABLE AS SELECT"),
        ("CREATE OR REPLACE TABLE t AS SELECT * FROM v", "CREATE OR REPLACE TABLE AS SELECT"),
        ("INSERT OVERWRITE t SELECT * FROM v", "WRITE"),
        ("  MERGE INTO t USING v ON ...", "MERGE"),
    ],
)
def test_each_statement_finds_the_operation_delta_records_for_it(statement, operation):
    history = [_commit(1, "OPTIMIZE"), _commit(0, operation, {"numOutputRows": "7"})]
    assert lsp.our_commit(history, None, lsp.write_operation(statement))["version"] == 0


def test_the_statements_own_metrics_give_rows_written():
    merge = [Row(num_affected_rows=3, num_updated_rows=2, num_deleted_rows=0, num_inserted_rows=1)]
    insert = [Row(num_affected_rows=25, num_inserted_rows=25)]
    assert lsp.statement_written(merge) == 3
    assert lsp.statement_written(insert) == 25
    assert lsp.statement_written([]) is None  # CTAS on some runtimes: nothing returned
    assert lsp.statement_written([Row(x=1)]) is None


def test_counts_take_our_commit_and_prefer_the_statements_written_count():
    statement_rows = [Row(num_affected_rows=3, num_updated_rows=2, num_inserted_rows=1)]
    history = HISTORY_WITH_AUTO_COMPACTION
    assert lsp.counts_from(history, "MERGE INTO x", statement_rows, 6) == (3, 3)
    assert lsp.counts_from(history, "MERGE INTO x", [], 6) == (3, 3)
    insert_rows = [Row(num_affected_rows=4, num_inserted_rows=4)]
    # Our commit is not in the history searched: the statement's own count still answers.
    assert lsp.counts_from(history, "INSERT INTO x", insert_rows, 8) == (4, 4)
    with pytest.raises(ValueError, match="our commit was not among the newest"):
        lsp.counts_from(history, "INSERT INTO x", [], 7)  # newer commits, none of them ours
    # Nothing newer than the version the write started from: the statement committed nothing.
    assert lsp.counts_from(history, "INSERT INTO x", [], 9) == (0, 0)


def test_a_hard_deleting_merge_counts_its_deletes_as_written_as_the_arrow_engine_does():
    metrics = {
        "numSourceRows": "5",
        "numTargetRowsInserted": "1",
        "numTargetRowsUpdated": "1",
        "numTargetRowsDeleted": "2",
    }
    assert lsp.commit_counts("MERGE", metrics) == (5, 4)
    rows = [Row(num_affected_rows=4, num_updated_rows=1, num_deleted_rows=2, num_inserted_rows=1)]
    assert lsp.statement_written(rows) == 4
