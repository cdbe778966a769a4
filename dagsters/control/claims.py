"""Which control rows are due, and claiming them: the SQL behind master_sensor and UI reruns.

A claim is one statement: lock the candidate rows, insert a history row for each and set them
Queued through the guarded transition, so concurrent claimers never get the same row.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from psycopg import sql
from psycopg.rows import tuple_row

from dagsters.control.connection import ControlDatabase
from dagsters.control.errors import LoadAlreadyActive, UnknownControlKey
from dagsters.control.rows import (
    ALLOWED_FROM,
    IN_PROGRESS,
    QUEUED,
    ClaimedRow,
    ControlRow,
    fetch_all,
    fetch_one,
)
from dagsters.control.transitions import guarded_transition, row_guard
from databricks_scripts.contract import KIND_ORPHANED

# The spec's master_sensor query, plus: rows an AI analysis sent to review wait for a person, and
# a Failed row is not reclaimed by its own schedule: it waits for its retry decision
# (failed_monitor resets it to ready after a back-off of 5, 15, 45 ... minutes, or sends it to
# review), so a failing row on a frequent schedule cannot keep taking the per-source run slots
# that healthy rows need. (The first two clauses are sql/002's partial index predicate.)
_DUE = sql.SQL(
    "is_active AND next_load_date_time <= now()"
    " AND (last_status IS NULL OR last_status NOT IN ('Queued', 'In Progress'))"
    " AND last_status IS DISTINCT FROM 'Failed'"
    " AND NOT needs_review"
)


class ClaimsSql(ControlDatabase):
    """Reads of ``table_control`` rows and keys; claims of due rows and manual reruns."""

    def get_control_tables(self, limit: int | None = None) -> list[ControlRow]:
        """Rows that are due now (the master_sensor query), oldest due first. Read only."""
        query = sql.SQL(
            "SELECT * FROM table_control WHERE {due} ORDER BY next_load_date_time, config_id"
        ).format(due=_DUE)
        if limit is not None:
            query = sql.SQL("{} LIMIT {}").format(query, sql.Literal(int(limit)))
        with self._transaction("get_control_tables") as conn:
            return fetch_all(conn, ControlRow, query)

    def get_table_details(self, control_key: str) -> ControlRow | None:
        with self._transaction("get_table_details") as conn:
            return fetch_one(
                conn,
                ControlRow,
                "SELECT * FROM table_control WHERE control_key = %s",
                (control_key,),
            )

    def get_table_by_id(self, config_id: int) -> ControlRow | None:
        with self._transaction("get_table_by_id") as conn:
            return fetch_one(
                conn, ControlRow, "SELECT * FROM table_control WHERE config_id = %s", (config_id,)
            )

    def control_keys_version(self) -> int:
        """A counter that moves whenever control_keys are added, removed or renamed (sql/004).

        One single-row read: master_sensor compares it with its cursor every tick and lists the
        keys (:meth:`list_control_keys`) only when it moved.
        """
        with self._transaction("control_keys_version") as conn:
            row = conn.execute("SELECT version FROM control_keys_state").fetchone()
        return int(row["version"]) if row else 0

    def list_control_keys(self) -> list[str]:
        """Every control_key (active or not: a person may rerun an inactive row), sorted."""
        with self._transaction("list_control_keys") as conn:
            # Tuples, not dicts: at 100k rows the dict per row is most of the cost.
            cur = conn.cursor(row_factory=tuple_row)
            rows = cur.execute("SELECT control_key FROM table_control ORDER BY control_key")
            return [key for (key,) in rows.fetchall()]

    def queued_longer_than(self, minutes: float, limit: int = 100) -> list[ClaimedRow]:
        """Rows Queued for more than ``minutes`` (each with its attempt's ``metadata_id``: a
        claim sets ``last_metadata_id`` with Queued)."""
        with self._transaction("queued_longer_than") as conn:
            return fetch_all(
                conn,
                ClaimedRow,
                "SELECT *, last_metadata_id AS metadata_id FROM table_control"
                " WHERE last_status = 'Queued'"
                " AND last_status_date_time < now() - make_interval(secs => %s)"
                " ORDER BY last_status_date_time LIMIT %s",
                (float(minutes) * 60, int(limit)),
            )

    def release_claims(self, attempts: Iterable[ClaimedRow], reason: str) -> list[ControlRow]:
        """Queued -> ready for claims whose run was never created; returns the released rows.

        Guarded per attempt (``config_id`` + ``metadata_id``), so a claim whose run did start
        meanwhile is left alone. The row keeps its schedule (it is due again at once) and says
        why in last_message; the attempt's history row ends Failed with the same words.
        """
        message = self.redact(reason)
        released: list[ControlRow] = []
        with self._transaction("release_claims") as conn:
            for attempt in attempts:
                params = {
                    "config_id": attempt.config_id,
                    "metadata_id": attempt.metadata_id,
                    "message": message,
                }
                rows = guarded_transition(
                    conn,
                    None,
                    {QUEUED},
                    where=row_guard(attempt.metadata_id),
                    params=params,
                    sets={"last_message": sql.SQL("%(message)s")},
                )
                if rows:
                    conn.execute(
                        "UPDATE historical_metadata SET status = 'Failed', ended_at = now(),"
                        " message = %(message)s, failure_kind = %(kind)s"
                        " WHERE metadata_id = %(metadata_id)s AND status = 'Queued'",
                        {**params, "kind": KIND_ORPHANED},
                    )
                    released.extend(rows)
        return released

    def queue_manual_load(self, control_key: str, *, triggered_by: str = "ui") -> ClaimedRow:
        """Queue one row now (a person's rerun); raises if it is unknown or already active."""
        with self._transaction("queue_manual_load") as conn:
            # Two columns: a status check, kept a dict.
            row = conn.execute(
                "SELECT config_id, last_status FROM table_control WHERE control_key = %s"
                " FOR UPDATE",
                (control_key,),
            ).fetchone()
            if row is None:
                raise UnknownControlKey(f"no table_control row with control_key {control_key!r}")
            if row["last_status"] in (QUEUED, IN_PROGRESS):
                raise LoadAlreadyActive(
                    f"{control_key} is already {row['last_status']}; wait for that load to "
                    "finish (or for the stuck-load monitors to fail it) before queueing another"
                )
            statement, params = _claim_statement(
                sql.SQL("SELECT %(_config_id)s::bigint AS config_id"),
                sql.SQL("%(_triggered_by)s"),
            )
            claimed = fetch_all(
                conn,
                ClaimedRow,
                statement,
                {**params, "_config_id": row["config_id"], "_triggered_by": triggered_by},
            )
            if not claimed:  # cannot happen while we hold the row lock; be explicit anyway
                raise LoadAlreadyActive(f"{control_key} could not be queued")
            # A person asked for this load: a pending review no longer blocks the row.
            conn.execute(
                "UPDATE table_control SET needs_review = false WHERE config_id = %s",
                (row["config_id"],),
            )
            return replace(claimed[0], needs_review=False)


def _claim_statement(
    candidates: sql.Composable, triggered_by: sql.Composable
) -> tuple[sql.Composed, dict[str, Any]]:
    """Lock candidate rows, insert their history rows and set them Queued: one statement."""
    update, params = guarded_transition(
        None,
        QUEUED,
        ALLOWED_FROM[QUEUED],
        where=sql.SQL("t.config_id = hist.config_id"),
        params={},
        from_items=sql.SQL("hist"),
        sets={
            "last_metadata_id": sql.SQL("hist.metadata_id"),
            "last_dagster_run": sql.SQL("NULL"),
            "last_databricks_run": sql.SQL("NULL"),
            "retry_analysis_requested_at": sql.SQL("NULL"),
        },
        execute=False,
    )
    return sql.SQL(
        "WITH picked AS ({candidates}),"
        " hist AS ("
        "  INSERT INTO historical_metadata"
        "   (config_id, control_key, triggered_by, status, load_strategy, watermark_before)"
        "  SELECT c.config_id, c.control_key, {triggered_by}, 'Queued', c.load_strategy,"
        "         c.incremental_value"
        "  FROM table_control c JOIN picked USING (config_id)"
        "  RETURNING metadata_id, config_id),"
        " claimed AS ({update})"
        " SELECT claimed.*, hist.metadata_id"
        " FROM claimed JOIN hist USING (config_id) ORDER BY claimed.next_load_date_time,"
        " claimed.config_id"
    ).format(candidates=candidates, triggered_by=triggered_by, update=update), params
