"""Decide from an error's code, else its message, whether a failed load is worth retrying.

This is the deterministic fallback of retry analysis: it decides when no chat model is configured,
when the model gives no usable answer, and it is the second opinion recorded next to a model's
answer. Transient faults (the network, locks, throttling, a cluster that is not ready) are worth a
retry; permanent faults (credentials, permissions, missing objects, bad SQL, bad data, bad
configuration) are not, and neither is anything we do not recognise: an unknown error sent around
the retry loop three times only delays the moment a person looks at it.

A code the driver gave (``retry.codes``: a SQLSTATE, a MySQL/SQL Server number, an ORA-/DPY-
code, a Databricks error class, an HTTP status) decides first; the text is the fallback, read when
there is no code or the code decides nothing by itself (a generic ``HY000``).

Standard library only: the Pipes script imports this module on Databricks clusters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# The decision names are the wire contract's; re-exported for this module's callers.
from databricks_scripts.contract import DECISIONS, REQUIRES_REVIEW, RETRY_RECOMMENDED
from databricks_scripts.retry.codes import PERMANENT, TRANSIENT, code_from_text, rule_for_code

UNKNOWN = "unknown"

__all__ = [
    "CANCELLATION_RULES",
    "DECISIONS",
    "PERMANENT",
    "QUEUE_TIMEOUT_RULE",
    "REQUIRES_REVIEW",
    "RETRY_RECOMMENDED",
    "RUN_TIMEOUT_RULE",
    "TERMINATED_RULE",
    "TRANSIENT",
    "UNKNOWN",
    "Classification",
    "classify_error",
]


@dataclass(frozen=True)
class Classification:
    """What the rules concluded about one error message."""

    category: str  # TRANSIENT | PERMANENT | UNKNOWN
    rule: str | None  # name of the first rule that matched, None when nothing did
    reason: str  # one sentence a person can read in last_message
    code: str | None = None  # the driver's code (retry.codes), when the failure has one

    @property
    def decision(self) -> str:
        return RETRY_RECOMMENDED if self.category == TRANSIENT else REQUIRES_REVIEW


@dataclass(frozen=True)
class _Rule:
    name: str
    category: str
    pattern: re.Pattern[str]
    explanation: str


def _rule(name: str, category: str, explanation: str, *patterns: str) -> _Rule:
    return _Rule(name, category, re.compile("|".join(patterns), re.IGNORECASE), explanation)


# Our own "Cancelled - ..." messages (the asset's terminate, the two stuck-load monitors) are not
# decided here: they are written with a failure kind (contract.FAILURE_KINDS; sql/014 gave the
# rows failed before it theirs) and decided by the kind (failures.KIND_RULES), without this module
# or a model. These three rules only keep the same decisions for such a text that reaches the
# classifier without its kind (typed by hand into last_message, or an old analysis request),
# matched first and only at the start of the message:
# - a person terminated the run: not retried;
# - longqueued_monitor ("stuck in queue"): the run never started, nothing was read; retried;
# - longrunning_monitor ("exceeded ... timeout"): the same load will most likely run as long again,
#   so a person decides (a bigger cluster, a higher threshold, an incremental strategy).
TERMINATED_RULE = "cancelled_by_person"
QUEUE_TIMEOUT_RULE = "cancelled_stuck_in_queue"
RUN_TIMEOUT_RULE = "cancelled_run_timeout"
CANCELLATION_RULES = (TERMINATED_RULE, QUEUE_TIMEOUT_RULE, RUN_TIMEOUT_RULE)
EXPIRED_TOKEN_RULE = "expired_token"

# First match wins, so the order is the design: a message often carries several layers (a Spark
# wrapper around a JDBC error around a socket error), and the most specific cause must be found
# before the generic wrapper. Credentials and permissions come first because a refused login is
# often worded as a failed connection (pymssql: "Login failed ... Adaptive Server connection
# failed"). Specific permanent causes (a missing table, a cast error) come before the broad transient
# words (timeout, 503, cluster) that also appear in stack traces and configuration dumps, and
# "Unexpected error" comes last because it wraps anything.
_RULES: tuple[_Rule, ...] = (
    _rule(
        TERMINATED_RULE,
        PERMANENT,
        "a person terminated the run, so it is not retried; it loads again when someone "
        "reruns it or clears the row",
        r"^\s*Cancelled - Dagster run \S+ was terminated",
    ),
    _rule(
        QUEUE_TIMEOUT_RULE,
        TRANSIENT,
        "the run waited in the queue past the long-queued threshold and never started, so "
        "nothing was read and a later attempt usually gets a slot",
        r"^\s*Cancelled - stuck in queue for",
    ),
    _rule(
        RUN_TIMEOUT_RULE,
        PERMANENT,
        "the load ran past the long-running threshold and was cancelled; it will most likely "
        "run as long again, so a person decides (more compute, a higher threshold, an "
        "incremental strategy)",
        r"^\s*Cancelled - exceeded \d+ minute timeout",
    ),
    # DataLoader takes a fresh OAuth token for every run (the workspace, Lakebase, cloud storage on
    # Databricks), so a token that expired mid-run is gone in the next one. A *password* that has
    # expired (ORA-28001, MySQL 1862) is not a token and stays with "authentication".
    _rule(
        EXPIRED_TOKEN_RULE,
        TRANSIENT,
        "an OAuth token expired during the run, and every run takes a fresh one",
        r"\b(?:oauth |access |bearer |id |security |session )?token (?:has |is )?expired\b",
        r"\bexpired (?:oauth |access |bearer |id |security |session )?token\b",
        r"\bExpiredToken(?:Exception)?\b|\btoken[_ ]expired\b|\bJWT expired\b",
        r"\btoken\b.{0,40}\b(?:is|has) expired\b",
    ),
    _rule(
        "authentication",
        PERMANENT,
        "the source refused the credentials, which a retry will not change",
        r"password authentication failed",
        r"authentication failed",
        r"login failed for user",
        r"access denied for user",
        r"invalid username/password",
        r"\bORA-01017\b",
        r"\bORA-28000\b|account is locked",
        r"\bORA-28001\b|password has expired",
        r"no pg_hba\.conf entry",
        r"invalid (?:access )?token|invalid credentials|\b401\b.{0,20}unauthori[sz]ed",
        r"secret does not exist|no secret (?:named|found)",
    ),
    _rule(
        "permission",
        PERMANENT,
        "the load's user lacks a privilege, which needs a grant from a person",
        r"permission denied",
        r"permission was denied",
        r"insufficient[_ ]privileges?|insufficient[_ ]permissions?",
        r"command denied to user",
        r"\bORA-01031\b",
        r"\bPERMISSION_DENIED\b",
        r"does not have (?:permission|privilege|\w+ (?:privilege|permission) on)",
        r"\b403\b.{0,20}forbidden|not authori[sz]ed to",
    ),
    _rule(
        "lock_conflict",
        TRANSIENT,
        "the source was busy with a conflicting lock or transaction, which clears by itself",
        r"deadlock",
        r"lock wait timeout",
        r"lock timeout|lock request time out",
        r"could not obtain lock",
        r"could not serialize access",
        r"\bORA-00054\b|resource busy and acquire with nowait",
        r"\bORA-01555\b|snapshot too old",
        r"conflict with recovery",
        r"try restarting transaction|rerun the transaction",
        r"Concurrent(?:Append|Delete\w*|Transaction|Modification)Exception",
        r"DELTA_CONCURRENT_\w+",
    ),
    _rule(
        "statement_cancelled",
        TRANSIENT,
        "the source cancelled the statement (a statement timeout or an operator's cancel), which "
        "a later attempt usually gets past",
        r"canceling statement due to (?:statement timeout|user request)",
        r"query execution was interrupted|max(?:imum)?[_ ]statement[_ ](?:execution[_ ])?time",
        r"user requested cancel of current operation",
    ),
    _rule(
        "bad_configuration",
        PERMANENT,
        "the load's configuration points at something that does not exist or is not allowed",
        r"cluster \S+ does not exist",
        r"\bRESOURCE_DOES_NOT_EXIST\b|\bINVALID_PARAMETER_VALUE\b",
        r"name or service not known|nodename nor servname|unknown host|no such host",
        r"unsupported (?:db_type|database type|load strategy)",
        r"invalid (?:configuration|connection string)|missing required (?:setting|parameter|key)",
        r"spark\.driver\.maxResultSize",
    ),
    _rule(
        "connection",
        TRANSIENT,
        "the connection to the source failed or dropped, which is usually temporary",
        r"connection (?:refused|reset|timed out|aborted)",
        r"connection (?:was )?(?:closed|lost|terminated)",
        r"server closed the connection unexpectedly",
        r"ssl syscall error|ssl connection has been closed unexpectedly",
        r"could not connect to server|can't connect to mysql server|unable to connect",
        r"lost connection to mysql server|mysql server has gone away",
        r"adaptive server (?:is unavailable|connection (?:failed|timed out))",
        r"existing connection was forcibly closed",
        r"communications? link failure",
        r"end-of-file on communication channel|not connected to oracle",
        r"\bORA-0311[34]\b|\bORA-03135\b|\bORA-1254[1]\b|\bORA-12170\b",
        r"\bORA-1251[4689]\b|\bORA-12520\b|\bORA-12528\b|\bORA-12537\b|TNS:",
        r"\bDPY-(?:4011|6005)\b|database or network closed the connection",
        r"broken pipe|network is unreachable|no route to host",
        r"temporary failure in name resolution",
        r"could not (?:receive|send) data (?:from|to) (?:server|client)",
    ),
    _rule(
        "source_unavailable",
        TRANSIENT,
        "the source was restarting, overloaded or out of connections",
        r"too many (?:connections|clients)",
        r"remaining connection slots are reserved|\bmax_user_connections\b",
        r"sessions_per_user|\bORA-02391\b|\bORA-00018\b|\bORA-00020\b",
        r"database system is (?:starting up|shutting down|in recovery mode|not yet accepting)",
        r"initialization or shutdown in progress|\bORA-01033\b|\bORA-01034\b",
        r"terminating connection due to administrator command",
        r"is not currently available|database .{0,40}is (?:currently )?unavailable",
        r"server is in script upgrade mode",
    ),
    _rule(
        "missing_object",
        PERMANENT,
        "a table, column, schema or database the load needs does not exist",
        r"relation \S+ does not exist|(?:table|view|schema|database|column) \S+ does not exist",
        r"doesn't exist|does not exist",
        r"TABLE_OR_VIEW_NOT_FOUND|SCHEMA_NOT_FOUND|UNRESOLVED_COLUMN|PATH_NOT_FOUND",
        r"invalid object name|invalid column name|unknown column|unknown database|unknown table",
        r"\bORA-00942\b|\bORA-00904\b|invalid identifier",
        r"cannot be (?:found|resolved)",
    ),
    _rule(
        "syntax",
        PERMANENT,
        "the generated or configured SQL is not valid",
        r"syntax error|PARSE_SYNTAX_ERROR|error in your sql syntax|incorrect syntax near",
        r"\bORA-0093[36]\b|sql command not properly ended|missing expression",
    ),
    _rule(
        "data_type",
        PERMANENT,
        "a value does not fit its column type, which needs a change to data or mapping",
        r"invalid input syntax for type|invalid input value",
        r"CAST_INVALID_INPUT|cannot be cast|cannot cast|conversion failed",
        r"\bORA-01722\b|invalid number|\bORA-01861\b|literal does not match format",
        r"numeric (?:field|value) overflow|arithmetic overflow|out of range",
        r"value too long|value too large|\bORA-12899\b|data truncat|string or binary data would",
        r"incorrect \w+ value|DATATYPE_MISMATCH|schema mismatch|DELTA_FAILED_TO_MERGE_FIELDS",
        r"ArrowInvalid|ArrowTypeError",
    ),
    _rule(
        "constraint",
        PERMANENT,
        "the data breaks a key or constraint, which a retry will break again",
        r"violates (?:\w+[- ])*constraint|violation of (?:primary|unique) key constraint",
        r"duplicate key|duplicate entry|\bORA-00001\b|unique constraint",
        r"cannot insert (?:the value )?null|\bORA-01400\b|integrity constraint",
        r"DELTA_MULTIPLE_SOURCE_ROW_MATCHING_TARGET_ROW",
    ),
    _rule(
        "out_of_space",
        PERMANENT,
        "the source or its storage ran out of space, which a person frees or extends",
        r"no space left on device|\bdisk (?:is )?full\b|could not extend file",
        r"transaction log for database .{0,80}is full|table '?\S+'? is full",
        r"unable to extend (?:temp )?segment",
    ),
    _rule(
        "timeout",
        TRANSIENT,
        "an operation timed out, which a later attempt usually avoids",
        r"statement timeout|query timeout|login timeout expired|timeout expired",
        r"timed out|time-out|timeout",
        r"stuck in queue",
    ),
    _rule(
        "throttling",
        TRANSIENT,
        "a service throttled or was briefly unavailable",
        r"\b429\b|too many requests|rate limit|REQUEST_LIMIT_EXCEEDED|throttl",
        r"\b50[234]\b|service unavailable|bad gateway|gateway time",
        r"TEMPORARILY_UNAVAILABLE|temporarily unavailable",
    ),
    _rule(
        "cluster",
        TRANSIENT,
        "the compute was not ready or was lost mid-run, which a new run gets past",
        r"cluster .{0,80}(?:terminated|terminating|is not (?:in a )?running|not ready|pending|"
        r"starting|restarting|unexpected state)",
        r"spot (?:instance )?(?:termination|loss|interrupt)|SPOT_INSTANCE_TERMINATION|preempt",
        r"CLOUD_PROVIDER_(?:LAUNCH_FAILURE|SHUTDOWN)|INSTANCE_UNREACHABLE|DRIVER_UNREACHABLE",
        r"ExecutorLostFailure|executor (?:\d+ )?lost|Remote RPC client disassociated",
        r"driver (?:has )?stopped unexpectedly|could not reach driver|driver is temporarily",
        r"waiting for the cluster",
    ),
    _rule(
        "unexpected",
        TRANSIENT,
        "the platform reported an unexpected internal error, which is usually a one-off",
        r"unexpected error|internal error|INTERNAL_ERROR",
    ),
    # Databricks' own faults (issue 12), appended: they decide only what nothing above matched.
    _rule(
        "delta_conflict",
        TRANSIENT,
        "another writer committed to the Delta table at the same time, which a new attempt gets past",
        r"(?:MetadataChanged|ProtocolChanged|ConcurrentWrite)Exception",
        r"DELTA_(?:METADATA|PROTOCOL)_CHANGED|DELTA_CONCURRENT_\w+",
        r"by a concurrent update",
    ),
    _rule(
        "storage_throttling",
        TRANSIENT,
        "the cloud storage account throttled requests, which eases off by itself",
        r"\bSlowDown\b|\bslow down\b|please reduce your request rate",
        r"\bServerBusy\b|is over the account limit",
        r"rateLimitExceeded|exceeds the rate limit",
    ),
    _rule(
        "driver_lost",
        TRANSIENT,
        "the cluster's driver was lost or restarted mid-run, which a new run gets past",
        r"lost contact with the driver|driver is unresponsive|driver (?:is )?not responding",
    ),
    _rule(
        "unity_catalog",
        PERMANENT,
        "Unity Catalog refused the object or the compute, which needs a change by a person",
        r"NO_SUCH_CATALOG_EXCEPTION|CATALOG_NOT_FOUND|UC_NOT_ENABLED|UC_COMMAND_NOT_SUPPORTED",
        r"UNAUTHORIZED_ACCESS|UC_\w+_NOT_FOUND",
    ),
)


# Rules only a code reaches (no wording of their own to match).
_CODE_ONLY_RULES: tuple[_Rule, ...] = (
    _rule(
        "sql_refused",
        PERMANENT,
        "the source refused the statement (its syntax, an object it names or a privilege), "
        "which a retry does not change",
        r"(?!)",
    ),
)
_RULES_BY_NAME = {rule.name: rule for rule in (*_RULES, *_CODE_ONLY_RULES)}
_CODE_LABELS = {
    "sqlstate": "SQLSTATE {}",
    "mysql": "MySQL error {}",
    "sqlserver": "SQL Server error {}",
    "oracle": "{}",
    "databricks": "error class {}",
    "http": "HTTP {}",
}


def code_label(code: str) -> str:
    """``sqlstate:57014`` as a person reads it: ``SQLSTATE 57014``."""
    family, _, value = code.partition(":")
    return _CODE_LABELS.get(family, "{}").format(value)


def classify_error(message: str | None, code: str | None = None) -> Classification:
    """Classify one failure as transient, permanent or unknown, with a one-line reason.

    ``code``: the driver's code (``retry.codes.code_of``); when None it is parsed from the
    message. A code that decides wins over the text; the text decides otherwise. Our own
    "Cancelled - ..." openings are matched before any code.
    """
    text = (message or "").strip()
    code = code or code_from_text(text)
    for rule in _RULES:
        if rule.name in CANCELLATION_RULES and rule.pattern.search(text):
            return _classified(rule, code)
    by_code = _RULES_BY_NAME.get(rule_for_code(code) or "")
    if by_code is not None:
        return _classified(by_code, code, by_code=True)
    if not text:
        return Classification(
            UNKNOWN, None, "No error message was recorded, so a person should look.", code
        )
    for rule in _RULES:
        if rule.pattern.search(text):
            return _classified(rule, code)
    return Classification(
        UNKNOWN, None, "Unrecognised error, so a person should look before it is retried.", code
    )


def _classified(rule: _Rule, code: str | None, *, by_code: bool = False) -> Classification:
    kind = "Transient" if rule.category == TRANSIENT else "Permanent"
    label = rule.name.replace("_", " ")
    said = f" ({code_label(code)})" if by_code and code else ""
    return Classification(
        rule.category, rule.name, f"{kind} {label} fault{said}: {rule.explanation}.", code
    )
