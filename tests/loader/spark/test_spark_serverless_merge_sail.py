"""The serverless MERGE executed on Sail: no Spark conf, a marker commit after it (issue 25).

On serverless a job may set none of the Spark confs that name a SQL MERGE's commit on classic
compute (``spark.databricks.delta.commitInfo.userMetadata``, ``...write.txnAppId`` /
``txnVersion``), so the Spark engine in serverless mode (``merge_marker``, from
``ScriptEnv.on_serverless``) runs the MERGE with none and names it by a *marker commit* after it:
an empty append carrying the writer options ``userMetadata``, ``txnAppId``, ``txnVersion``.

Every load here runs on a session that refuses, as serverless does, every conf serverless does
not list (``ServerlessSail``; the list is tests/loader/spark/test_serverless_rules.py's, from Databricks'
documentation), beside the Arrow engine on the same PostgreSQL rows (test_spark_on_sail.Both).

Executed on Sail: the MERGE and its marker; the reconcile and the fence before the write reading
the marker as the attempt's commit, with the same outcome as a classic-mode load; the row counts
taken from the MERGE, not the empty marker; a crash between the MERGE and its marker followed by a
second attempt that upserts the same rows again and ends with the rows the Arrow engine loaded
once, for merge, soft / hard delete detection and scd2. Not executed: Sail commits nothing for an
empty append, where Delta records one (its ``txn`` action makes it non-empty: reviewed in Delta's
source); the test session writes that commit with deltalake (``sail_spark.SAIL_GAPS`` "empty
append"). Delta skipping a stale attempt's marker by ``txnVersion`` (Sail writes no ``txn``) is
left out as in test_spark_exactly_once_sail.py.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

pytest.importorskip(
    "pysail", reason="no pysail wheel for this platform: the Spark engine cannot run on Sail here"
)
from test_serverless_rules import SERVERLESS_SETTABLE
from test_spark_on_sail import COLUMNS, Both, _seed, sail, t  # noqa: F401 - the fixture

from databricks_scripts.contract import DELETED_AT, RECORDED_METADATA_ID_PARAM
from databricks_scripts.engines.spark import commits, writes
from databricks_scripts.engines.spark import engine as lsp
from databricks_scripts.load.commits import StaleAttempt, UnrecordedCommit


class _ServerlessConf:
    """``spark.conf`` as serverless answers it: a conf it does not list is refused with the error
    Databricks documents (``CONFIG_NOT_AVAILABLE``); every refusal is kept."""

    def __init__(self, conf: Any, refused: list[str]):
        self._conf, self._refused = conf, refused

    def set(self, key: str, value: Any) -> None:
        if key not in SERVERLESS_SETTABLE:
            self._refused.append(key)
            raise RuntimeError(f"[CONFIG_NOT_AVAILABLE] Configuration {key} is not available.")
        self._conf.set(key, value)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conf, name)


class ServerlessSail:
    """The Sail session (tests/sail_spark.SailSession) behind serverless' conf rule."""

    def __init__(self, session: Any):
        self._sail = session
        self.refused: list[str] = []

    @property
    def conf(self) -> _ServerlessConf:
        return _ServerlessConf(self._sail.conf, self.refused)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sail, name)


def _both(source_db, on_sail, tmp_path, *, serverless: bool = True, guard: bool = True, **params):
    """Both engines on one source; the Spark engine in serverless mode or not, on a session
    that refuses what serverless refuses (``guard``) or on Sail as it is."""
    session = ServerlessSail(on_sail) if guard else on_sail
    params = {"load_strategy": "merge", "merge_keys": ["id"], "incremental_column": "ts", **params}
    both = Both(source_db, session, tmp_path, COLUMNS, **params)
    both.spark_options = {"merge_marker": serverless}
    return both


def _history(both: Both) -> list[tuple[int, str, str | None]]:
    """(version, operation, dataloader.metadata_id) of the Spark destination, newest first."""
    rows = both.sail.sql(f"DESCRIBE HISTORY {both.spark_target}").collect()
    out = []
    for r in rows:
        meta = json.loads(r["userMetadata"]) if r["userMetadata"] else {}
        out.append((r["version"], r["operation"], meta.get("dataloader.metadata_id")))
    return out


def _edit(both: Both) -> None:
    """A change, a delete and a new row (the cursor moves for the changed and new rows)."""
    both.sql(f"UPDATE {both.table} SET v = 'A', amount = NULL, ts = %s WHERE id = 1", (t(8),))
    both.sql(f"DELETE FROM {both.table} WHERE id = 3")
    both.sql(f"INSERT INTO {both.table} VALUES (7,'g',7.00,%s)", (t(8),))


def test_the_session_refuses_the_classic_merge_confs_as_serverless_does(
    source_db,
    sail,  # noqa: F811 - the fixture imported above
    tmp_path,
):
    """The guard bites: the classic-mode MERGE sets its confs and fails on it; the
    serverless-mode load of the same attempt's rows sets none."""
    both = _both(source_db, sail, tmp_path, serverless=False)
    _seed(both)
    both.check(*both.load())  # a first load is a DataFrame write: writer options only
    _edit(both)
    classic = both.load_spark()
    assert isinstance(classic, Exception) and "CONFIG_NOT_AVAILABLE" in str(classic)
    assert both.sail.refused == ["spark.databricks.delta.commitInfo.userMetadata"]
    both.spark_options = {"merge_marker": True}
    both.sail.refused.clear()
    both.check(*both.load())
    assert both.sail.refused == []


def test_a_serverless_merge_is_named_by_a_marker_and_an_unrecorded_one_is_reconciled(
    source_db,
    sail,  # noqa: F811 - the fixture imported above
    tmp_path,
):
    both = _both(source_db, sail, tmp_path)
    _seed(both)
    both.check(*both.load())  # attempt 1: CREATE TABLE AS SELECT, named by its writer options
    _edit(both)
    # Attempt 2: the MERGE, then its marker. Rows written (2 upserted) come from the MERGE's
    # commit: the marker's would be 0 and differ from the Arrow engine's.
    arrow, spark = both.load()
    both.check(arrow, spark)
    assert spark.rows_written == arrow.rows_written == 2
    assert _history(both) == [
        (2, "WRITE", "2"),  # the marker
        (1, "MERGE", None),  # the MERGE carries no attempt on serverless
        (0, "CREATE TABLE AS SELECT", "1"),
    ]
    assert both.sail.answered.count("empty append") >= 1 and both.sail.refused == []
    # Attempt 2's success never reached the control database: attempt 3 reads nothing and
    # reports attempt 2's marker, on both engines.
    both.sql(f"INSERT INTO {both.table} VALUES (8,'h',8.00,%s)", (t(9),))
    arrow, spark = both.load_each(**{RECORDED_METADATA_ID_PARAM: 1})
    assert spark.reconciled == UnrecordedCommit(2, 2)
    assert arrow.reconciled is not None and arrow.reconciled.metadata_id == 2
    assert spark.rows_read == arrow.rows_read == 0
    assert _history(both)[0][0] == 2  # nothing written


@pytest.mark.parametrize("serverless", [False, True], ids=["classic", "serverless"])
def test_the_fence_before_the_merge_is_the_same_in_both_modes(
    source_db,
    sail,  # noqa: F811 - the fixture imported above
    tmp_path,
    monkeypatch,
    serverless,
):
    """While attempt 3 reads, attempt 4 commits (its marker, a real commit with attempt 4's
    writer options). Attempt 3 must stop before its MERGE, saying it committed nothing, in either
    mode; the destination stays at attempt 4's commit."""
    # Classic mode on Sail as it is: its MERGE sets the confs (which Sail ignores).
    both = _both(source_db, sail, tmp_path, serverless=serverless, guard=serverless)
    _seed(both)
    both.check(*both.load())
    both.check(*both.load())
    plan_write = lsp._upsert_or_append

    def newer_attempt_commits_meanwhile(spec, target, *args, **kwargs):
        newer = dataclasses.replace(spec, metadata_id=spec.metadata_id + 1)
        commits.mark_merge(both.sail, target, newer, "merge")
        return plan_write(spec, target, *args, **kwargs)

    monkeypatch.setattr(lsp, "_upsert_or_append", newer_attempt_commits_meanwhile)
    _edit(both)
    with pytest.raises(
        StaleAttempt, match="attempt 4 .* attempt 3 was loading.* committed nothing"
    ):
        both.load_spark()
    assert _history(both)[0][1:] == ("WRITE", "4")  # attempt 4's commit, nothing after it


def test_a_marker_overtaken_by_a_newer_attempt_fails_saying_the_merge_committed(
    source_db,
    sail,  # noqa: F811 - the fixture imported above
    tmp_path,
    monkeypatch,
):
    """The check after the write: attempt 4 commits between attempt 3's MERGE and its marker,
    and Delta skips attempt 3's marker by its lower ``txnVersion`` (what Sail cannot do, so the
    marker is left out here). Unlike classic compute, where Delta skips the MERGE itself, the
    MERGE has committed: the failure says so instead of "committed nothing"."""
    both = _both(source_db, sail, tmp_path)
    _seed(both)
    both.check(*both.load())
    both.check(*both.load())

    def newer_attempt_marks_first(spark, target, spec, strategy):
        newer = dataclasses.replace(spec, metadata_id=spec.metadata_id + 1)
        commits.mark_merge(spark, target, newer, strategy)  # attempt 3's marker: skipped

    monkeypatch.setattr(writes, "mark_merge", newer_attempt_marks_first)
    _edit(both)
    with pytest.raises(StaleAttempt, match="attempt 4 .* MERGE had committed, unnamed") as failed:
        both.load_spark()
    assert "committed nothing" not in str(failed.value)
    assert [h[1:] for h in _history(both)[:2]] == [("WRITE", "4"), ("MERGE", None)]


class _Crash(BaseException):
    """The process dies between the MERGE and its marker (nothing in the engine catches it)."""


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"delete_detection": "soft", "delete_max_fraction": 1},
        {"delete_detection": "hard", "delete_max_fraction": 1},
        {"load_strategy": "scd2", "delete_max_fraction": 1},
        {"load_strategy": "scd2", "delete_detection": "soft", "delete_max_fraction": 1},
    ],
    ids=["merge", "soft-deletes", "hard-deletes", "scd2", "scd2-soft-deletes"],
)
def test_a_crash_between_the_merge_and_its_marker_is_loaded_again_to_the_same_rows(
    source_db,
    sail,  # noqa: F811 - the fixture imported above
    tmp_path,
    monkeypatch,
    params,
):
    """Attempt 2's MERGE commits and the process dies before the marker: the destination holds
    an unnamed MERGE, so attempt 3 does not take it for attempt 2's load; it reads from the
    recorded watermark again and runs the same MERGE on the same rows a second time. It must end
    with the rows the Arrow engine has after loading attempt 2 once: an upsert sets the values it
    set, a delete marks, deletes or closes only rows still live, scd2 adds a version only for a
    row that differs from the current one."""
    both = _both(source_db, sail, tmp_path, **params)
    _seed(both)
    both.check(*both.load())
    _edit(both)

    def crash(*args, **kwargs):
        raise _Crash

    monkeypatch.setattr(writes, "mark_merge", crash)
    with pytest.raises(_Crash):
        both.load_each()  # the Arrow engine loads attempt 2; the Spark engine dies after its MERGE
    monkeypatch.undo()
    merged = _history(both)
    assert [h[1:] for h in merged[:2]] == [("MERGE", None), ("CREATE TABLE AS SELECT", "1")]
    # Attempt 3 on the Spark engine: attempt 1 is the last recorded, the watermark is its own.
    merges = len([m for m in both.logged if m.startswith("running: MERGE")])
    again = both.load_spark(**{RECORDED_METADATA_ID_PARAM: 1})
    assert not isinstance(again, Exception), again
    assert again.reconciled is None  # loaded again, not reconciled: the same MERGE ran again
    assert len([m for m in both.logged if m.startswith("running: MERGE")]) == merges + 1
    # Newest first: attempt 3's marker, the unnamed MERGEs (attempt 3's own is left out by Sail
    # when it changed nothing, as scd2's does), attempt 1's commit.
    history = [h[1:] for h in _history(both)]
    assert history[0] == ("WRITE", "3") and history[-1] == ("CREATE TABLE AS SELECT", "1")
    assert set(history[1:-1]) == {("MERGE", None)}
    want = both.rows(str(both.arrow_path))
    assert both.rows(both.sail.location(both.spark_target)) == want
    assert again.row_count == len(want)
    if params.get("delete_detection") == "soft":
        assert [dict(r)["id"] for r in want if dict(r)[DELETED_AT] is not None] == [3]
    assert both.sail.refused == []
