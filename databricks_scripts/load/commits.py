"""Exactly once on Delta, for both engines: what each commit records of the attempt that made it,
and the two rules read back from it (docs/control-database.md, "Exactly once").

Every commit of a load carries the attempt that made it: a Delta transaction id (app id
``dataloader:<config_id>``, version = ``metadata_id``) and commit metadata (:func:`commit_marks`:
the Arrow engine's ``custom_metadata``, the Spark engine's ``userMetadata`` JSON). Each engine reads
its destination's last committing attempt its own way (``DeltaTable.transaction_version`` and
``history()``; ``DESCRIBE HISTORY``); the decisions are made here, once:

- **Reconcile, before a load** (:func:`is_unrecorded`): the destination's last committing attempt is
  newer than the latest one whose success the control database recorded: that attempt committed but
  was never written back; this load reads nothing and reports it.
- **Fence, just before the commit** (:func:`stale_attempt`): another attempt of the same row
  committed while this one was reading: this one commits nothing and says so.
"""

from __future__ import annotations

from dataclasses import dataclass

from databricks_scripts.contract import KIND_STALE_ATTEMPT, RECORDED_METADATA_ID_PARAM
from databricks_scripts.failures import DataLoaderFailure
from databricks_scripts.load.columns import KEY_COLUMN_CONTROL, column_control_text
from databricks_scripts.load.params import LoadSpec

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


def app_id(spec: LoadSpec) -> str:
    """The Delta transaction app id of the row (config_id; the control_key when it is unknown)."""
    return f"{APP_ID_PREFIX}{spec.config_id if spec.config_id is not None else spec.control_key}"


def commit_marks(
    spec: LoadSpec, strategy: str, *, complete: bool = True, resumable: bool = False
) -> dict[str, str]:
    """The metadata of one commit of this attempt: which attempt, row, watermark and strategy, and
    the column lists it loaded with (names only: a change rebuilds, ``load.columns``).

    ``complete=False`` marks a commit that is not the load's last; ``resumable`` a chunk of a
    resumable first load. Without a ``metadata_id`` (a test run) only those marks are written.
    """
    marks = {} if complete else {KEY_COMPLETE: "false"}
    if resumable:
        marks[KEY_RESUMABLE] = RESUMABLE_FIRST_LOAD
    marks[KEY_COLUMN_CONTROL] = column_control_text(spec)
    if spec.metadata_id is None:
        return marks
    return {
        KEY_METADATA_ID: str(spec.metadata_id),
        KEY_CONTROL_KEY: str(spec.control_key),
        KEY_WATERMARK_BEFORE: "" if spec.incremental_value is None else spec.incremental_value,
        KEY_STRATEGY: strategy,
        **marks,
    }


@dataclass(frozen=True)
class UnrecordedCommit:
    metadata_id: int
    version: int | None  # the destination version it committed, when found in the history
    # False: the attempt died between the commits of one load (its last commit is not marked
    # complete); the next load repeats or resumes it instead of recording it.
    complete: bool = True
    # Its last commit is a chunk of a resumable first load: the next load resumes it.
    resumable: bool = False


def is_unrecorded(spec: LoadSpec, committed: int | None) -> bool:
    """True when attempt ``committed`` (the destination's last committing attempt of the row)
    committed but the control database never recorded its success.

    Only when the asset sent the latest recorded attempt (an older orchestrator sends none: no
    reconcile) and this attempt has a ``metadata_id``.
    """
    if committed is None or spec.metadata_id is None:
        return False
    if RECORDED_METADATA_ID_PARAM not in spec.extra or committed == spec.metadata_id:
        return False
    recorded = spec.extra.get(RECORDED_METADATA_ID_PARAM)
    return recorded is None or committed > int(recorded)


def stale_attempt(
    spec: LoadSpec,
    at_start: int | None,
    now: int | None,
    *,
    version: int | None = None,
    moved: bool = False,
) -> StaleAttempt | None:
    """The :class:`StaleAttempt` to raise when another attempt of the row committed since this
    load began (``at_start``: the last committing attempt then; ``now``: the newest one), else None.

    ``moved``: the same attempt as at the start committed again (a newer destination version), which
    an engine that reads versions can see; that too is another process's commit.
    """
    if spec.metadata_id is None or now is None or now == spec.metadata_id:
        return None
    if now == at_start and not moved:
        return None
    newer = now > spec.metadata_id
    where = "" if version is None else f" (version {version})"
    return StaleAttempt(
        f"attempt {now} of this table committed to the destination{where} while attempt "
        f"{spec.metadata_id} was loading"
        + (" (a newer attempt: this one is stale)" if newer else "")
        + "; this attempt committed nothing"
        + ("" if newer else f"; the next load records attempt {now}'s result")
    )
