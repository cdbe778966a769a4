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
from pathlib import Path
from typing import TYPE_CHECKING, Any

from databricks_scripts.contract import RECORDED_METADATA_ID_PARAM
from databricks_scripts.load.commits import (
    KEY_COMPLETE,
    KEY_METADATA_ID,
    KEY_RESUMABLE,
    RESUMABLE_FIRST_LOAD,
    UnrecordedCommit,
    app_id,
    commit_marks,
    is_unrecorded,
    stale_attempt,
)
from databricks_scripts.load.params import LoadSpec

if TYPE_CHECKING:  # deltalake is imported where it is used
    from deltalake import CommitProperties, DeltaTable


def commit_properties(
    spec: LoadSpec, strategy: str, *, complete: bool = True, resumable: bool = False
) -> CommitProperties:
    """CommitProperties naming this attempt (``load.commits.commit_marks``) and, with a
    ``metadata_id``, its Delta transaction id."""
    from deltalake import CommitProperties, Transaction

    marks = commit_marks(spec, strategy, complete=complete, resumable=resumable)
    if spec.metadata_id is None:
        return CommitProperties(custom_metadata=marks)
    return CommitProperties(
        custom_metadata=marks,
        app_transactions=[Transaction(app_id(spec), int(spec.metadata_id))],
    )


def committed_attempt(table: DeltaTable | None, spec: LoadSpec) -> int | None:
    """metadata_id of the last attempt of this row that committed to ``table`` (None: none)."""
    if table is None:
        return None
    version = table.transaction_version(app_id(spec))
    return None if version is None else int(version)


def unrecorded_commit(table: DeltaTable | None, spec: LoadSpec) -> UnrecordedCommit | None:
    """The attempt that committed to ``table`` without its success being recorded, if any."""
    if table is None or spec.metadata_id is None or RECORDED_METADATA_ID_PARAM not in spec.extra:
        return None
    committed = committed_attempt(table, spec)
    if committed is None or not is_unrecorded(spec, committed):
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


def _last_commit_of(table: DeltaTable, metadata_id: int, limit: int = 200) -> dict[str, Any] | None:
    """The newest commit (history entry) of attempt ``metadata_id`` among the last ``limit``:
    one of its writes, never a maintenance commit carrying the same metadata."""
    for commit in table.history(limit):
        if str(commit.get("operation") or "").upper().startswith(_MAINTENANCE):
            continue
        if commit.get(KEY_METADATA_ID) == str(metadata_id):
            return commit
    return None


def check_still_current(destination: Path, spec: LoadSpec, committed_at_start: int | None) -> None:
    """Raise :class:`StaleAttempt` when another attempt of the row committed since the load began
    (``load.commits.stale_attempt``). Reads the destination's newest state (not the snapshot the
    load started from)."""
    if spec.metadata_id is None:
        return
    stale = stale_attempt(
        spec, committed_at_start, committed_attempt(_open_latest(destination), spec)
    )
    if stale is not None:
        raise stale


def _open_latest(destination: Path) -> DeltaTable | None:
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
