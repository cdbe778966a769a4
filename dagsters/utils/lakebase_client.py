"""Client for the Lakebase control database: control rows, their status lifecycle, load history.

Status lifecycle of a control row (``last_status``)::

    NULL (ready) -> Queued -> In Progress -> Succeeded | Failed
    Failed -> NULL (retry, retry_count + 1)      Queued -> Failed (stuck / run failed early)

Every status change goes through :func:`dagsters.control.transitions.guarded_transition`, one
UPDATE whose WHERE clause names the state it expects (and, for a running load, the history row
it belongs to), so when two actors race exactly one wins and the others get ``False``.

Values are always bound parameters; identifiers are composed with :mod:`psycopg.sql`.
Messages written to the database or raised are redacted first.

:class:`LakebaseClient` is this path's public face (the spec names it); its SQL lives in
``dagsters/control/``, one module per reason to change:

=================================  ===========================================================
``control/connection.py``          the pool, one transaction per operation, redacted errors
``control/rows.py``                ``ControlRow`` (a typed control row), the status lifecycle
``control/transitions.py``         the one guarded status UPDATE; next schedule slot
``control/claims.py``              due rows, control keys, claims and manual reruns (sensors, UI)
``control/lifecycle.py``           start, success, failure, run links of one attempt
``control/history.py``             ``historical_metadata`` inserts, updates, reads
``control/stuck.py``               rows stuck in Queued / In Progress (the two monitors)
``control/retry_state.py``         claim a failure for analysis; reset for retry or review
``control/landing_notes.py``       rows waiting for a staging model, the landing note
``control/source_connections.py``  a row's source: its connection, or its secret's binding
``control/source_slots.py``        claims bounded by free per-source slots; one stuck queued row
``control/retention.py``           batched deletes of history rows older than the retention
``control/review_release.py``      release a reviewed row (job / CLI), no hand-written SQL
``control/reconcile.py``           a commit whose success was not recorded: read and record it
``control/uncomputable.py``        fail rows whose values the sensors cannot compute with
=================================  ===========================================================
"""

from __future__ import annotations

from dagsters.control.claims import ClaimsSql
from dagsters.control.errors import LakebaseError, LoadAlreadyActive, UnknownControlKey
from dagsters.control.history import METADATA_FIELDS, HistorySql
from dagsters.control.landing_notes import LANDING_NOTE_SEPARATOR, LandingSql
from dagsters.control.lifecycle import LifecycleSql
from dagsters.control.reconcile import ReconcileSql
from dagsters.control.retention import RetentionSql
from dagsters.control.retry_state import (
    DEFAULT_ANALYSIS_TIMEOUT_MINUTES,
    RETRY_MARKER,
    REVIEW_MARKER,
    RetrySql,
)
from dagsters.control.review_release import ReviewReleaseSql
from dagsters.control.rows import (
    ALLOWED_FROM,
    FAILED,
    IN_PROGRESS,
    QUEUED,
    STATUSES,
    SUCCEEDED,
)
from dagsters.control.source_connections import SourceConnectionsSql
from dagsters.control.source_slots import SourceSlotsSql
from dagsters.control.stuck import StuckRowsSql
from dagsters.control.table_listing import TableListingSql
from dagsters.control.uncomputable import UncomputableRowsSql

__all__ = [
    "ALLOWED_FROM",
    "DEFAULT_ANALYSIS_TIMEOUT_MINUTES",
    "FAILED",
    "IN_PROGRESS",
    "LANDING_NOTE_SEPARATOR",
    "METADATA_FIELDS",
    "QUEUED",
    "RETRY_MARKER",
    "REVIEW_MARKER",
    "STATUSES",
    "SUCCEEDED",
    "LakebaseClient",
    "LakebaseError",
    "LoadAlreadyActive",
    "UnknownControlKey",
]


class LakebaseClient(
    ClaimsSql,
    LifecycleSql,
    HistorySql,
    StuckRowsSql,
    RetrySql,
    LandingSql,
    SourceConnectionsSql,
    SourceSlotsSql,
    RetentionSql,
    ReviewReleaseSql,
    ReconcileSql,
    TableListingSql,
    UncomputableRowsSql,
):
    """Pooled access to ``table_control`` (rows as ``ControlRow``) and ``historical_metadata``.

    ``LakebaseClient(conninfo, *, min_size=1, max_size=4, connect_kwargs=None,
    connection_class=None, timeout=30.0)``; every part shares the one pool of
    :class:`dagsters.control.connection.ControlDatabase`.
    """
