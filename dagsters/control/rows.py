"""A ``table_control`` row as one typed value, built where the SQL reads it, and its status lifecycle.

:class:`ControlRow` has one field per column of ``table_control`` (sql/001 and the migrations that
add columns), typed as psycopg reads them: ``interval`` is a ``timedelta``, ``numeric`` a
``Decimal``, ``text[]`` a list, ``jsonb`` a dict. The SQL parts read rows with
:func:`fetch_all` / :func:`fetch_one` (a row factory, :func:`dataclass_rows`), so the code above
them reads ``row.load_strategy``, never ``row["load_strategy"]``.

Statements that return a row plus something else have their own subtype: a claim's
:class:`ClaimedRow` (its attempt's ``metadata_id``) and a failure claimed for analysis
(:class:`AnalysisClaim`). A read of some columns only has its own small type where its callers
need one (``table_listing.DeclaredTable``); the few others (a status check, a count) stay dicts.

A column the type does not know is left out (a database migrated before the code is deployed
keeps working); a column the type expects but the statement did not return is an error.

The status lifecycle of a row (``last_status``)::

    NULL (ready) -> Queued -> In Progress -> Succeeded | Failed
    Failed -> NULL (retry, retry_count + 1)      Queued -> Failed (stuck / run failed early)
    Queued -> NULL (a claim whose run was never created is released)

Plain values only: :mod:`dagsters.control.transitions` turns them into the one guarded UPDATE.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from psycopg import sql
from psycopg.rows import RowFactory, RowMaker

from databricks_scripts.contract import DbType, DeleteDetection, FailureKind, Strategy, VerifyDepth

if TYPE_CHECKING:
    import psycopg

# sql/001: last_status (NULL: ready to load).
Status = Literal["Queued", "In Progress", "Succeeded", "Failed"]
QUEUED: Literal["Queued"] = "Queued"
IN_PROGRESS: Literal["In Progress"] = "In Progress"
SUCCEEDED: Literal["Succeeded"] = "Succeeded"
FAILED: Literal["Failed"] = "Failed"
STATUSES: tuple[Status | None, ...] = (None, QUEUED, IN_PROGRESS, SUCCEEDED, FAILED)

# Which states each status may be entered from. NULL means "ready to load".
ALLOWED_FROM: dict[str | None, frozenset[str | None]] = {
    QUEUED: frozenset({None, SUCCEEDED, FAILED}),
    IN_PROGRESS: frozenset({QUEUED}),
    SUCCEEDED: frozenset({IN_PROGRESS}),
    FAILED: frozenset({QUEUED, IN_PROGRESS}),
    None: frozenset({FAILED, QUEUED}),
}

# A row whose values the code cannot compute with (sql/012's bounds broken where its CHECKs are
# not in force) is failed from whatever state it is in, so no sensor tick stops on it
# (dagsters/control/uncomputable.py); only that statement may use these.
UNCOMPUTABLE_FROM: frozenset[str | None] = frozenset(STATUSES)

ANY_ALLOWED: Any = object()  # "use the lifecycle's allowed predecessor states"


def expected_states(status: str | None, expected_status: Any) -> set[str | None]:
    """The states a row may be in before entering ``status``.

    ``expected_status`` is :data:`ANY_ALLOWED` (every state the lifecycle allows), one status or
    None, or a collection of them.
    """
    if status not in ALLOWED_FROM:
        raise ValueError(f"unknown status {status!r}; expected one of {STATUSES}")
    if expected_status is ANY_ALLOWED:
        return set(ALLOWED_FROM[status])
    if expected_status is None or isinstance(expected_status, str):
        return {expected_status}
    return set(expected_status)


# sql/017: what a source schema change may do (contract.SCHEMA_CHANGES).
SchemaChange = Literal["evolve", "freeze", "discard_new"]

R = TypeVar("R")
Query = str | bytes | sql.SQL | sql.Composed


@dataclass(frozen=True, kw_only=True)
class ControlRow:
    """One ``table_control`` row, every column (``tests/control/test_control_rows.py`` holds them equal)."""

    config_id: int
    control_key: str
    source_catalog: str | None
    source_schema_name: str | None
    source_table_name: str
    destination_catalog: str
    destination_schema_name: str
    destination_table_name: str
    db_type: DbType
    db_config_value: dict[str, Any]
    db_kv_scope: str | None
    load_strategy: Strategy
    incremental_column: str | None
    incremental_value: str | None
    merge_keys: list[str] | None
    lookback_window: timedelta
    is_active: bool
    schedule_cron: str | None
    schedule_timezone: str
    schedule_interval: timedelta | None
    next_load_date_time: datetime | None
    force_full_reload: bool
    last_status: Status | None
    last_status_date_time: datetime | None
    last_load_date_time: datetime | None
    last_dagster_run: str | None
    last_databricks_run: str | None
    last_message: str | None
    last_metadata_id: int | None
    retry_count: int
    needs_review: bool
    retry_analysis_requested_at: datetime | None
    staging_model_processed: bool
    created_at: datetime
    updated_at: datetime
    connection_name: str | None
    delete_detection: DeleteDetection
    delete_max_fraction: Decimal
    jdbc_partition_column: str | None
    jdbc_num_partitions: int | None
    verify_depth: VerifyDepth
    last_failure_kind: FailureKind | None
    last_failure_code: str | None
    columns_exclude: list[str] | None
    columns_hash: list[str] | None
    schema_change: SchemaChange


@dataclass(frozen=True, kw_only=True)
class ClaimedRow(ControlRow):
    """A claimed row (now Queued) and its new attempt: the history row ``metadata_id``."""

    metadata_id: int

    @classmethod
    def of(cls, row: ControlRow, metadata_id: int) -> ClaimedRow:
        """``row`` as the claimed row of attempt ``metadata_id``."""
        return cls(**control_values(row), metadata_id=metadata_id)


@dataclass(frozen=True, kw_only=True)
class AnalysisClaim(ControlRow):
    """A Failed row claimed for a retry analysis, and the stamp of an earlier claim that never
    decided (None: the first claim of this failure)."""

    previous_analysis_requested_at: datetime | None


def control_values(row: ControlRow) -> dict[str, Any]:
    """The control row's own columns as a dict (shallow: lists and dicts are the row's)."""
    return {f.name: getattr(row, f.name) for f in fields(ControlRow)}


def dataclass_rows(cls: type[R]) -> RowFactory[R]:
    """A psycopg row factory building ``cls`` from the columns it has fields for (by name)."""
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]

    def factory(cursor: Any) -> RowMaker[R]:
        description = cursor.description or []
        picked = [(i, c.name) for i, c in enumerate(description) if c.name in names]

        def make(values: Sequence[Any]) -> R:
            return cls(**{name: values[i] for i, name in picked})

        return make

    return factory


def fetch_all(
    conn: psycopg.Connection[Any], cls: type[R], query: Query, params: Any = None
) -> list[R]:
    """Every row ``query`` returns, each as a ``cls``."""
    with conn.cursor(row_factory=dataclass_rows(cls)) as cur:
        return cur.execute(query, params).fetchall()


def fetch_one(
    conn: psycopg.Connection[Any], cls: type[R], query: Query, params: Any = None
) -> R | None:
    """The first row ``query`` returns as a ``cls``, or None."""
    with conn.cursor(row_factory=dataclass_rows(cls)) as cur:
        return cur.execute(query, params).fetchone()
