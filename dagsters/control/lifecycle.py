"""A load attempt's own status changes: start, success, failure, run links, generic change.

Each one is a guarded transition (:mod:`dagsters.control.transitions`) on the control row plus,
in the same transaction, the matching write to the attempt's ``historical_metadata`` row.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from dagsters.control.connection import ControlDatabase
from dagsters.control.rows import (
    ANY_ALLOWED,
    FAILED,
    IN_PROGRESS,
    QUEUED,
    SUCCEEDED,
    expected_states,
    fetch_one,
)
from dagsters.control.transitions import (
    KEEP_KIND,
    advance_schedule,
    guarded_transition,
    next_slot_or_problem,
    recorded_success_sets,
    row_guard,
    success_sets,
)
from databricks_scripts.contract import KIND_BAD_CONFIG, LoadReport, known_code
from databricks_scripts.retry.codes import code_from_text


class LifecycleSql(ControlDatabase):
    """Queued -> In Progress -> Succeeded | Failed for one attempt, and its run links."""

    def update_control_status(
        self,
        config_id: int,
        status: str | None,
        message: str | None = None,
        *,
        expected_status: Any = ANY_ALLOWED,
        failure_kind: str | None = None,
    ) -> bool:
        """Generic guarded status change; True if this caller won. ``failure_kind``: the kind
        written when ``status`` is Failed (None: a foreign error).

        ``expected_status`` (a status, None, or a collection of them) narrows the states the row
        may be in; by default any state the lifecycle allows before ``status``. Entering
        In Progress stamps last_load_date_time; finishing (Succeeded/Failed) advances the schedule.
        """
        expected = expected_states(status, expected_status)
        sets: dict[str, sql.Composable] = {}
        params: dict[str, Any] = {"config_id": config_id}
        if message is not None:
            sets["last_message"] = sql.SQL("%(message)s")
            params["message"] = self.redact(message)
        if status == IN_PROGRESS:
            sets["last_load_date_time"] = sql.SQL("now()")
        if status == SUCCEEDED:
            sets.update(success_sets())
        with self._transaction("update_control_status") as conn:
            rows = guarded_transition(
                conn,
                status,
                expected,
                where=sql.SQL("t.config_id = %(config_id)s"),
                params=params,
                sets=sets,
                failure_kind=failure_kind if status == FAILED else KEEP_KIND,
                failure_code=_foreign_code(failure_kind, None, params.get("message") or ""),
            )
            if status in (SUCCEEDED, FAILED):
                advance_schedule(conn, rows)
        return bool(rows)

    def update_run_tracking(
        self,
        config_id: int,
        dagster_url: str | None = None,
        databricks_url: str | None = None,
        *,
        metadata_id: int | None = None,
    ) -> bool:
        """Record run links on the control row (and the history row when ``metadata_id`` given).

        With ``metadata_id`` the control row is only touched while it still belongs to that
        attempt, so a late, stale run cannot overwrite the links of a newer one.
        """
        params = {
            "config_id": config_id,
            "dagster": dagster_url,
            "databricks": databricks_url,
            "metadata_id": metadata_id,
        }
        with self._transaction("update_run_tracking") as conn:
            won = conn.execute(
                "UPDATE table_control SET"
                " last_dagster_run = coalesce(%(dagster)s, last_dagster_run),"
                " last_databricks_run = coalesce(%(databricks)s, last_databricks_run)"
                " WHERE config_id = %(config_id)s"
                " AND (%(metadata_id)s::bigint IS NULL OR last_metadata_id = %(metadata_id)s)",
                params,
            ).rowcount
            if metadata_id is not None:
                conn.execute(
                    "UPDATE historical_metadata SET"
                    " dagster_run_url = coalesce(%(dagster)s, dagster_run_url),"
                    " databricks_run_url = coalesce(%(databricks)s, databricks_run_url)"
                    " WHERE metadata_id = %(metadata_id)s AND config_id = %(config_id)s",
                    params,
                )
        return won > 0

    def start_load(
        self, config_id: int, metadata_id: int, *, dagster_run_id: str, dagster_run_url: str
    ) -> bool:
        """Queued -> In Progress for this attempt; stamps last_load_date_time and the history."""
        with self._transaction("start_load") as conn:
            rows = guarded_transition(
                conn,
                IN_PROGRESS,
                {QUEUED},
                where=row_guard(metadata_id),
                params={"config_id": config_id, "metadata_id": metadata_id, "url": dagster_run_url},
                sets={
                    "last_load_date_time": sql.SQL("now()"),
                    "last_dagster_run": sql.SQL("%(url)s"),
                },
            )
            if rows:
                conn.execute(
                    "UPDATE historical_metadata SET status = 'In Progress', started_at = now(),"
                    " dagster_run_id = %s, dagster_run_url = %s WHERE metadata_id = %s",
                    (dagster_run_id, dagster_run_url, metadata_id),
                )
        return bool(rows)

    def record_success(
        self,
        config_id: int,
        metadata_id: int,
        report: LoadReport,
        *,
        message: str | None = None,
        databricks_run_url: str | None = None,
        schema_changed: bool = False,
    ) -> bool:
        """In Progress -> Succeeded, new watermark, next schedule slot, history: one transaction.

        ``report``: what the load reported (rows, the watermark after it, the strategy it
        applied and why it ran full); the history row's ``load_strategy`` becomes the applied one
        (the queued one moves to ``requested_load_strategy``, sql/010) and its message says both.
        ``schema_changed``: the load changed the destination's columns, so the staging model
        generated earlier is out of date; staging_model_processed goes back to false and the
        landing-table job regenerates the files it wrote (a person's own files stay untouched).
        """
        rows_written = report.rows_written
        if message is None:
            message = f"Loaded {rows_written if rows_written is not None else '?'} rows"
        watermark = report.watermark_after
        params: dict[str, Any] = {
            "config_id": config_id,
            "metadata_id": metadata_id,
            "watermark": None if watermark is None else str(watermark),
            "message": self.redact(message),
            "databricks": databricks_run_url,
            "schema_changed": bool(schema_changed),
        }
        history = {
            "rows_read": report.rows_read,
            "rows_written": rows_written,
            "applied": report.load_strategy,
            "full_reason": report.full_load_reason,
            "note": _strategy_note(report.load_strategy, report.full_load_reason),
        }
        with self._transaction("record_success") as conn:
            # A schedule that cannot be computed must not roll back the bookkeeping of a
            # committed load: the watermark is saved and the row ends Failed, saying why.
            status = SUCCEEDED if _schedulable(conn, config_id) else FAILED
            if status == FAILED:
                params["message"] = self.redact(
                    f"{message}; committed and watermark saved, but the next load cannot be"
                    " scheduled"
                )
            params["status"] = status
            rows = guarded_transition(
                conn,
                status,
                {IN_PROGRESS},
                where=row_guard(metadata_id),
                params=params,
                sets={
                    **recorded_success_sets(),
                    "staging_model_processed": sql.SQL(
                        "t.staging_model_processed AND NOT %(schema_changed)s"
                    ),
                },
                failure_kind=KIND_BAD_CONFIG if status == FAILED else KEEP_KIND,
            )
            if rows:
                conn.execute(
                    _SUCCESS_HISTORY,
                    {
                        **params,
                        **history,
                        "history_message": self.redact(params["message"] + history["note"]),
                    },
                )
                advance_schedule(conn, rows)
        return bool(rows)

    def record_failure(
        self,
        config_id: int,
        metadata_id: int,
        message: str,
        *,
        databricks_run_url: str | None = None,
        failure_kind: str | None = None,
        failure_code: str | None = None,
    ) -> bool:
        """Queued | In Progress -> Failed for this attempt; message redacted; schedule advanced.

        ``failure_kind``: what DataLoader knows about the failure (``contract.FAILURE_KINDS``),
        written to the row and the history row; None for a foreign error (its code, else its text
        is classified). ``failure_code``: the foreign error's driver code as the script read it;
        when it sent none, the one its message prints (``retry.codes.code_from_text``).

        The schedule moves on so a failed row is not reclaimed on the very next tick; the
        failed_monitor's retry (reset_for_retry) brings it back sooner with a back-off.
        """
        redacted = self.redact(message)
        # Read from the redacted text; a code redaction would change is not a code.
        code = _foreign_code(failure_kind, failure_code, redacted)
        code = code if code is None or self.redact(code) == code else None
        params: dict[str, object] = {
            "config_id": config_id,
            "metadata_id": metadata_id,
            "message": redacted,
            "databricks": databricks_run_url,
            "kind": failure_kind,
            "code": code,
        }
        with self._transaction("record_failure") as conn:
            rows = guarded_transition(
                conn,
                FAILED,
                {QUEUED, IN_PROGRESS},
                where=row_guard(metadata_id),
                params=params,
                sets={
                    "last_message": sql.SQL("%(message)s"),
                    "last_databricks_run": sql.SQL(
                        "coalesce(%(databricks)s, t.last_databricks_run)"
                    ),
                },
                failure_kind=failure_kind,
                failure_code=code,
            )
            if rows:
                conn.execute(
                    "UPDATE historical_metadata SET status = 'Failed', ended_at = now(),"
                    " message = %(message)s, failure_kind = %(kind)s, failure_code = %(code)s,"
                    " databricks_run_url = coalesce(%(databricks)s, databricks_run_url)"
                    " WHERE metadata_id = %(metadata_id)s",
                    params,
                )
                advance_schedule(conn, rows)
        return bool(rows)


def _foreign_code(kind: str | None, code: str | None, message: str) -> str | None:
    """A foreign error's code: the one given, else the one its text prints; none for our kinds."""
    if kind is not None:
        return None
    return known_code(code) or code_from_text(message)


@dataclass(frozen=True, kw_only=True)
class _ScheduleNow:
    """A row's schedule columns and the database's ``now()``."""

    schedule_cron: str | None
    schedule_timezone: str | None
    schedule_interval: timedelta | None
    now: datetime


def _schedulable(conn: psycopg.Connection[Any], config_id: int) -> bool:
    """Can the row's next slot be computed (a row written before sql/005's rules may not)?"""
    row = fetch_one(
        conn,
        _ScheduleNow,
        "SELECT schedule_cron, schedule_timezone, schedule_interval, now() AS now"
        " FROM table_control WHERE config_id = %s",
        (config_id,),
    )
    return row is None or next_slot_or_problem(row, row.now)[1] is None


_SUCCESS_HISTORY = (
    "UPDATE historical_metadata SET status = %(status)s, ended_at = now(),"
    # Failed here only when the next slot cannot be computed: the row's schedule (bad_config).
    f" failure_kind = CASE WHEN %(status)s = 'Failed' THEN '{KIND_BAD_CONFIG}' END,"
    " rows_read = %(rows_read)s, rows_written = %(rows_written)s,"
    " watermark_after = coalesce(%(watermark)s, watermark_before),"
    " message = %(history_message)s,"
    # Old values on the right: what the row asked for moves to requested_load_strategy.
    " requested_load_strategy = load_strategy,"
    " load_strategy = coalesce(%(applied)s, load_strategy),"
    " full_load_reason = %(full_reason)s,"
    " databricks_run_url = coalesce(%(databricks)s, databricks_run_url)"
    " WHERE metadata_id = %(metadata_id)s"
)


def _strategy_note(applied: str | None, full_reason: str | None) -> str:
    """`` (full load: first load)`` / `` (incremental load)`` for a history message."""
    if not applied:
        return ""
    return f" ({applied} load: {full_reason})" if full_reason else f" ({applied} load)"
