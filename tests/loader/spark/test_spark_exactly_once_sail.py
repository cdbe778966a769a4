"""The Spark engine's exactly-once parts executed on Sail (tests/sail_spark.py), beside the Arrow
engine on the same PostgreSQL rows (tests/loader/spark/test_spark_on_sail.py's ``Both``).

Executed: every DataFrame write names its attempt with the writer option ``userMetadata`` (Sail
writes it into its Delta log), and the next attempt reconciles an attempt whose success the
control database never recorded, reading nothing, as the Arrow engine does. Not executed: Delta
skipping a write by ``txnAppId`` / ``txnVersion`` (Sail writes no txn action; strict xfail in
test_spark_on_sail.py) and the MERGE's statement configurations (Sail ignores them; the
generated values are checked in tests/loader/arrow/test_exactly_once_commits.py).
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip(
    "pysail", reason="no pysail wheel for this platform: the Spark engine cannot run on Sail here"
)
from test_spark_on_sail import COLUMNS, Both, _seed, sail  # noqa: F401 - the fixture

from databricks_scripts.contract import RECORDED_METADATA_ID_PARAM
from databricks_scripts.load.commits import UnrecordedCommit


def _metadata_ids(both: Both) -> list[tuple[int, str, str]]:
    """(version, operation, dataloader.metadata_id) of the Spark destination's commits."""
    rows = both.sail.sql(f"DESCRIBE HISTORY {both.spark_target}").collect()
    out = []
    for r in rows:
        meta = json.loads(r["userMetadata"]) if r["userMetadata"] else {}
        out.append((r["version"], r["operation"], meta.get("dataloader.metadata_id")))
    return out


def test_each_write_names_its_attempt_and_an_unrecorded_attempt_is_reconciled(
    source_db,
    sail,  # noqa: F811 - the fixture imported above
    tmp_path,
):
    both = Both(
        source_db, sail, tmp_path, COLUMNS, load_strategy="incremental", incremental_column="ts"
    )
    _seed(both)
    both.check(*both.load())  # attempt 1: the first load creates the table
    both.sql(f"INSERT INTO {both.table} VALUES (6,'f',6.00,'2024-01-09')")
    both.check(*both.load())  # attempt 2: an append
    assert _metadata_ids(both) == [
        (1, "WRITE", "2"),
        (0, "CREATE TABLE AS SELECT", "1"),
    ]
    # Attempt 2's success never reached the control database (it recorded attempt 1): attempt 3
    # reads nothing and reports attempt 2's commit on both engines.
    both.sql(f"INSERT INTO {both.table} VALUES (7,'g',7.00,'2024-01-10')")
    arrow, spark = both.load_each(**{RECORDED_METADATA_ID_PARAM: 1})
    assert spark.reconciled == UnrecordedCommit(2, 1)
    assert arrow.reconciled is not None and arrow.reconciled.metadata_id == 2
    assert spark.rows_read == arrow.rows_read == 0
    assert _metadata_ids(both)[0][0] == 1  # nothing written


def test_a_write_skipped_for_a_newer_attempt_fails_the_load_as_stale(
    source_db,
    sail,  # noqa: F811 - the fixture imported above
    tmp_path,
    monkeypatch,
):
    """The check after the write: while attempt 3 runs its write, attempt 4 commits (a real
    append carrying attempt 4's writer options on Sail) and Delta skips attempt 3's write by
    its lower ``txnVersion`` (what Sail cannot do, so the write is left out here). Attempt 3
    must fail as stale instead of reporting success."""
    import dataclasses

    from databricks_scripts.engines.spark import engine as lsp
    from databricks_scripts.engines.spark.commits import write_options
    from databricks_scripts.load.commits import StaleAttempt

    both = Both(
        source_db, sail, tmp_path, COLUMNS, load_strategy="incremental", incremental_column="ts"
    )
    _seed(both)
    both.check(*both.load())
    both.check(*both.load())

    def newer_attempt_commits_first(spark, write, spec, strategy, **_):
        newer = dataclasses.replace(spec, metadata_id=spec.metadata_id + 1)
        rows = spark.sql(f"SELECT * FROM {both.spark_target} LIMIT 1")
        rows.writeTo(write.target).options(**write_options(newer, strategy)).append()
        return []  # Delta skips attempt 3's write: 3 is not above the 4 it recorded

    monkeypatch.setattr(lsp, "run_write", newer_attempt_commits_first)
    both.sql(f"INSERT INTO {both.table} VALUES (8,'h',8.00,'2024-01-11')")
    with pytest.raises(StaleAttempt, match="attempt 4 of this table committed .* attempt 3"):
        both.load_each()
