"""Retry analysis on the code-location side: what the script is told, and what its answer does.

``dataloader__retry_analysis`` (and failed_monitor for rows out of retries) call these around the
Pipes run of ``databricks_scripts/dataloader_retry_pipe.py``:

1. ``decide_without_asking(row, policy)``: a row that has used its retries goes to review, no
   model asked. The limit is the settings' retry policy (``DATALOADER_MAX_RETRIES``), nothing else.
2. ``build_analysis_request(row, history, settings)``: the script's params, redacted, without
   credentials.
3. ``apply_decision(client, row, decision, secrets=...)``: the guarded transition in Lakebase.
4. ``decide_by_rules(row, why)``: when the script could not run or answer, the deterministic rules
   decide here instead of sending the table to review.

No Dagster imports: plain data in, plain data out, unit-testable against PostgreSQL alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from dagsters.alerts import Alert, Notifier
from dagsters.control.rows import ControlRow
from dagsters.settings import RetryPolicy, Settings
from databricks_scripts.contract import Decision
from databricks_scripts.failures import decision_for_kind
from databricks_scripts.redaction import redact
from databricks_scripts.retry.classifier import UNKNOWN, classify_error

if TYPE_CHECKING:
    from dagsters.utils.lakebase_client import LakebaseClient

HISTORY_ATTEMPTS = 5
# Spark and JDBC errors can be pages of stack trace; the cause is usually at the top and the
# innermost "Caused by" at the bottom, so both ends are kept.
_ERROR_HEAD_CHARS = 3000
_ERROR_TAIL_CHARS = 1000
_HISTORY_MESSAGE_CHARS = 600
_DEFAULT_SETTINGS = Settings()
_REASON_LIMIT = 1000

RETRIED = "retried"
REVIEW = "review"
LOST = "lost"


def decide_without_asking(row: ControlRow, policy: RetryPolicy) -> Decision | None:
    """A decision by rule, or None when the script (model or rules) should decide.

    Review for a row whose retries are used up; for a failure with a kind
    (``last_failure_kind``: a monitor's, the load script's own) the kind's rule
    (``failures.KIND_RULES``: stuck in queue: retry; exceeded the running timeout: review; ...),
    its message text unread. Only a foreign error (no kind) goes to the script. A person's
    terminate never gets here: failed_monitor does not claim it (kind ``cancelled``).
    """
    retry_count = int(row.retry_count or 0)
    if retry_count < policy.max_retries:
        return decision_for_kind(row.last_failure_kind)
    return Decision.review(
        f"Failed again after {retry_count} of {policy.max_retries} automatic retries, so a "
        "person should look before it is loaded again.",
        decider="rules",
    )


def decide_by_rules(row: ControlRow, why_not_asked: str) -> Decision:
    """The deterministic rules' decision on the row's error, taken inside the code location.

    Used when the retry-analysis script itself could not run or answer (cluster gone, model
    down): the same rules the script falls back to (``retry.classifier``), so a transient fault
    is retried instead of every affected table going to review. A failure with a kind is decided
    by its kind, as everywhere.
    """
    by_kind = decision_for_kind(row.last_failure_kind)
    if by_kind is not None:
        return by_kind
    rules = classify_error(str(row.last_message or ""), row.last_failure_code)
    confidence = 0.5 if rules.category == UNKNOWN else 0.9
    reason = f"{rules.reason} (decided in the code location: {why_not_asked})"
    return Decision(rules.decision, confidence, reason[:_REASON_LIMIT], "rules")


def build_analysis_request(
    row: ControlRow,
    history: Sequence[Mapping[str, Any]],
    settings: Settings = _DEFAULT_SETTINGS,
) -> dict:
    """The script's params: the failure, which table, how it loads, the last few attempts.

    Built from a whitelist of columns, so ``db_config_value`` (hosts, users, secret names) and
    anything added to table_control later never leave by accident; every text is redacted.
    """
    secrets = list(settings.secrets)
    latest = row.last_metadata_id
    attempts = sorted(history, key=lambda h: h.get("metadata_id") or 0, reverse=True)
    error = row.last_message
    if not error:
        error = next((h.get("message") for h in attempts if h.get("metadata_id") == latest), None)
    request = {
        "config_id": row.config_id,
        "control_key": row.control_key,
        "metadata_id": latest,
        "table": {
            "source": _dotted(row.source_catalog, row.source_schema_name, row.source_table_name),
            "destination": _dotted(
                row.destination_catalog, row.destination_schema_name, row.destination_table_name
            ),
        },
        "db_type": row.db_type,
        "load_strategy": row.load_strategy,
        "incremental_column": row.incremental_column,
        "merge_keys": list(row.merge_keys or []) or None,
        "retry_count": int(row.retry_count or 0),
        "max_retries": settings.retry.max_retries,
        "failed_at": _plain(row.last_status_date_time),
        # The failure's kind (contract.FAILURE_KINDS), None for a foreign error: the script
        # decides a kind by its rule, without the classifier or a model.
        "failure_kind": row.last_failure_kind,
        # A foreign error's driver code (sql/018; SQLSTATE, MySQL number, ORA-, ...): the rules
        # decide by it before the text.
        "failure_code": row.last_failure_code,
        "error_message": redact(_clip_error(error), secrets),
        "recent_attempts": [_attempt(h, secrets) for h in attempts[:HISTORY_ATTEMPTS]],
    }
    if settings.advisor:
        request["advisor"] = dict(settings.advisor)
    return request


def apply_decision(
    client: LakebaseClient,
    row: ControlRow,
    decision: Decision,
    *,
    secrets: Iterable[str] = (),
    notifier: Notifier | None = None,
    on_review: Callable[[str], None] | None = None,
) -> str:
    """Apply a decision to the failed attempt; 'retried', 'review', or 'lost' if another actor won.

    A row sent to review is announced through ``notifier`` (Slack / Teams), when one is given,
    and ``on_review(reason)`` is called (the caller records it on the assets a person looks at).

    Anything that is not a clear ``Retry Recommended`` is review (``Decision`` sees to that): a
    wrong review costs a person a look, a wrong retry loops on a broken load.
    """
    secrets = list(secrets)
    reason = redact(decision.reason, secrets)
    stored = {**decision.as_dict(), "reason": reason}
    transition = client.reset_for_retry if decision.retry else client.mark_for_review
    won = transition(
        row.config_id,
        reason,
        metadata_id=row.last_metadata_id,
        decision=stored,
        secrets=secrets,
    )
    if not won:
        return LOST
    if not decision.retry and notifier is not None:
        notifier.send(Alert.for_row("DataLoader: a table needs review", row, reason))
    if not decision.retry and on_review is not None:
        on_review(reason)
    return RETRIED if decision.retry else REVIEW


def _attempt(history_row: Mapping[str, Any], secrets: list[str]) -> dict:
    message = history_row.get("message")
    if message and len(message) > _HISTORY_MESSAGE_CHARS:
        message = message[: _HISTORY_MESSAGE_CHARS - 1] + "…"
    return {
        "metadata_id": history_row.get("metadata_id"),
        "triggered_by": history_row.get("triggered_by"),
        "status": history_row.get("status"),
        "started_at": _plain(history_row.get("started_at")),
        "ended_at": _plain(history_row.get("ended_at")),
        "rows_written": _plain(history_row.get("rows_written")),
        "message": redact(message, secrets) if message else None,
        "retry_decision": history_row.get("retry_decision"),
        "retry_reason": redact(history_row.get("retry_reason"), secrets)
        if history_row.get("retry_reason")
        else None,
    }


def _clip_error(text: str | None) -> str:
    text = text or ""
    if len(text) <= _ERROR_HEAD_CHARS + _ERROR_TAIL_CHARS:
        return text
    return text[:_ERROR_HEAD_CHARS] + "\n…\n" + text[-_ERROR_TAIL_CHARS:]


def _dotted(*parts: Any) -> str:
    return ".".join(str(p) for p in parts if p)


def _plain(value: Any) -> Any:
    """JSON-friendly value: Pipes extras are serialised as JSON."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value
