"""Client for the Lakebase control database: control rows, their status lifecycle, load history.

Status lifecycle of a control row (``last_status``)::

    NULL (ready) -> Queued -> In Progress -> Succeeded | Failed
    Failed -> NULL (retry, retry_count + 1)      Queued -> Failed (stuck / run failed early)

Every status change goes through :meth:`LakebaseClient._guarded_transition`, one UPDATE whose
WHERE clause names the state it expects (and, for a running load, the history row it belongs
to), so when two actors race exactly one wins and the others get ``False``.

Values are always bound parameters; identifiers are composed with :mod:`psycopg.sql`.
Messages written to the database or raised are redacted first.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Self

import psycopg
from psycopg import sql
from psycopg.rows import dict_row, tuple_row
from psycopg_pool import ConnectionPool, PoolTimeout

from dagsters.control.schedule import next_load_time, retry_backoff
from databricks_scripts.redaction import redact

log = logging.getLogger(__name__)

QUEUED = "Queued"
IN_PROGRESS = "In Progress"
SUCCEEDED = "Succeeded"
FAILED = "Failed"
STATUSES = (None, QUEUED, IN_PROGRESS, SUCCEEDED, FAILED)

# Which states each status may be entered from. NULL means "ready to load".
ALLOWED_FROM: dict[str | None, frozenset[str | None]] = {
    QUEUED: frozenset({None, SUCCEEDED, FAILED}),
    IN_PROGRESS: frozenset({QUEUED}),
    SUCCEEDED: frozenset({IN_PROGRESS}),
    FAILED: frozenset({QUEUED, IN_PROGRESS}),
    None: frozenset({FAILED}),
}

RETRY_MARKER = "[AI Analysis - Retry Recommended] "
REVIEW_MARKER = "[AI Analysis - Requires Review] "
# Put between a load's own message and a note from the landing-table job in last_message.
LANDING_NOTE_SEPARATOR = " | [Landing] "
# failed_monitor takes back a failure whose analysis was requested this long ago and never decided.
DEFAULT_ANALYSIS_TIMEOUT_MINUTES = 60

# historical_metadata columns a caller may set through update_metadata.
METADATA_FIELDS = frozenset(
    {
        "status",
        "load_strategy",
        "started_at",
        "ended_at",
        "rows_read",
        "rows_written",
        "watermark_before",
        "watermark_after",
        "message",
        "dagster_run_id",
        "dagster_run_url",
        "databricks_run_url",
        "retry_decision",
        "retry_confidence",
        "retry_reason",
        "retry_decider",
        "retry_analysed_at",
    }
)

_DEFAULT = object()  # "use the lifecycle's allowed predecessor states"

# The spec's master_sensor query, plus: rows an AI analysis sent to review wait for a person.
_DUE = sql.SQL(
    "is_active AND next_load_date_time <= now()"
    " AND (last_status IS NULL OR last_status NOT IN ('Queued', 'In Progress'))"
    " AND NOT needs_review"
)


class LakebaseError(RuntimeError):
    """The control database refused or failed an operation (message already redacted)."""

    def __init__(self, message: str, *, sqlstate: str | None = None):
        super().__init__(message)
        self.sqlstate = sqlstate


class UnknownControlKey(LakebaseError):
    """No table_control row has this control_key."""


class LoadAlreadyActive(LakebaseError):
    """The row is already Queued or In Progress, so another load cannot be queued."""


class LakebaseClient:
    """Pooled access to ``table_control`` and ``historical_metadata`` (rows as dicts)."""

    def __init__(
        self,
        conninfo: str,
        *,
        min_size: int = 1,
        max_size: int = 4,
        connect_kwargs: dict | None = None,
        connection_class: type[psycopg.Connection] | None = None,
        timeout: float = 30.0,
    ):
        kwargs = dict(connect_kwargs or {})
        self._secrets = [s for s in (kwargs.get("password"), _conninfo_password(conninfo)) if s]
        kwargs.setdefault("row_factory", dict_row)
        pool_args: dict[str, Any] = {}
        if connection_class is not None:
            # e.g. a Connection subclass whose connect() fetches a fresh OAuth token each time.
            pool_args["connection_class"] = connection_class
        self._pool = ConnectionPool(
            conninfo,
            min_size=min_size,
            max_size=max_size,
            kwargs=kwargs,
            timeout=timeout,
            # Lakebase closes idle connections; check before handing one out.
            check=ConnectionPool.check_connection,
            open=False,
            name="lakebase",
            **pool_args,
        )
        # wait=False: a down database surfaces as a clear LakebaseError on first use, not here.
        self._pool.open(wait=False)

    # -- plumbing ---------------------------------------------------------------------------------

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LakebaseClient(pool={self._pool.name!r}, max_size={self._pool.max_size})"

    def redact(self, text: object) -> str:
        """``text`` without this client's password or anything that looks like a secret."""
        return redact(text, self._secrets)

    @contextmanager
    def _transaction(self, operation: str) -> Iterator[psycopg.Connection]:
        """One pooled connection, one transaction: committed on success, rolled back on error."""
        try:
            with self._pool.connection() as conn:
                yield conn
        except LakebaseError:
            raise
        except PoolTimeout as exc:
            raise LakebaseError(
                f"{operation}: no connection to the control database ({self.redact(exc)})"
            ) from None
        except psycopg.Error as exc:
            # Redacted and without the original as __cause__, whose text could hold a secret.
            raise LakebaseError(
                f"{operation}: {self.redact(exc)}", sqlstate=getattr(exc, "sqlstate", None)
            ) from None

    def _guarded_transition(
        self,
        conn: psycopg.Connection,
        to_status: str | None,
        expected: Iterable[str | None],
        *,
        where: sql.Composable,
        params: Mapping[str, Any],
        sets: Mapping[str, sql.Composable] | None = None,
        from_items: sql.Composable | None = None,
        execute: bool = True,
    ) -> list[dict] | tuple[sql.Composed, dict[str, Any]]:
        """The one place a status changes: UPDATE ... WHERE <target> AND <expected state>.

        ``where`` picks the row(s) (``config_id = %(config_id)s`` or a join to ``from_items``);
        ``sets`` are extra assignments (SQL fragments using named parameters). Returns the
        updated rows (empty list: the guard refused), or with ``execute=False`` the statement and
        its parameters so a caller can embed it in a larger one (claim_due_tables' CTE).
        """
        expected = set(expected)
        if to_status not in ALLOWED_FROM:
            raise ValueError(f"unknown status {to_status!r}; expected one of {STATUSES}")
        illegal = (
            expected - ALLOWED_FROM[to_status] - ({to_status} if to_status == FAILED else set())
        )
        if illegal or not expected:
            raise ValueError(
                f"transition to {to_status!r} is not allowed from {sorted(map(str, illegal))}"
            )
        allowed_named = sorted(s for s in expected if s is not None)
        guard = sql.SQL("t.last_status = ANY(%(_t_from)s::text[])")
        if None in expected:
            guard = sql.SQL("(t.last_status IS NULL OR {})").format(guard)
        assignments = [
            sql.SQL("last_status = %(_t_to)s"),
            # Time in status restarts only when the status really changes.
            sql.SQL(
                "last_status_date_time = CASE WHEN t.last_status IS DISTINCT FROM %(_t_to)s"
                " THEN now() ELSE t.last_status_date_time END"
            ),
        ]
        for column, value in (sets or {}).items():
            assignments.append(sql.SQL("{} = {}").format(sql.Identifier(column), value))
        statement = sql.SQL(
            "UPDATE table_control AS t SET {sets}{from_} WHERE ({where}) AND {guard} RETURNING t.*"
        ).format(
            sets=sql.SQL(", ").join(assignments),
            from_=sql.SQL(" FROM {}").format(from_items) if from_items is not None else sql.SQL(""),
            where=where,
            guard=guard,
        )
        all_params = {**params, "_t_to": to_status, "_t_from": allowed_named}
        if not execute:
            return statement, all_params
        return conn.execute(statement, all_params).fetchall()

    def _advance_schedule(self, conn: psycopg.Connection, rows: Sequence[Mapping]) -> None:
        """Move next_load_date_time to each row's next schedule slot (same transaction)."""
        if not rows:
            return
        now = conn.execute("SELECT now() AS now").fetchone()["now"]
        values = [(_next_slot(row, now), row["config_id"]) for row in rows]
        with conn.cursor() as cur:
            cur.executemany(
                "UPDATE table_control SET next_load_date_time = %s WHERE config_id = %s", values
            )

    # -- spec methods -----------------------------------------------------------------------------

    def get_control_tables(self, limit: int | None = None) -> list[dict]:
        """Rows that are due now (the master_sensor query), oldest due first. Read only."""
        query = sql.SQL(
            "SELECT * FROM table_control WHERE {due} ORDER BY next_load_date_time, config_id"
        ).format(due=_DUE)
        if limit is not None:
            query = sql.SQL("{} LIMIT {}").format(query, sql.Literal(int(limit)))
        with self._transaction("get_control_tables") as conn:
            return conn.execute(query).fetchall()

    def get_table_details(self, control_key: str) -> dict | None:
        with self._transaction("get_table_details") as conn:
            return conn.execute(
                "SELECT * FROM table_control WHERE control_key = %s", (control_key,)
            ).fetchone()

    def get_table_by_id(self, config_id: int) -> dict | None:
        with self._transaction("get_table_by_id") as conn:
            return conn.execute(
                "SELECT * FROM table_control WHERE config_id = %s", (config_id,)
            ).fetchone()

    def update_control_status(
        self,
        config_id: int,
        status: str | None,
        message: str | None = None,
        *,
        expected_status: Any = _DEFAULT,
    ) -> bool:
        """Generic guarded status change; True if this caller won.

        ``expected_status`` (a status, None, or a collection of them) narrows the states the row
        may be in; by default any state the lifecycle allows before ``status``. Entering
        In Progress stamps last_load_date_time; finishing (Succeeded/Failed) advances the schedule.
        """
        expected = _expected_states(status, expected_status)
        sets: dict[str, sql.Composable] = {}
        params: dict[str, Any] = {"config_id": config_id}
        if message is not None:
            sets["last_message"] = sql.SQL("%(message)s")
            params["message"] = self.redact(message)
        if status == IN_PROGRESS:
            sets["last_load_date_time"] = sql.SQL("now()")
        if status == SUCCEEDED:
            sets.update(_success_sets())
        with self._transaction("update_control_status") as conn:
            rows = self._guarded_transition(
                conn,
                status,
                expected,
                where=sql.SQL("t.config_id = %(config_id)s"),
                params=params,
                sets=sets,
            )
            if status in (SUCCEEDED, FAILED):
                self._advance_schedule(conn, rows)
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

    def insert_initial_metadata(self, config_id: int, *, triggered_by: str = "sensor") -> int:
        """New history row (status Queued) for ``config_id``; returns its metadata_id."""
        with self._transaction("insert_initial_metadata") as conn:
            row = conn.execute(
                "INSERT INTO historical_metadata"
                " (config_id, control_key, triggered_by, status, load_strategy, watermark_before)"
                " SELECT config_id, control_key, %s, 'Queued', load_strategy, incremental_value"
                " FROM table_control WHERE config_id = %s RETURNING metadata_id",
                (triggered_by, config_id),
            ).fetchone()
        if row is None:
            raise LakebaseError(f"insert_initial_metadata: no table_control row {config_id}")
        return row["metadata_id"]

    def update_metadata(self, metadata_id: int, **fields: Any) -> bool:
        """Set whitelisted historical_metadata columns; True if the row exists."""
        unknown = set(fields) - METADATA_FIELDS
        if unknown:
            raise ValueError(f"update_metadata: not updatable: {sorted(unknown)}")
        if not fields:
            return False
        if fields.get("message") is not None:
            fields["message"] = self.redact(fields["message"])
        statement = sql.SQL("UPDATE historical_metadata SET {} WHERE metadata_id = {}").format(
            sql.SQL(", ").join(
                sql.SQL("{} = {}").format(sql.Identifier(k), sql.Placeholder(k)) for k in fields
            ),
            sql.Placeholder("_metadata_id"),
        )
        with self._transaction("update_metadata") as conn:
            return conn.execute(statement, {**fields, "_metadata_id": metadata_id}).rowcount > 0

    def reset_for_retry(
        self,
        config_id: int,
        reason: str,
        *,
        metadata_id: int | None = None,
        decision: Mapping[str, Any] | None = None,
    ) -> bool:
        """Failed -> NULL (ready) after a back-off, retry_count + 1; True if this caller won."""
        with self._transaction("reset_for_retry") as conn:
            current = _lock_row(conn, config_id)
            if current is None or current["last_status"] != FAILED:
                return False
            rows = self._guarded_transition(
                conn,
                None,
                {FAILED},
                where=_row_guard(metadata_id),
                params={
                    "config_id": config_id,
                    "metadata_id": metadata_id,
                    "message": self.redact(RETRY_MARKER + reason),
                    "backoff": retry_backoff(current["retry_count"]),
                },
                sets={
                    "retry_count": sql.SQL("t.retry_count + 1"),
                    "last_message": sql.SQL("%(message)s"),
                    "next_load_date_time": sql.SQL("now() + %(backoff)s"),
                    "needs_review": sql.SQL("false"),
                    "retry_analysis_requested_at": sql.SQL("NULL"),
                },
            )
            if rows:
                self._store_decision(conn, rows[0], metadata_id, decision, reason)
        return bool(rows)

    def mark_for_review(
        self,
        config_id: int,
        reason: str,
        *,
        metadata_id: int | None = None,
        decision: Mapping[str, Any] | None = None,
    ) -> bool:
        """Failed stays Failed with needs_review, so no sensor picks it up until a person acts."""
        with self._transaction("mark_for_review") as conn:
            rows = self._guarded_transition(
                conn,
                FAILED,
                {FAILED},
                where=_row_guard(metadata_id),
                params={
                    "config_id": config_id,
                    "metadata_id": metadata_id,
                    "message": self.redact(REVIEW_MARKER + reason),
                },
                sets={"needs_review": sql.SQL("true"), "last_message": sql.SQL("%(message)s")},
            )
            if rows:
                self._store_decision(conn, rows[0], metadata_id, decision, reason)
        return bool(rows)

    def _store_decision(
        self,
        conn: psycopg.Connection,
        row: Mapping,
        metadata_id: int | None,
        decision: Mapping[str, Any] | None,
        reason: str,
    ) -> None:
        if metadata_id is None and decision is None:
            return
        decision = dict(decision or {})
        conn.execute(
            "UPDATE historical_metadata SET retry_decision = %(decision)s,"
            " retry_confidence = %(confidence)s, retry_reason = %(reason)s,"
            " retry_decider = %(decider)s, retry_analysed_at = now()"
            " WHERE metadata_id = %(metadata_id)s AND config_id = %(config_id)s",
            {
                "decision": decision.get("decision"),
                "confidence": decision.get("confidence"),
                "reason": self.redact(decision.get("reason") or reason),
                "decider": decision.get("decider"),
                "metadata_id": metadata_id if metadata_id is not None else row["last_metadata_id"],
                "config_id": row["config_id"],
            },
        )

    # -- sensor / asset helpers -------------------------------------------------------------------

    def _claim_statement(
        self, candidates: sql.Composable, triggered_by: sql.Composable
    ) -> tuple[sql.Composed, dict[str, Any]]:
        """Lock candidate rows, insert their history rows and set them Queued: one statement."""
        update, params = self._guarded_transition(
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

    def claim_due_tables(self, batch_size: int) -> list[dict]:
        """Claim up to ``batch_size`` due rows: Queued + history row each, in one statement.

        FOR UPDATE SKIP LOCKED means concurrent callers split the due rows between them and
        never receive the same row. Each returned dict is the row plus its ``metadata_id``.
        """
        if batch_size <= 0:
            return []
        statement, params = self._claim_statement(
            sql.SQL(
                "SELECT config_id FROM table_control WHERE {due}"
                " ORDER BY next_load_date_time, config_id LIMIT %(_batch)s FOR UPDATE SKIP LOCKED"
            ).format(due=_DUE),
            sql.SQL("CASE WHEN c.retry_count > 0 THEN 'retry' ELSE 'sensor' END"),
        )
        with self._transaction("claim_due_tables") as conn:
            return conn.execute(statement, {**params, "_batch": int(batch_size)}).fetchall()

    def queue_manual_load(self, control_key: str, *, triggered_by: str = "ui") -> dict:
        """Queue one row now (a person's rerun); raises if it is unknown or already active."""
        with self._transaction("queue_manual_load") as conn:
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
            statement, params = self._claim_statement(
                sql.SQL("SELECT %(_config_id)s::bigint AS config_id"),
                sql.SQL("%(_triggered_by)s"),
            )
            claimed = conn.execute(
                statement,
                {**params, "_config_id": row["config_id"], "_triggered_by": triggered_by},
            ).fetchall()
            if not claimed:  # cannot happen while we hold the row lock; be explicit anyway
                raise LoadAlreadyActive(f"{control_key} could not be queued")
            # A person asked for this load: a pending review no longer blocks the row.
            conn.execute(
                "UPDATE table_control SET needs_review = false WHERE config_id = %s",
                (row["config_id"],),
            )
            return {**claimed[0], "needs_review": False}

    def start_load(
        self, config_id: int, metadata_id: int, *, dagster_run_id: str, dagster_run_url: str
    ) -> bool:
        """Queued -> In Progress for this attempt; stamps last_load_date_time and the history."""
        with self._transaction("start_load") as conn:
            rows = self._guarded_transition(
                conn,
                IN_PROGRESS,
                {QUEUED},
                where=_row_guard(metadata_id),
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
        *,
        rows_read: int | None,
        rows_written: int | None,
        watermark_after: str | None,
        message: str | None = None,
        databricks_run_url: str | None = None,
        schema_changed: bool = False,
    ) -> bool:
        """In Progress -> Succeeded, new watermark, next schedule slot, history: one transaction.

        ``schema_changed``: the load changed the destination's columns, so the staging model
        generated earlier is out of date; staging_model_processed goes back to false and the
        landing-table job regenerates the files it wrote (a person's own files stay untouched).
        """
        if message is None:
            message = f"Loaded {rows_written if rows_written is not None else '?'} rows"
        params = {
            "config_id": config_id,
            "metadata_id": metadata_id,
            "watermark": None if watermark_after is None else str(watermark_after),
            "message": self.redact(message),
            "databricks": databricks_run_url,
            "schema_changed": bool(schema_changed),
        }
        with self._transaction("record_success") as conn:
            rows = self._guarded_transition(
                conn,
                SUCCEEDED,
                {IN_PROGRESS},
                where=_row_guard(metadata_id),
                params=params,
                sets={
                    **_success_sets(),
                    "incremental_value": sql.SQL("coalesce(%(watermark)s, t.incremental_value)"),
                    "last_message": sql.SQL("%(message)s"),
                    "last_databricks_run": sql.SQL(
                        "coalesce(%(databricks)s, t.last_databricks_run)"
                    ),
                    "staging_model_processed": sql.SQL(
                        "t.staging_model_processed AND NOT %(schema_changed)s"
                    ),
                },
            )
            if rows:
                self._advance_schedule(conn, rows)
                conn.execute(
                    "UPDATE historical_metadata SET status = 'Succeeded', ended_at = now(),"
                    " rows_read = %(rows_read)s, rows_written = %(rows_written)s,"
                    " watermark_after = coalesce(%(watermark)s, watermark_before),"
                    " message = %(message)s,"
                    " databricks_run_url = coalesce(%(databricks)s, databricks_run_url)"
                    " WHERE metadata_id = %(metadata_id)s",
                    {**params, "rows_read": rows_read, "rows_written": rows_written},
                )
        return bool(rows)

    def record_failure(
        self,
        config_id: int,
        metadata_id: int,
        message: str,
        *,
        databricks_run_url: str | None = None,
    ) -> bool:
        """Queued | In Progress -> Failed for this attempt; message redacted; schedule advanced.

        The schedule moves on so a failed row is not reclaimed on the very next tick; the
        failed_monitor's retry (reset_for_retry) brings it back sooner with a back-off.
        """
        params = {
            "config_id": config_id,
            "metadata_id": metadata_id,
            "message": self.redact(message),
            "databricks": databricks_run_url,
        }
        with self._transaction("record_failure") as conn:
            rows = self._guarded_transition(
                conn,
                FAILED,
                {QUEUED, IN_PROGRESS},
                where=_row_guard(metadata_id),
                params=params,
                sets={
                    "last_message": sql.SQL("%(message)s"),
                    "last_databricks_run": sql.SQL(
                        "coalesce(%(databricks)s, t.last_databricks_run)"
                    ),
                },
            )
            if rows:
                self._advance_schedule(conn, rows)
                conn.execute(
                    "UPDATE historical_metadata SET status = 'Failed', ended_at = now(),"
                    " message = %(message)s,"
                    " databricks_run_url = coalesce(%(databricks)s, databricks_run_url)"
                    " WHERE metadata_id = %(metadata_id)s",
                    params,
                )
        return bool(rows)

    def fail_stuck_queued(self, threshold_minutes: int = 60) -> list[dict]:
        """Queued for longer than the threshold -> Failed (one guarded UPDATE); returns the rows."""
        message = f"Cancelled - stuck in queue for >{threshold_minutes} minutes"
        with self._transaction("fail_stuck_queued") as conn:
            rows = self._guarded_transition(
                conn,
                FAILED,
                {QUEUED},
                where=sql.SQL(
                    "t.last_status_date_time < now() - make_interval(mins => %(minutes)s)"
                ),
                params={"minutes": int(threshold_minutes), "message": message},
                sets={"last_message": sql.SQL("%(message)s")},
            )
            self._fail_history(conn, rows, message)
            self._advance_schedule(conn, rows)
        return rows

    def find_stuck_running(self, threshold_minutes: int = 180) -> list[dict]:
        """In Progress rows whose load started longer ago than the threshold (spec query)."""
        with self._transaction("find_stuck_running") as conn:
            return conn.execute(
                "SELECT * FROM table_control WHERE last_status = 'In Progress'"
                " AND last_load_date_time < now() - make_interval(mins => %s)"
                " ORDER BY last_load_date_time",
                (int(threshold_minutes),),
            ).fetchall()

    def fail_stuck_running(
        self, config_id: int, metadata_id: int, threshold_minutes: int = 180
    ) -> bool:
        """In Progress past the threshold -> Failed, only for this attempt; True if this won."""
        message = f"Cancelled - exceeded {threshold_minutes} minute timeout"
        with self._transaction("fail_stuck_running") as conn:
            rows = self._guarded_transition(
                conn,
                FAILED,
                {IN_PROGRESS},
                where=sql.SQL(
                    "t.config_id = %(config_id)s AND t.last_metadata_id = %(metadata_id)s"
                    " AND t.last_load_date_time < now() - make_interval(mins => %(minutes)s)"
                ),
                params={
                    "config_id": config_id,
                    "metadata_id": metadata_id,
                    "minutes": int(threshold_minutes),
                    "message": message,
                },
                sets={"last_message": sql.SQL("%(message)s")},
            )
            self._fail_history(conn, rows, message)
            self._advance_schedule(conn, rows)
        return bool(rows)

    @staticmethod
    def _fail_history(conn: psycopg.Connection, rows: Sequence[Mapping], message: str) -> None:
        ids = [r["last_metadata_id"] for r in rows if r["last_metadata_id"] is not None]
        if ids:
            conn.execute(
                "UPDATE historical_metadata SET status = 'Failed', ended_at = now(), message = %s"
                " WHERE metadata_id = ANY(%s) AND status IN ('Queued', 'In Progress')",
                (message, ids),
            )

    def claim_failed_for_analysis(
        self,
        limit: int,
        max_retries: int = 3,
        *,
        stale_after_minutes: int | None = DEFAULT_ANALYSIS_TIMEOUT_MINUTES,
    ) -> list[dict]:
        """Failed rows still eligible for a retry decision, marked as being analysed (once).

        A row whose analysis was requested more than ``stale_after_minutes`` ago and never
        decided (the analysis run died before it could write a decision) is taken back too, so
        a failure is not left unanalysed for ever; ``None`` turns that off. Each returned row
        carries ``previous_analysis_requested_at``: None for a first claim, else the stale stamp
        (the caller needs a new run key for a second analysis of the same attempt).
        """
        with self._transaction("claim_failed_for_analysis") as conn:
            return conn.execute(
                "WITH picked AS ("
                "  SELECT config_id, retry_analysis_requested_at AS previous"
                "  FROM table_control"
                "  WHERE last_status = 'Failed' AND retry_count < %(max_retries)s"
                "    AND NOT needs_review AND (retry_analysis_requested_at IS NULL"
                "      OR retry_analysis_requested_at"
                "         < now() - make_interval(mins => %(stale)s::int))"
                "  ORDER BY last_status_date_time, config_id LIMIT %(limit)s"
                "  FOR UPDATE SKIP LOCKED)"
                " UPDATE table_control t SET retry_analysis_requested_at = now()"
                " FROM picked WHERE t.config_id = picked.config_id"
                # Guard: still Failed, not under review, and the stamp is the one we read.
                " AND t.last_status = 'Failed' AND NOT t.needs_review"
                " AND t.retry_analysis_requested_at IS NOT DISTINCT FROM picked.previous"
                " RETURNING t.*, picked.previous AS previous_analysis_requested_at",
                {
                    "limit": int(limit),
                    "max_retries": int(max_retries),
                    "stale": None if stale_after_minutes is None else int(stale_after_minutes),
                },
            ).fetchall()

    def get_recent_history(self, config_id: int, limit: int = 5) -> list[dict]:
        with self._transaction("get_recent_history") as conn:
            return conn.execute(
                "SELECT * FROM historical_metadata WHERE config_id = %s"
                " ORDER BY metadata_id DESC LIMIT %s",
                (config_id, int(limit)),
            ).fetchall()

    def get_metadata(self, metadata_id: int) -> dict | None:
        with self._transaction("get_metadata") as conn:
            return conn.execute(
                "SELECT * FROM historical_metadata WHERE metadata_id = %s", (metadata_id,)
            ).fetchone()

    def get_unprocessed_landing_tables(self) -> list[dict]:
        """Succeeded rows whose staging model has not been generated yet (spec query)."""
        with self._transaction("get_unprocessed_landing_tables") as conn:
            return conn.execute(
                "SELECT * FROM table_control WHERE last_status = 'Succeeded'"
                " AND NOT staging_model_processed ORDER BY config_id"
            ).fetchall()

    def mark_staging_processed(self, config_ids: Sequence[int]) -> int:
        """Staging model generated for these rows; clears a landing note left earlier."""
        if not config_ids:
            return 0
        with self._transaction("mark_staging_processed") as conn:
            return conn.execute(
                "UPDATE table_control SET staging_model_processed = true,"
                " last_message = CASE WHEN starts_with(last_message, %(bare)s) THEN NULL"
                "   WHEN strpos(last_message, %(marker)s) > 0"
                "   THEN split_part(last_message, %(marker)s, 1)"
                "   ELSE last_message END"
                " WHERE config_id = ANY(%(ids)s) AND NOT staging_model_processed",
                {
                    "ids": list(config_ids),
                    "marker": LANDING_NOTE_SEPARATOR,
                    "bare": LANDING_NOTE_SEPARATOR.lstrip(" |"),
                },
            ).rowcount

    def note_landing_problem(self, config_id: int, message: str) -> bool:
        """Tell operators why a loaded table got no staging model yet, in ``last_message``.

        Guarded like a status change but it changes no status: only a Succeeded row still
        waiting for its staging model is touched, and the load's own message is kept in front
        (``Loaded 5 rows | [Landing] ...``); a later note replaces an earlier one instead of
        piling up. True if the row was in that state.
        """
        note = self.redact(message)
        with self._transaction("note_landing_problem") as conn:
            return (
                conn.execute(
                    "UPDATE table_control SET last_message ="
                    " CASE WHEN coalesce(last_message, '') = '' OR"
                    "   starts_with(last_message, %(bare)s) THEN %(bare)s || %(note)s"
                    " ELSE split_part(last_message, %(marker)s, 1) || %(marker)s || %(note)s END"
                    " WHERE config_id = %(config_id)s AND last_status = 'Succeeded'"
                    " AND NOT staging_model_processed",
                    {
                        "config_id": config_id,
                        "note": note,
                        "marker": LANDING_NOTE_SEPARATOR,
                        "bare": LANDING_NOTE_SEPARATOR.lstrip(" |"),
                    },
                ).rowcount
                > 0
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


def _success_sets() -> dict[str, sql.Composable]:
    return {
        "retry_count": sql.SQL("0"),
        "force_full_reload": sql.SQL("false"),
        "needs_review": sql.SQL("false"),
        "retry_analysis_requested_at": sql.SQL("NULL"),
    }


def _row_guard(metadata_id: int | None) -> sql.Composable:
    """This row, and when known, only while it still belongs to this load attempt."""
    if metadata_id is None:
        return sql.SQL("t.config_id = %(config_id)s")
    return sql.SQL("t.config_id = %(config_id)s AND t.last_metadata_id = %(metadata_id)s")


def _lock_row(conn: psycopg.Connection, config_id: int) -> dict | None:
    return conn.execute(
        "SELECT * FROM table_control WHERE config_id = %s FOR UPDATE", (config_id,)
    ).fetchone()


def _expected_states(status: str | None, expected_status: Any) -> set[str | None]:
    if status not in ALLOWED_FROM:
        raise ValueError(f"unknown status {status!r}; expected one of {STATUSES}")
    if expected_status is _DEFAULT:
        return set(ALLOWED_FROM[status])
    if expected_status is None or isinstance(expected_status, str):
        return {expected_status}
    return set(expected_status)


def _next_slot(row: Mapping, now: datetime) -> datetime | None:
    return next_load_time(
        now,
        cron=row.get("schedule_cron"),
        timezone=row.get("schedule_timezone") or "UTC",
        interval=row.get("schedule_interval"),
    )


def _conninfo_password(conninfo: str) -> str | None:
    try:
        return psycopg.conninfo.conninfo_to_dict(conninfo).get("password")
    except psycopg.Error:
        return None
