"""Rows the sensors cannot compute with are failed, one by one, so no tick stops on them.

``sql/012`` refuses every value the code cannot use (an infinite timestamp, a '100000 years'
interval, ...). Where those CHECKs are not in force (dropped, or a copy of the table without
them), such a row would make every sensor tick that reads it raise, and no other row would be
claimed, failed or analysed. So the first statement of every sensor tick
(:meth:`UncomputableRowsSql.fail_uncomputable_rows`) finds them with the database's own
``dataloader_control_row_problem(...)`` (through an index that is empty while the CHECKs hold)
and fails them through the guarded transition, from whatever state they are in, with a message
naming the value; ``needs_review`` keeps them from being claimed or analysed until a person fixes
the value and releases the row. The timestamps Python cannot read are cleared (the message
keeps what they were), so everything else that reads the row (the UI, the release job) can.

:meth:`UncomputableRowsSql.fail_row` is the same for a row whose value failed in Python (a
sensor computing something for one row raised): that row is failed, the tick goes on.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from dagsters.control.connection import ControlDatabase
from dagsters.control.rows import FAILED, UNCOMPUTABLE_FROM, fetch_all
from dagsters.control.transitions import guarded_transition
from databricks_scripts.contract import KIND_BAD_CONFIG

PROBLEM_SQL = sql.SQL(
    "dataloader_control_row_problem("
    "t.control_key, t.next_load_date_time, t.last_status_date_time, t.last_load_date_time,"
    " t.retry_analysis_requested_at, t.created_at, t.updated_at, t.schedule_interval,"
    " t.lookback_window, t.schedule_cron, t.retry_count, t.merge_keys)"
)
# The index predicate of sql/012 (table_control_uncomputable_idx), word for word, so the planner
# uses the index.
_PREDICATE = sql.SQL(
    "dataloader_control_row_problem("
    "control_key, next_load_date_time, last_status_date_time, last_load_date_time,"
    " retry_analysis_requested_at, created_at, updated_at, schedule_interval,"
    " lookback_window, schedule_cron, retry_count, merge_keys) IS NOT NULL"
)
MESSAGE_PREFIX = "Failed: cannot schedule this row: "
# Readable in what is returned: never a timestamp of the row itself.
_RETURNING = sql.SQL("t.config_id, t.control_key, t.last_metadata_id, t.last_message")


@dataclass(frozen=True, kw_only=True)
class UncomputableRow:
    """What is read back of a row failed here (``_RETURNING``): never one of its timestamps."""

    config_id: int
    control_key: str
    last_metadata_id: int | None
    last_message: str | None


def _clear_unreadable(column: str) -> sql.Composable:
    return sql.SQL("CASE WHEN dataloader_timestamp_in_bounds(t.{c}) THEN t.{c} END").format(
        c=sql.Identifier(column)
    )


class UncomputableRowsSql(ControlDatabase):
    """Fail rows whose values cannot be computed with, without reading those values."""

    def fail_uncomputable_rows(self, limit: int = 100) -> list[UncomputableRow]:
        """Every row breaking sql/012's bounds -> Failed (+ needs_review), naming the value.

        Returns ``config_id``, ``control_key``, ``last_metadata_id`` and ``last_message`` of the
        rows failed (usually none: one look at an empty index).
        """
        message = sql.SQL(
            "{prefix} || {problem} || '. Fix the value, then release the row (dataloader release '"
            " || left(t.control_key, 200) || ').'"
        ).format(prefix=sql.Literal(MESSAGE_PREFIX), problem=PROBLEM_SQL)
        with self._transaction("fail_uncomputable_rows") as conn:
            statement, params = guarded_transition(
                None,
                FAILED,
                UNCOMPUTABLE_FROM,
                where=sql.SQL(
                    "t.config_id IN (SELECT config_id FROM table_control WHERE {pred}"
                    " ORDER BY config_id LIMIT %(limit)s FOR UPDATE SKIP LOCKED)"
                ).format(pred=_PREDICATE),
                params={"limit": int(limit)},
                sets={
                    "last_message": message,
                    "needs_review": sql.SQL("true"),
                    "next_load_date_time": _clear_unreadable("next_load_date_time"),
                    "last_load_date_time": _clear_unreadable("last_load_date_time"),
                    "retry_analysis_requested_at": _clear_unreadable("retry_analysis_requested_at"),
                    "created_at": sql.SQL(
                        "CASE WHEN dataloader_timestamp_in_bounds(t.created_at)"
                        " THEN t.created_at ELSE now() END"
                    ),
                },
                uncomputable=True,
                returning=_RETURNING,
                failure_kind=KIND_BAD_CONFIG,
                execute=False,
            )
            rows = fetch_all(conn, UncomputableRow, statement, params)
            if not rows:
                return rows
            # last_status_date_time: the transition sets now() unless the row was Failed already.
            conn.execute(
                "UPDATE table_control SET last_status_date_time = now()"
                " WHERE config_id = ANY(%s) AND NOT dataloader_timestamp_in_bounds("
                "last_status_date_time)",
                ([r.config_id for r in rows],),
            )
            _fail_attempts(conn, rows)
        return rows

    def fail_row(
        self,
        config_id: int,
        expected: Iterable[str | None],
        message: str,
        *,
        metadata_id: int | None = None,
    ) -> bool:
        """This row -> Failed (+ needs_review) with ``message``: a value of it made a sensor
        raise. Guarded by the state the sensor read it in (and its attempt, when given)."""
        where: sql.Composable = sql.SQL("t.config_id = %(config_id)s")
        if metadata_id is not None:
            where = sql.SQL("{} AND t.last_metadata_id = %(metadata_id)s").format(where)
        with self._transaction("fail_row") as conn:
            statement, params = guarded_transition(
                None,
                FAILED,
                set(expected),
                where=where,
                params={
                    "config_id": config_id,
                    "metadata_id": metadata_id,
                    "message": self.redact(message),
                },
                sets={"last_message": sql.SQL("%(message)s"), "needs_review": sql.SQL("true")},
                uncomputable=True,
                returning=_RETURNING,
                failure_kind=KIND_BAD_CONFIG,
                execute=False,
            )
            rows = fetch_all(conn, UncomputableRow, statement, params)
            _fail_attempts(conn, rows)
        return bool(rows)


def _fail_attempts(conn: psycopg.Connection[Any], rows: list[UncomputableRow]) -> None:
    """The unfinished attempt of each failed row ends Failed with the row's message (bad_config)."""
    for row in rows:
        if row.last_metadata_id is not None:
            conn.execute(
                "UPDATE historical_metadata SET status = 'Failed', ended_at = now(), message = %s,"
                " failure_kind = %s"
                " WHERE metadata_id = %s AND status IN ('Queued', 'In Progress')",
                (row.last_message, KIND_BAD_CONFIG, row.last_metadata_id),
            )
