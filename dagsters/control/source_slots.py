"""Queue-aware claiming and queue-timeout handling: the per-source limit and the queue agree.

Dagster starts at most ``source_concurrency`` loads per source system at once (a tag concurrency
limit on ``dataloader/source_system``). A claimed row is Queued until its run starts; once it waits
longer than the queue threshold, longqueued_monitor fails it. If master_sensor claimed 10 rows a
minute whatever the depth of the queue, 50 tables of one source would sit Queued behind a limit of
2 for hours and be failed for nothing.

So master_sensor claims a row only when its source has a free slot: the rows of a source that are
already Queued or In Progress (whatever started them: the sensor, a retry, a person's rerun) count
against the limit, and only ``limit - in flight`` more are claimed. Everything claimed can start
right away; the others stay unclaimed (and due) in table_control, in due order, until a slot frees.

The source system is computed in SQL exactly as :func:`dagsters.policy.run_requests.source_system`
computes the run tag (a test holds the two together).
"""

from __future__ import annotations

from psycopg import sql

from dagsters.control.claims import _DUE, _claim_statement
from dagsters.control.connection import ControlDatabase
from dagsters.control.rows import FAILED, QUEUED, ClaimedRow, ControlRow, fetch_all
from dagsters.control.stuck import STUCK_IN_QUEUE, fail_history
from dagsters.control.transitions import advance_schedule, guarded_transition
from databricks_scripts.contract import KIND_STUCK_QUEUED

# run_requests.source_system in SQL: ``connection:<name>`` for a row naming a source_connection,
# else db_type:host[:port]; unsafe characters -> "_", 200 chars.
SOURCE_SYSTEM_SQL = sql.SQL(
    "left(btrim(regexp_replace("
    "CASE WHEN coalesce(t.connection_name, '') <> '' THEN 'connection:' || t.connection_name ELSE"
    " coalesce(t.db_type, 'None') || ':' || coalesce(nullif(t.db_config_value->>'host', ''),"
    " nullif(t.db_config_value->>'server_hostname', ''), 'unknown')"
    " || coalesce(':' || nullif(nullif(t.db_config_value->>'port', ''), '0'), '') END,"
    " '[^A-Za-z0-9_.-]+', '_', 'g'), '_'), 200)"
)

# Rows holding a slot. Two halves so each uses its partial index (table_control_queued_idx,
# table_control_in_progress_idx, sql/002): `last_status IN (...)` scans all 100k rows instead.
_IN_FLIGHT = sql.SQL(
    "SELECT t.db_type, t.db_config_value, t.connection_name FROM table_control t"
    " WHERE t.last_status = 'Queued'"
    " UNION ALL SELECT t.db_type, t.db_config_value, t.connection_name FROM table_control t"
    " WHERE t.last_status = 'In Progress'"
)

# The same rows with their attempt, for counting batch runs (claim_due_batch).
_IN_FLIGHT_ATTEMPTS = sql.SQL(
    "SELECT t.config_id, t.db_type, t.db_config_value, t.connection_name, t.last_metadata_id"
    " FROM table_control t WHERE t.last_status = 'Queued'"
    " UNION ALL SELECT t.config_id, t.db_type, t.db_config_value, t.connection_name,"
    " t.last_metadata_id FROM table_control t WHERE t.last_status = 'In Progress'"
)


# Both claims lock their candidates with ``WHERE {due} AND config_id IN (...) FOR UPDATE SKIP
# LOCKED``: the {due} there is what Postgres re-checks on a row another claimer committed after this
# statement's snapshot (it is Queued now), so the row is skipped; ``config_id IN`` alone would pass
# the re-check and the row would get a second history row (test_lakebase_client's eight threads).


class SourceSlotsSql(ControlDatabase):
    """Claims bounded by free per-source slots; one stuck queued attempt failed at a time."""

    def claim_due_tables_within_source_limit(
        self, batch_size: int, per_source_limit: int
    ) -> list[ClaimedRow]:
        """Claim up to ``batch_size`` due rows (oldest due first), never more in flight per
        source than the limit: Queued + a history row each, in one statement (master_sensor's).

        Due rows are ranked per source system in due order; a row is a candidate only when its
        rank fits in the slots its source has left. Candidates are locked with FOR UPDATE SKIP
        LOCKED, so concurrent callers never receive the same row. Each returned row carries its
        attempt's ``metadata_id``.
        """
        if batch_size <= 0 or per_source_limit <= 0:
            return []
        candidates = sql.SQL(
            "WITH inflight AS ("
            "  SELECT {src} AS src, count(*) AS n FROM ({rows}) t GROUP BY 1),"
            " ranked AS ("
            "  SELECT t.config_id, t.next_load_date_time, {src} AS src,"
            "   row_number() OVER (PARTITION BY {src}"
            "    ORDER BY t.next_load_date_time, t.config_id) AS rank"
            "  FROM table_control t WHERE {due})"
            " SELECT config_id FROM table_control WHERE {due} AND config_id IN ("
            "  SELECT r.config_id FROM ranked r LEFT JOIN inflight i USING (src)"
            "  WHERE r.rank <= %(_per_source)s - coalesce(i.n, 0)"
            "  ORDER BY r.next_load_date_time, r.config_id LIMIT %(_batch)s)"
            " ORDER BY next_load_date_time, config_id FOR UPDATE SKIP LOCKED"
        ).format(src=SOURCE_SYSTEM_SQL, due=_DUE, rows=_IN_FLIGHT)
        statement, params = _claim_statement(
            candidates, sql.SQL("CASE WHEN c.retry_count > 0 THEN 'retry' ELSE 'sensor' END")
        )
        values = {**params, "_batch": int(batch_size), "_per_source": int(per_source_limit)}
        with self._transaction("claim_due_tables_within_source_limit") as conn:
            return fetch_all(conn, ClaimedRow, statement, values)

    def claim_due_batch(self, rows_per_run: int, per_source_limit: int) -> list[ClaimedRow]:
        """Claim up to ``rows_per_run`` due rows of one source system, for one batch run.

        The source is the one of the earliest due row whose source has a free slot. A slot is a
        run, not a row: the in-flight rows of one claim (one transaction, so one ``queued_at`` on
        their history rows) are one batch run, loaded one after the other; a run of one table
        (the sensor's, a retry's, a person's) is a claim of its own. Each call is one
        transaction, so every batch has its own ``queued_at``.
        """
        if rows_per_run <= 0 or per_source_limit <= 0:
            return []
        candidates = sql.SQL(
            "WITH inflight AS ("
            "  SELECT {src} AS src,"
            "   count(DISTINCT coalesce(h.queued_at::text, 'row ' || t.config_id)) AS n"
            "  FROM ({rows}) t LEFT JOIN historical_metadata h"
            "   ON h.metadata_id = t.last_metadata_id GROUP BY 1),"
            " due AS ("
            "  SELECT t.config_id, t.next_load_date_time, {src} AS src"
            "  FROM table_control t WHERE {due}),"
            " source AS ("
            "  SELECT d.src FROM due d LEFT JOIN inflight i USING (src)"
            "  WHERE coalesce(i.n, 0) < %(_per_source)s"
            "  ORDER BY d.next_load_date_time, d.config_id LIMIT 1)"
            " SELECT config_id FROM table_control WHERE {due} AND config_id IN ("
            "  SELECT d.config_id FROM due d JOIN source USING (src)"
            "  ORDER BY d.next_load_date_time, d.config_id LIMIT %(_batch)s)"
            " ORDER BY next_load_date_time, config_id FOR UPDATE SKIP LOCKED"
        ).format(src=SOURCE_SYSTEM_SQL, due=_DUE, rows=_IN_FLIGHT_ATTEMPTS)
        statement, params = _claim_statement(
            candidates, sql.SQL("CASE WHEN c.retry_count > 0 THEN 'retry' ELSE 'sensor' END")
        )
        values = {**params, "_batch": int(rows_per_run), "_per_source": int(per_source_limit)}
        with self._transaction("claim_due_batch") as conn:
            return fetch_all(conn, ClaimedRow, statement, values)

    def find_stuck_queued(self, threshold_minutes: int) -> list[ControlRow]:
        """Rows Queued for longer than the threshold (read only; longqueued_monitor's list)."""
        with self._transaction("find_stuck_queued") as conn:
            return fetch_all(
                conn,
                ControlRow,
                "SELECT * FROM table_control WHERE last_status = 'Queued'"
                " AND last_status_date_time < now() - make_interval(mins => %s)"
                " ORDER BY last_status_date_time",
                (int(threshold_minutes),),
            )

    def fail_stuck_queued_attempt(
        self, config_id: int, metadata_id: int | None, threshold_minutes: int
    ) -> bool:
        """This attempt, still Queued past the threshold -> Failed; True if this call won."""
        message = STUCK_IN_QUEUE.format(minutes=threshold_minutes)
        with self._transaction("fail_stuck_queued_attempt") as conn:
            rows = guarded_transition(
                conn,
                FAILED,
                {QUEUED},
                where=sql.SQL(
                    "t.config_id = %(config_id)s"
                    " AND t.last_metadata_id IS NOT DISTINCT FROM %(metadata_id)s"
                    " AND t.last_status_date_time < now() - make_interval(mins => %(minutes)s)"
                ),
                params={
                    "config_id": config_id,
                    "metadata_id": metadata_id,
                    "minutes": int(threshold_minutes),
                    "message": message,
                },
                sets={"last_message": sql.SQL("%(message)s")},
                failure_kind=KIND_STUCK_QUEUED,
            )
            fail_history(conn, rows, message, KIND_STUCK_QUEUED)
            advance_schedule(conn, rows)
        return bool(rows)
