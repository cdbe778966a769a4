"""The control-row side of retries: claim a failure for analysis, then apply the decision.

:mod:`dagsters.policy.retry_analysis` decides; this module holds the SQL that claims a Failed
row for an analysis (once) and writes the decision back: reset the row for a retry after a
back-off, or keep it Failed for a person's review, and record the decision in the history row.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import psycopg
from psycopg import sql

from dagsters.control.connection import ControlDatabase
from dagsters.control.rows import FAILED, AnalysisClaim, ControlRow, fetch_all, fetch_one
from dagsters.control.transitions import guarded_transition, row_guard
from dagsters.policy.schedule import retry_backoff
from databricks_scripts.contract import KIND_CANCELLED, REQUIRES_REVIEW, RETRY_RECOMMENDED, Decision
from databricks_scripts.redaction import redact

RETRY_MARKER = f"[AI Analysis - {RETRY_RECOMMENDED}] "
REVIEW_MARKER = f"[AI Analysis - {REQUIRES_REVIEW}] "
# failed_monitor takes back a failure whose analysis was requested this long ago and never decided.
DEFAULT_ANALYSIS_TIMEOUT_MINUTES = 60
# The failure's own text kept after the decision in last_message (bounded: a stack trace can be
# pages long; the history row keeps the whole message).
CAUSE_CHARS = 1000
CAUSE_SEPARATOR = " | Cause: "


class RetrySql(ControlDatabase):
    """Claim Failed rows for a retry decision; reset them for a retry or send them to review."""

    def claim_failed_for_analysis(
        self,
        limit: int,
        max_retries: int = 3,
        *,
        stale_after_minutes: int | None = DEFAULT_ANALYSIS_TIMEOUT_MINUTES,
    ) -> list[AnalysisClaim]:
        """Failed rows still eligible for a retry decision, marked as being analysed (once).

        A row whose analysis was requested more than ``stale_after_minutes`` ago and never
        decided (the analysis run died before it could write a decision) is taken back too, so
        a failure is not left unanalysed for ever; ``None`` turns that off. Each returned row
        carries ``previous_analysis_requested_at``: None for a first claim, else the stale stamp
        (the caller needs a new run key for a second analysis of the same attempt).
        """
        with self._transaction("claim_failed_for_analysis") as conn:
            return fetch_all(
                conn,
                AnalysisClaim,
                "WITH picked AS ("
                "  SELECT config_id, retry_analysis_requested_at AS previous"
                "  FROM table_control"
                "  WHERE last_status = 'Failed' AND retry_count < %(max_retries)s"
                "    AND NOT needs_review"
                # A person's terminate stays Failed with its message: nothing to analyse.
                "    AND last_failure_kind IS DISTINCT FROM %(terminated)s"
                "    AND (retry_analysis_requested_at IS NULL"
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
                    "terminated": KIND_CANCELLED,
                    "stale": None if stale_after_minutes is None else int(stale_after_minutes),
                },
            )

    def reset_for_retry(
        self,
        config_id: int,
        reason: str,
        *,
        metadata_id: int | None = None,
        decision: Mapping[str, Any] | Decision | None = None,
        secrets: Iterable[str] = (),
    ) -> bool:
        """Failed -> NULL (ready) after a back-off, retry_count + 1; True if this caller won."""
        with self._transaction("reset_for_retry") as conn:
            current = _lock_row(conn, config_id)
            if current is None or current.last_status != FAILED:
                return False
            rows = guarded_transition(
                conn,
                None,
                {FAILED},
                where=row_guard(metadata_id),
                params={
                    "config_id": config_id,
                    "metadata_id": metadata_id,
                    "message": self.redact(
                        decided_message(
                            RETRY_MARKER, reason, decision, current.last_message, secrets
                        )
                    ),
                    "backoff": retry_backoff(current.retry_count),
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
        decision: Mapping[str, Any] | Decision | None = None,
        secrets: Iterable[str] = (),
    ) -> bool:
        """Failed stays Failed with needs_review, so no sensor picks it up until a person acts."""
        with self._transaction("mark_for_review") as conn:
            current = _lock_row(conn, config_id)
            if current is None or current.last_status != FAILED:
                return False
            rows = guarded_transition(
                conn,
                FAILED,
                {FAILED},
                where=row_guard(metadata_id),
                params={
                    "config_id": config_id,
                    "metadata_id": metadata_id,
                    "message": self.redact(
                        decided_message(
                            REVIEW_MARKER, reason, decision, current.last_message, secrets
                        )
                    ),
                },
                sets={"needs_review": sql.SQL("true"), "last_message": sql.SQL("%(message)s")},
            )
            if rows:
                self._store_decision(conn, rows[0], metadata_id, decision, reason)
        return bool(rows)

    def _store_decision(
        self,
        conn: psycopg.Connection[Any],
        row: ControlRow,
        metadata_id: int | None,
        decision: Mapping[str, Any] | Decision | None,
        reason: str,
    ) -> None:
        if metadata_id is None and decision is None:
            return
        decision = _decision_values(decision)
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
                "metadata_id": metadata_id if metadata_id is not None else row.last_metadata_id,
                "config_id": row.config_id,
            },
        )


def decided_message(
    marker: str,
    reason: str,
    decision: Mapping[str, Any] | Decision | None,
    failure: str | None,
    secrets: Iterable[str] = (),
) -> str:
    """last_message after a decision: the spec's marker, the reason, who decided, and the cause.

    ``[AI Analysis - Requires Review] <reason> (decided by <decider>) | Cause: <the failure>``:
    the control row alone still says what broke. The failure text is the row's message before
    the decision (an earlier decision's own marker and reason are not repeated), clipped to
    ``CAUSE_CHARS``, and redacted with ``secrets`` (the process's own secret values): a message
    written by something that did not redact does not survive the decision with a secret in it.
    """
    decider = _decision_values(decision).get("decider")
    text = marker + reason.strip()
    if decider:
        text += f" (decided by {decider})"
    cause = redact(_original_cause(failure), list(secrets)) if failure else ""
    if cause:
        if len(cause) > CAUSE_CHARS:
            cause = cause[: CAUSE_CHARS - 1] + "…"
        text += CAUSE_SEPARATOR + cause
    return text


def _original_cause(message: str | None) -> str:
    """The failure text of a last_message, without a decision written over it earlier."""
    message = (message or "").strip()
    if message.startswith((RETRY_MARKER, REVIEW_MARKER)):
        _, found, cause = message.partition(CAUSE_SEPARATOR)
        return cause.strip() if found else ""
    return message


def _lock_row(conn: psycopg.Connection[Any], config_id: int) -> ControlRow | None:
    return fetch_one(
        conn,
        ControlRow,
        "SELECT * FROM table_control WHERE config_id = %s FOR UPDATE",
        (config_id,),
    )


def _decision_values(decision: Mapping[str, Any] | Decision | None) -> dict[str, Any]:
    """A decision as the dict of its fields (a contract ``Decision`` or a mapping of them)."""
    if isinstance(decision, Decision):
        return decision.as_dict()
    return dict(decision or {})
