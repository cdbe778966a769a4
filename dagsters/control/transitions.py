"""The one guarded status transition, and what every finished transition also writes.

Every status change of a control row goes through :func:`guarded_transition`: one UPDATE whose
WHERE clause names the state it expects (and, for a running load, the history row it belongs
to), so when two actors race exactly one wins and the others get an empty list. No other SQL in
the product assigns ``last_status`` (``tests/control/test_lakebase_client.py`` scans the tree for it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal, overload

import psycopg
from psycopg import sql

from dagsters.control.rows import (
    ALLOWED_FROM,
    FAILED,
    STATUSES,
    SUCCEEDED,
    UNCOMPUTABLE_FROM,
    ControlRow,
    fetch_all,
)
from dagsters.policy.schedule import Schedule, next_load_time
from databricks_scripts.contract import FAILURE_KINDS, known_code

KEEP_KIND: Any = object()  # "leave last_failure_kind as it is" (the default)
_SET_KIND_AND_CODE = sql.SQL("last_failure_kind = %(_t_kind)s, last_failure_code = %(_t_code)s")


@overload
def guarded_transition(
    conn: psycopg.Connection[Any] | None,
    to_status: str | None,
    expected: Iterable[str | None],
    *,
    where: sql.Composable,
    params: Mapping[str, Any],
    sets: Mapping[str, sql.Composable] | None = None,
    from_items: sql.Composable | None = None,
    execute: Literal[True] = True,
    uncomputable: bool = False,
    returning: sql.Composable | None = None,
    failure_kind: str | None = KEEP_KIND,
    failure_code: str | None = None,
) -> list[ControlRow]: ...


@overload
def guarded_transition(
    conn: psycopg.Connection[Any] | None,
    to_status: str | None,
    expected: Iterable[str | None],
    *,
    where: sql.Composable,
    params: Mapping[str, Any],
    sets: Mapping[str, sql.Composable] | None = None,
    from_items: sql.Composable | None = None,
    execute: Literal[False],
    uncomputable: bool = False,
    returning: sql.Composable | None = None,
    failure_kind: str | None = KEEP_KIND,
    failure_code: str | None = None,
) -> tuple[sql.Composed, dict[str, Any]]: ...


def guarded_transition(
    conn: psycopg.Connection[Any] | None,
    to_status: str | None,
    expected: Iterable[str | None],
    *,
    where: sql.Composable,
    params: Mapping[str, Any],
    sets: Mapping[str, sql.Composable] | None = None,
    from_items: sql.Composable | None = None,
    execute: bool = True,
    uncomputable: bool = False,
    returning: sql.Composable | None = None,
    failure_kind: str | None = KEEP_KIND,
    failure_code: str | None = None,
) -> list[ControlRow] | tuple[sql.Composed, dict[str, Any]]:
    """The one place a status changes: UPDATE ... WHERE <target> AND <expected state>.

    ``where`` picks the row(s) (``config_id = %(config_id)s`` or a join to ``from_items``);
    ``sets`` are extra assignments (SQL fragments using named parameters). Returns the
    updated rows as ``ControlRow`` (empty list: the guard refused), or with ``execute=False``
    the statement and its parameters so a caller can embed it in a larger one (a claim's CTE).

    ``uncomputable``: the row's values cannot be computed with (sql/012's bounds), so it may be
    failed from any state (:data:`UNCOMPUTABLE_FROM`); only ``to_status`` Failed.
    ``returning``: the columns to return instead of ``t.*`` (a row whose timestamps Python
    cannot read must not be read back); only with ``execute=False`` (the caller reads them).
    ``failure_kind``: the failure's kind (``contract.FAILURE_KINDS``, or None for a foreign error)
    written to ``last_failure_kind``, with ``failure_code`` (a foreign error's driver code, else
    NULL) to ``last_failure_code``. A row entering Failed from a running state must be given
    one (None included): the kind, not the message, is what retry rules read. Succeeded clears it.
    """
    expected = set(expected)
    _check_kind(to_status, expected, failure_kind)
    if to_status not in ALLOWED_FROM:
        raise ValueError(f"unknown status {to_status!r}; expected one of {STATUSES}")
    if uncomputable and to_status != FAILED:
        raise ValueError("only Failed may be entered from any state (uncomputable rows)")
    allowed = UNCOMPUTABLE_FROM if uncomputable else ALLOWED_FROM[to_status]
    illegal = expected - allowed - ({to_status} if to_status == FAILED else set())
    if illegal or not expected:
        raise ValueError(
            f"transition to {to_status!r} is not allowed from {sorted(map(str, illegal))}"
        )
    allowed_named = sorted(s for s in expected if s is not None)
    guard: sql.Composable = sql.SQL("t.last_status = ANY(%(_t_from)s::text[])")
    if None in expected:
        guard = sql.SQL("(t.last_status IS NULL OR {})").format(guard)
    assignments: list[sql.Composable] = [
        sql.SQL("last_status = %(_t_to)s"),
        # Time in status restarts only when the status really changes.
        sql.SQL(
            "last_status_date_time = CASE WHEN t.last_status IS DISTINCT FROM %(_t_to)s"
            " THEN now() ELSE t.last_status_date_time END"
        ),
    ]
    if failure_kind is not KEEP_KIND:
        assignments.append(_SET_KIND_AND_CODE)
    elif to_status == SUCCEEDED:
        assignments.append(sql.SQL("last_failure_kind = NULL, last_failure_code = NULL"))
    for column, value in (sets or {}).items():
        assignments.append(sql.SQL("{} = {}").format(sql.Identifier(column), value))
    statement = sql.SQL(
        "UPDATE table_control AS t SET {sets}{from_} WHERE ({where}) AND {guard}"
        " RETURNING {returning}"
    ).format(
        returning=returning if returning is not None else sql.SQL("t.*"),
        sets=sql.SQL(", ").join(assignments),
        from_=sql.SQL(" FROM {}").format(from_items) if from_items is not None else sql.SQL(""),
        where=where,
        guard=guard,
    )
    all_params = {**params, "_t_to": to_status, "_t_from": allowed_named}
    if failure_kind is not KEEP_KIND:
        all_params["_t_kind"] = failure_kind
        all_params["_t_code"] = None if failure_kind else known_code(failure_code)
    if not execute:
        return statement, all_params
    if conn is None or returning is not None:
        raise ValueError("guarded_transition: executing needs a connection and returns t.*")
    return fetch_all(conn, ControlRow, statement, all_params)


def _check_kind(to_status: str | None, expected: set, failure_kind: Any) -> None:
    if failure_kind is KEEP_KIND:
        if to_status == FAILED and expected - {FAILED}:
            raise ValueError(
                "a transition to Failed names its failure_kind (None for a foreign error)"
            )
        return
    if failure_kind is not None and failure_kind not in FAILURE_KINDS:
        raise ValueError(f"unknown failure kind {failure_kind!r}; one of {FAILURE_KINDS}")


def row_guard(metadata_id: int | None) -> sql.Composable:
    """This row, and when known, only while it still belongs to this load attempt."""
    if metadata_id is None:
        return sql.SQL("t.config_id = %(config_id)s")
    return sql.SQL("t.config_id = %(config_id)s AND t.last_metadata_id = %(metadata_id)s")


def success_sets() -> dict[str, sql.Composable]:
    """What entering Succeeded also resets on the control row."""
    return {
        "retry_count": sql.SQL("0"),
        "force_full_reload": sql.SQL("false"),
        "needs_review": sql.SQL("false"),
        "retry_analysis_requested_at": sql.SQL("NULL"),
    }


def recorded_success_sets() -> dict[str, sql.Composable]:
    """The SET clause of a recorded success (a load's, or an earlier unrecorded commit's):
    ``success_sets`` plus the watermark, the message and the Databricks run, from the
    parameters ``watermark``, ``message`` and ``databricks``."""
    return {
        **success_sets(),
        "incremental_value": sql.SQL("coalesce(%(watermark)s, t.incremental_value)"),
        "last_message": sql.SQL("%(message)s"),
        "last_databricks_run": sql.SQL("coalesce(%(databricks)s, t.last_databricks_run)"),
    }


def advance_schedule(conn: psycopg.Connection[Any], rows: Sequence[ControlRow]) -> dict[int, str]:
    """Move next_load_date_time to each row's next schedule slot (same transaction).

    Row by row: a row whose schedule cannot be computed (a cron written before sql/005's rules)
    gets next_load_date_time NULL and the reason appended to its last_message and to the message
    of its latest attempt, so it is never silently unscheduled, and the other rows are not held
    up. Returns {config_id: problem} for those rows.
    """
    if not rows:
        return {}
    now = conn.execute("SELECT now() AS now").fetchall()[0]["now"]
    values: list[tuple[datetime | None, int]] = []
    problems: dict[int, str] = {}
    for row in rows:
        slot, problem = next_slot_or_problem(row, now)
        values.append((slot, row.config_id))
        if problem is not None:
            problems[row.config_id] = problem
    with conn.cursor() as cur:
        cur.executemany(
            "UPDATE table_control SET next_load_date_time = %s WHERE config_id = %s", values
        )
    for config_id, problem in problems.items():
        note = UNSCHEDULED_NOTE.format(problem=problem)
        conn.execute(
            "UPDATE table_control SET last_message = concat(last_message, %s::text)"
            " WHERE config_id = %s",
            (note, config_id),
        )
        conn.execute(
            "UPDATE historical_metadata h SET message = concat(h.message, %s::text)"
            " FROM table_control t WHERE t.config_id = %s AND h.metadata_id = t.last_metadata_id",
            (note, config_id),
        )
    return problems


UNSCHEDULED_NOTE = (
    " | Not scheduled again: {problem}. Fix schedule_cron/schedule_timezone/schedule_interval,"
    " then set"
    " next_load_date_time."
)


def next_slot_or_problem(row: Schedule, now: datetime) -> tuple[datetime | None, str | None]:
    """(the row's next slot after ``now``, None) or (None, why its schedule cannot be computed)."""
    try:
        return _next_slot(row, now), None
    except ValueError as exc:
        return None, str(exc)
    except ArithmeticError as exc:  # OverflowError: past datetime.max
        # An interval past what a datetime holds (written where sql/012's bounds were not in
        # force): the row is not scheduled again, saying which value, instead of the commit's
        # bookkeeping failing (the row and its attempt would stay In Progress for ever).
        return None, (
            f"schedule_interval '{row.schedule_interval}' from {now.isoformat()} is"
            f" beyond the last date the scheduler can compute ({exc})"
        )


def _next_slot(row: Schedule, now: datetime) -> datetime | None:
    return next_load_time(
        now,
        cron=row.schedule_cron,
        timezone=row.schedule_timezone or "UTC",
        interval=row.schedule_interval,
    )
