"""Which load attempt made a Delta commit: recorded in the commit, read back before every load.

Every commit the Arrow engine makes carries the attempt that made it, twice:

- a Delta *transaction id* (``txn`` action, app id ``dataloader:<config_id>``, version =
  ``metadata_id``), kept in the table's snapshot, so the last attempt that committed is known
  from the table state alone (``DeltaTable.transaction_version``);
- commit metadata (``dataloader.metadata_id``, ``dataloader.control_key``,
  ``dataloader.watermark_before``, ``dataloader.strategy``), readable with ``DESCRIBE HISTORY`` /
  ``DeltaTable.history()`` by a person.

Two checks use it (docs/control-database.md, "Exactly once"):

- **Reconcile, before a load.** The asset sends the latest attempt whose success the control
  database recorded (``contract.RECORDED_METADATA_ID_PARAM``). When the destination's last
  committing attempt is newer, that attempt committed but its success was never written back (the
  control database was unreachable): this load reads nothing and reports that attempt and the
  destination's watermark, and the asset records them.
- **Fence, just before the commit.** When another attempt of the same row committed while this
  one was reading, this one commits nothing and says so: two loads of one table never both commit.

A load may make several commits (a chunked upsert, a resumable first load; docs/loader.md). Each is
fenced and named the same way; every commit but a load's last carries ``dataloader.complete =
false``, so an attempt that died between two commits is not taken for a finished one: the next load
repeats the upsert, or resumes the first load (``dataloader.resumable``) from the destination's
max(cursor), instead of reconciling.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from databricks_scripts.contract import KIND_STALE_ATTEMPT, RECORDED_METADATA_ID_PARAM
from databricks_scripts.failures import DataLoaderFailure
from databricks_scripts.load.columns import KEY_COLUMN_CONTROL, column_control_text

APP_ID_PREFIX = "dataloader:"
KEY_METADATA_ID = "dataloader.metadata_id"
KEY_CONTROL_KEY = "dataloader.control_key"
KEY_WATERMARK_BEFORE = "dataloader.watermark_before"
KEY_STRATEGY = "dataloader.strategy"
# Multi-commit loads: "false" on every commit but the load's last (absent: a complete load).
KEY_COMPLETE = "dataloader.complete"
# Resumable first load: "first_load" on each of its chunk commits. Chunks are committed in cursor
# order, so the destination's max(cursor) is the watermark the load reached.
KEY_RESUMABLE = "dataloader.resumable"
RESUMABLE_FIRST_LOAD = "first_load"


class StaleAttempt(DataLoaderFailure, RuntimeError):
    """Another attempt of the same row committed while this one ran: nothing was committed."""

    kind = KIND_STALE_ATTEMPT

    step = "check attempt before commit"


def app_id(spec: Any) -> str:
    """The Delta transaction app id of the row (config_id; the control_key when it is unknown)."""
    return f"{APP_ID_PREFIX}{spec.config_id if spec.config_id is not None else spec.control_key}"


def commit_properties(spec: Any, strategy: str, *, complete: bool = True, resumable: bool = False):
    """CommitProperties naming this attempt and the column lists it loaded with.

    ``complete=False`` marks a commit that is not the load's last; ``resumable`` a chunk of a
    resumable first load. Without a ``metadata_id`` (a test run) only those marks and the column
    lists are written.
    """
    from deltalake import CommitProperties, Transaction

    marks = {} if complete else {KEY_COMPLETE: "false"}
    if resumable:
        marks[KEY_RESUMABLE] = RESUMABLE_FIRST_LOAD
    # Which columns were left out and hashed (names only): a change rebuilds (load.columns).
    marks[KEY_COLUMN_CONTROL] = column_control_text(spec)
    if spec.metadata_id is None:
        return CommitProperties(custom_metadata=marks)
    return CommitProperties(
        custom_metadata={
            KEY_METADATA_ID: str(spec.metadata_id),
            KEY_CONTROL_KEY: str(spec.control_key),
            KEY_WATERMARK_BEFORE: "" if spec.incremental_value is None else spec.incremental_value,
            KEY_STRATEGY: strategy,
            **marks,
        },
        app_transactions=[Transaction(app_id(spec), int(spec.metadata_id))],
    )


def committed_attempt(table: Any, spec: Any) -> int | None:
    """metadata_id of the last attempt of this row that committed to ``table`` (None: none)."""
    if table is None:
        return None
    version = table.transaction_version(app_id(spec))
    return None if version is None else int(version)


@dataclass(frozen=True)
class UnrecordedCommit:
    metadata_id: int
    version: int | None  # the destination version it committed, when found in the history
    # False: the attempt died between the commits of one load (its last commit is not marked
    # complete); the next load repeats or resumes it instead of recording it.
    complete: bool = True
    # Its last commit is a chunk of a resumable first load: the next load resumes it.
    resumable: bool = False


def unrecorded_commit(table: Any, spec: Any) -> UnrecordedCommit | None:
    """The attempt that committed to ``table`` without its success being recorded, if any."""
    if table is None or spec.metadata_id is None or RECORDED_METADATA_ID_PARAM not in spec.extra:
        return None
    committed = committed_attempt(table, spec)
    recorded = spec.extra.get(RECORDED_METADATA_ID_PARAM)
    if committed is None or committed == spec.metadata_id:
        return None
    if recorded is not None and committed <= int(recorded):
        return None
    commit = _last_commit_of(table, committed)
    if commit is None:
        return UnrecordedCommit(committed, None)
    return UnrecordedCommit(
        committed,
        int(commit["version"]),
        complete=commit.get(KEY_COMPLETE) != "false",
        resumable=commit.get(KEY_RESUMABLE) == RESUMABLE_FIRST_LOAD,
    )


# Table maintenance never carries a load, even when it was given the metadata of one (an
# OPTIMIZE run with a load's commit properties, or by a writer that copies them).
_MAINTENANCE = ("OPTIMIZE", "VACUUM", "RESTORE", "FSCK")


def _last_commit_of(table: Any, metadata_id: int, limit: int = 200) -> dict | None:
    """The newest commit (history entry) of attempt ``metadata_id`` among the last ``limit``:
    one of its writes, never a maintenance commit carrying the same metadata."""
    for commit in table.history(limit):
        if str(commit.get("operation") or "").upper().startswith(_MAINTENANCE):
            continue
        if commit.get(KEY_METADATA_ID) == str(metadata_id):
            return commit
    return None


def check_still_current(destination: Path, spec: Any, committed_at_start: int | None) -> None:
    """Raise :class:`StaleAttempt` when another attempt of the row committed since the load began.

    Reads the destination's newest state (not the snapshot the load started from).
    """
    if spec.metadata_id is None:
        return
    now = committed_attempt(_open_latest(destination), spec)
    if now == committed_at_start or now == spec.metadata_id:
        return
    newer = now is not None and now > spec.metadata_id
    raise StaleAttempt(
        f"attempt {now} of this table committed to the destination while attempt "
        f"{spec.metadata_id} was loading"
        + (" (a newer attempt: this one is stale)" if newer else "")
        + "; this attempt committed nothing"
        + ("" if newer else f"; the next load records attempt {now}'s result")
    )


def _open_latest(destination: Path):
    """The destination's newest state, or None when there is no Delta table there."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    if not destination.exists():
        return None
    try:
        return DeltaTable(str(destination))
    except TableNotFoundError:
        return None


def fenced(batches: Iterator[Any], load: Any) -> Iterator[Any]:
    """``batches``, then the fencing check: the last thing before the writer commits.

    ``load`` has ``stop``, ``destination``, ``spec``, ``committed_at_start`` and ``stream_error``
    (engines.arrow.engine._Load). Every commit of a load goes through this, each one fenced.
    """
    try:
        for batch in batches:
            if load.stop is not None:
                load.stop.check()
            yield batch
        # Called from inside delta-rs's writer, whose async runtime cannot be re-entered to open
        # the table: the check runs on a thread of its own.
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1, thread_name_prefix="fence") as pool:
            pool.submit(
                check_still_current, load.destination, load.spec, load.committed_at_start
            ).result()
        if load.stop is not None:
            load.stop.enter_commit()
    except BaseException as exc:
        load.stream_error = exc
        raise


@contextmanager
def stream_errors(load: Any) -> Iterator[None]:
    """Re-raise the error a consumed stream raised (delta-rs reports it as its own, retyped)."""
    try:
        yield
    except Exception:
        if load.stream_error is not None:
            raise load.stream_error from None
        raise
