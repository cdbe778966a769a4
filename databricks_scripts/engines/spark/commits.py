"""The Spark engine's side of "exactly once": commits that name their attempt, read back.

The Arrow engine's rules (``engines.arrow.commits``), expressed for Databricks:

- every write names its attempt in its own commit: a JSON ``userMetadata`` (``dataloader.metadata_id``,
  ``dataloader.control_key``, ``dataloader.watermark_before``, ``dataloader.strategy``), visible in
  ``DESCRIBE HISTORY``, and Delta's idempotent-write pair ``txnAppId`` = the control row,
  ``txnVersion`` = the attempt's ``metadata_id`` (Delta skips a write whose version is not above the
  last one the table recorded for that app id: a stale or repeated attempt commits nothing). A
  DataFrame write carries them as writer options (engines.spark.writes); a SQL ``MERGE`` has none.
  On classic compute it runs with the SQL configurations Databricks documents for them
  (``spark.databricks.delta.commitInfo.userMetadata``, ``spark.databricks.delta.write.txnAppId`` /
  ``txnVersion``), set for that one statement and cleared after it: never for the session.
  Serverless lets a job set none of them, so there the MERGE runs with no configuration and is
  followed by a *marker commit* (:func:`mark_merge`): an empty append to the same table carrying
  the writer options, which Delta records as a ``WRITE`` commit (its ``txn`` action makes it one:
  Delta leaves out an empty append only when it has no action at all);
- only our write operations count as ours: an ``OPTIMIZE`` (auto compaction runs inside the
  MERGE's statement, so it carries the same metadata) or any other operation never does;
- before a load, the newest commit of the destination that carries a ``dataloader.metadata_id``
  is compared with the attempt the control database last recorded: a newer one is recorded
  instead of loaded again (reconcile);
- just before the write statement, the same read tells whether another attempt of the row
  committed since this load began (fencing). On Spark the statement reads the source and commits
  in one go, so the check runs before it, and again after it: Delta skips the write of an attempt
  older than one that committed meanwhile (``txnVersion``), which the second check reports. On
  serverless only the marker can be skipped: the MERGE before it has committed, and the second
  check says so (:func:`check_still_current`);
- a keyed table's load that runs as a full (its first load) checks that the keys are set and
  unique before it writes;
- on SIGINT/SIGTERM (locally: on Databricks the script installs no handler) the load's Spark
  jobs (one job tag) are cancelled; an aborted Delta write commits nothing and its files are
  unreferenced (removed by VACUUM).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from databricks_scripts.failures import DataMismatch
from databricks_scripts.load.commits import (
    KEY_METADATA_ID,
    StaleAttempt,
    UnrecordedCommit,
    app_id,
    commit_marks,
    is_unrecorded,
    stale_attempt,
)

USER_METADATA_CONF = "spark.databricks.delta.commitInfo.userMetadata"
TXN_APP_ID_CONF = "spark.databricks.delta.write.txnAppId"
TXN_VERSION_CONF = "spark.databricks.delta.write.txnVersion"
HISTORY_LIMIT = 50
# The DESCRIBE HISTORY operations of our writes (CREATE [OR REPLACE] TABLE AS SELECT, INSERT /
# DataFrame append or overwrite, MERGE). OPTIMIZE, VACUUM, ALTER ... never carry a load.
OUR_OPERATIONS = (
    "WRITE",
    "CREATE TABLE AS SELECT",
    "CREATE OR REPLACE TABLE AS SELECT",
    "REPLACE TABLE AS SELECT",
    "MERGE",
)
from databricks_scripts.load.params import LoadSpec


def user_metadata(spec: LoadSpec, strategy: str) -> str:
    """The JSON ``userMetadata`` of this attempt's commit (``load.commits.commit_marks``)."""
    return json.dumps(commit_marks(spec, strategy), sort_keys=True)


def write_options(spec: LoadSpec, strategy: str) -> dict[str, str]:
    """Writer options of a DataFrame write: this attempt's ``userMetadata`` and, with a
    ``metadata_id``, the idempotent-write pair keyed on the row and the attempt."""
    if spec.metadata_id is None:
        return {}
    return {
        "userMetadata": user_metadata(spec, strategy),
        "txnAppId": app_id(spec),  # the row (the Arrow engine's app id)
        "txnVersion": str(int(spec.metadata_id)),
    }


def statement_confs(spec: LoadSpec, strategy: str) -> dict[str, str]:
    """The same, as the SQL configurations a SQL ``MERGE`` reads (it takes no writer options)."""
    options = write_options(spec, strategy)
    if not options:
        return {}
    return {
        USER_METADATA_CONF: options["userMetadata"],
        TXN_APP_ID_CONF: options["txnAppId"],
        TXN_VERSION_CONF: options["txnVersion"],
    }


def mark_merge(spark: Any, target: str, spec: LoadSpec, strategy: str) -> None:
    """The marker commit naming the MERGE just run on ``target`` (serverless, where the MERGE
    cannot carry the attempt itself): an empty append with this attempt's writer options.

    It comes after the MERGE, never before: a crash between the two leaves an unnamed MERGE,
    which the row's next attempt does not take for a committed load; it loads again from the
    recorded watermark and upserts the same rows, which changes nothing a second time (a MERGE
    by key sets the values it set; delete detection only marks, deletes or closes rows still live;
    scd2 adds a version only for a row that differs from the current one). A marker before the
    MERGE would name a load that never happened, which the next attempt would record as done.

    Delta records the append (``WRITE``) because the idempotent-write pair adds a ``txn`` action
    to it, and skips it, like any write, when a newer attempt's ``txnVersion`` is recorded.
    Without a ``metadata_id`` (a test run) there is nothing to name: no marker.
    """
    options = write_options(spec, strategy)
    if not options:
        return
    empty = spark.sql(f"SELECT * FROM {target} LIMIT 0")
    empty.writeTo(target).options(**options).append()


def is_our_operation(operation: Any) -> bool:
    return str(operation or "").upper().strip() in OUR_OPERATIONS


def last_dataloader_commit(history: Iterable[Mapping[str, Any]]) -> UnrecordedCommit | None:
    """The newest commit in ``history`` (DESCRIBE HISTORY rows) made by a DataLoader attempt:
    one of our write operations carrying an attempt's metadata (an ``OPTIMIZE`` with the same
    metadata, as auto compaction after a MERGE leaves, is not)."""
    best: UnrecordedCommit | None = None
    for row in history:
        if not is_our_operation(row.get("operation")):
            continue
        try:
            meta = json.loads(row.get("userMetadata") or "")
            metadata_id = int(meta[KEY_METADATA_ID])
        except (ValueError, TypeError, KeyError):
            continue
        version = int(row["version"])
        if best is None or (best.version is not None and version > best.version):
            best = UnrecordedCommit(metadata_id, version)
    return best


def read_last_commit(spark: Any, target: str) -> UnrecordedCommit | None:
    rows = spark.sql(f"DESCRIBE HISTORY {target} LIMIT {HISTORY_LIMIT}").collect()
    return last_dataloader_commit(r.asDict() for r in rows)


def unrecorded(spec: LoadSpec, last: UnrecordedCommit | None) -> UnrecordedCommit | None:
    """``last`` when it is an attempt whose success the control database did not record."""
    return last if last is not None and is_unrecorded(spec, last.metadata_id) else None


def check_still_current(
    spec: LoadSpec,
    at_start: UnrecordedCommit | None,
    now: UnrecordedCommit | None,
    *,
    merged: bool = False,
) -> None:
    """Raise :class:`StaleAttempt` when another attempt committed since the load began
    (``load.commits.stale_attempt``; a new version of the same attempt counts too).

    ``merged``: the check after a serverless MERGE, which committed before its marker: when the
    marker was skipped for a newer attempt, the failure says the MERGE's rows are in the table.
    """
    if now is None:
        return
    stale = stale_attempt(
        spec,
        None if at_start is None else at_start.metadata_id,
        now.metadata_id,
        version=now.version,
        moved=at_start is not None and now != at_start,
    )
    if stale is None:
        return
    if merged:
        raise StaleAttempt(
            f"attempt {now.metadata_id} of this table committed to the destination (version "
            f"{now.version}) while attempt {spec.metadata_id} was loading; on serverless a MERGE "
            "cannot carry its attempt, so this attempt's MERGE had committed, unnamed, before "
            "its marker commit was skipped or overtaken: its rows are in the destination. A full "
            "reload of the row (force_full_reload) replaces them with the source's current rows"
        )
    raise stale


@contextmanager
def commit_named(spark: Any, spec: LoadSpec, strategy: str) -> Iterator[None]:
    """The one SQL ``MERGE`` run inside carries this attempt's userMetadata and idempotent-write
    pair (:func:`statement_confs`); all are cleared when it ends, whatever happens. Classic
    compute only: serverless refuses these configurations (the MERGE is named by
    :func:`mark_merge` there, engines.spark.writes.run_write)."""
    confs = statement_confs(spec, strategy)
    try:
        for name, value in confs.items():
            spark.conf.set(name, value)
        yield
    finally:
        for name in confs:
            spark.conf.unset(name)


def key_check_sql(view: str, keys: Iterable[str]) -> str:
    """One row: how many rows have a NULL key, how many key values occur more than once."""
    quoted = [f"`{k.replace('`', '``')}`" for k in keys]
    any_null = " OR ".join(f"{q} IS NULL" for q in quoted)
    return (
        f"SELECT (SELECT count(*) FROM {view} WHERE {any_null}) AS null_keys,"
        f" (SELECT count(*) FROM (SELECT {', '.join(quoted)} FROM {view}"
        f" WHERE NOT ({any_null}) GROUP BY {', '.join(quoted)} HAVING count(*) > 1)) AS dup_keys"
    )


def check_keys(spark: Any, view: str, keys: Iterable[str]) -> None:
    """Refuse NULL or duplicate merge keys in the rows of ``view`` (before anything is written)."""
    keys = list(keys)
    row = spark.sql(key_check_sql(view, keys)).collect()[0]
    if row["null_keys"]:
        raise DataMismatch(
            f"merge keys {keys} are NULL in {row['null_keys']} source row(s); keys must be set"
        )
    if row["dup_keys"]:
        raise DataMismatch(
            f"merge keys {keys} are not unique in the source rows read "
            f"({row['dup_keys']} duplicated key(s))"
        )


def tag_jobs(spark: Any, tag: str) -> tuple[Callable, Callable] | None:
    """Tag the Spark jobs this thread starts with ``tag``: (cancel, remove) for it, or None where
    the session has no job tags. The cancel works from any thread (the stop watcher's).

    A classic session (Spark 3.5 on Databricks Runtime 15.4 LTS, 4.x): the SparkContext's
    ``addJobTag`` / ``cancelJobsWithTag`` / ``removeJobTag`` (a classic ``spark.addTag`` is
    cancelled only from the thread that added it). Spark Connect (serverless, standard access
    mode) has no SparkContext: ``spark.addTag`` / ``interruptTag`` / ``removeTag``.
    """
    try:
        context = spark.sparkContext  # absent on Spark Connect
    except Exception:  # noqa: BLE001 - Spark Connect: the session's own tags
        context = None
    try:
        if context is not None:
            context.addJobTag(tag)
            return context.cancelJobsWithTag, context.removeJobTag
        spark.addTag(tag)
    except Exception:  # noqa: BLE001 - a session without job tags
        return None
    return spark.interruptTag, spark.removeTag


@contextmanager
def cancellable(spark: Any, stop: Any | None) -> Iterator[None]:
    """Run the load's Spark jobs under one job tag, which a stop signal cancels.

    A tag, never a job group: on Databricks the job group belongs to the platform (its run, its
    cancel) and ``setJobGroup`` would replace it; tags are added beside it. A session without tags
    runs the load untagged.
    """
    tag = f"dataloader-{uuid.uuid4().hex[:12]}"
    tagged = tag_jobs(spark, tag)
    if tagged is None:
        yield
        return
    cancel_tag, remove = tagged

    def cancel() -> int:
        cancel_tag(tag)
        return 0  # an aborted Delta write leaves only unreferenced files (VACUUM removes them)

    if stop is not None:
        stop.on_stop(cleanup=cancel)
    try:
        yield
    finally:
        remove(tag)
