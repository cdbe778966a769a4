"""The wire contract between the code location (``dagsters``) and the Pipes scripts.

Both sides import this module and nothing else of each other for the names that cross the wire:
the load parameters the asset sends, the metadata keys the load script reports, the error channel
(a Pipes custom message and the last stderr line), and the retry decision. Standard library only:
it is shipped to Databricks with the scripts.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

# ---------------------------------------------------------------------------------------------
# Load parameters: the Pipes extra ``params`` of dataloader_pipe.py (the spec's run config fields,
# in the spec's order).
PARAMS_EXTRA = "params"
# The asset whose partition a load reports. A run of one table is that asset's step and Pipes
# knows the key; a batch run (several tables in one run, DATALOADER_RUN_BATCH_SIZE) is a plain op,
# so the script names the key itself and the op reports it for the table's partition.
LOAD_ASSET_NAME = "dataloader__table_load"

LOAD_PARAM_FIELDS: tuple[str, ...] = (
    "config_id",
    "control_key",
    "metadata_id",
    "source_catalog",
    "source_schema_name",
    "source_table_name",
    "destination_catalog",
    "destination_schema_name",
    "destination_table_name",
    "db_type",
    "db_config_value",
    "db_kv_scope",
    "load_strategy",
    "incremental_column",
    "incremental_value",
    "merge_keys",
    "lookback_window_seconds",
    "force_full_reload",
    "delete_detection",
    "delete_max_fraction",
    # Spark engine only (sql/009): the column a JDBC read is split on and the most connections it
    # opens; None: the loader's defaults (docs/databricks.md, "Partitioned JDBC reads").
    "jdbc_partition_column",
    "jdbc_num_partitions",
    # sql/013: how deep the reconciliation check after each load goes (none | counts | keys).
    "verify_depth",
    # sql/017: columns never read, columns loaded as HMAC-SHA-256, the schema contract; the hash
    # key's secret *name* comes from the row's source_connection (never its value).
    "columns_exclude",
    "columns_hash",
    "schema_change",
    "hash_secret_scope",
    "hash_secret_key",
)

# sql/017: what a source schema change may do (docs/loader.md, "Schema contract").
SCHEMA_CHANGES: tuple[str, ...] = ("evolve", "freeze", "discard_new")

# Not one of the control row's fields: the latest attempt of the row whose success the control
# database recorded (max metadata_id of its Succeeded history rows; None when there is none). The
# load script compares it with the attempt that last committed to the destination (a Delta
# transaction id, see engines.arrow.commits), so a commit whose success was never recorded is recorded
# instead of loaded again. Absent (an older orchestrator): the script does not reconcile.
RECORDED_METADATA_ID_PARAM = "recorded_metadata_id"

# Not one of the control row's fields: what the load script is asked to do. Absent: load. With
# DEEP_VERIFY_MODE it compares the whole table with its source instead (engines.arrow.deep_verify) and
# reports the outcome as one custom message {DEEP_VERIFY_KEY: {passed, description, facts}}.
MODE_PARAM = "mode"
DEEP_VERIFY_MODE = "deep_verify"
DEEP_VERIFY_KEY = "dataloader_deep_verify"

# The closed sets of the wire as types (a type checker sees a typo) and as the tuples the
# validation and the messages use (the same values: each tuple is its type's arguments).
DbType = Literal["postgresql", "mysql", "sqlserver", "oracle", "databricks"]
Strategy = Literal["full", "incremental", "merge", "scd2"]
DeleteDetection = Literal["none", "soft", "hard"]
VerifyDepth = Literal["none", "counts", "keys"]
DB_TYPES: tuple[DbType, ...] = get_args(DbType)
STRATEGIES: tuple[Strategy, ...] = get_args(Strategy)
# What happens to destination rows whose key is no longer in the source (docs/loader.md).
DELETE_DETECTIONS: tuple[DeleteDetection, ...] = get_args(DeleteDetection)
# Default floor: a load never deletes (or marks deleted) more than this share of the live rows.
DEFAULT_DELETE_MAX_FRACTION = 0.5
# How deep the reconciliation check after each load goes (databricks_scripts/engines/arrow/verify).
VERIFY_DEPTHS: tuple[VerifyDepth, ...] = get_args(VerifyDepth)
DEFAULT_VERIFY_DEPTH: VerifyDepth = "counts"
# Technical destination columns (the names Databricks AUTO CDC uses for SCD type 2; fixed: other
# tools read them). Timestamps with time zone, UTC.
DELETED_AT = "__DELETED_AT"
START_AT = "__START_AT"
END_AT = "__END_AT"

# The keys ``db_config_value`` may carry on the wire (and in an inline table_control row). Anything
# else is refused naming the key: every key used to reach the driver, so ``options``, ``passfile``,
# ``sslmode=disable`` and friends could change where a secret goes or how the session behaves.
# ``connection`` names the source_connection the settings came from (for messages only).
CONNECTION_KEYS: tuple[str, ...] = (
    "host",
    "port",
    "database",
    "user",
    "password_secret",
    "sslmode",
    "sslrootcert",
    "connect_timeout",
    "service_name",
    "connection",
    # The Unity Catalog foreign catalog of the connection (sql/019): the Spark engine reads the
    # source through it instead of JDBC. Only a source_connection sets it, never a row.
    "foreign_catalog",
)
# TLS modes, weakest first (libpq's names; each driver maps them, see docs/secrets.md).
TLS_MODES: tuple[str, ...] = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
TLS_DEFAULT_REMOTE = "require"
DEFAULT_PORTS: dict[str, int] = {
    "postgresql": 5432,
    "mysql": 3306,
    "sqlserver": 1433,
    "oracle": 1521,
}


def is_loopback_host(host: object) -> bool:
    """True for a host that never leaves this machine: 127.0.0.0/8, ::1, ``localhost``, or a
    Unix socket directory (a path). Everything else gets TLS by default."""
    import ipaddress

    text = str(host or "").strip().lower()
    if not text:
        return False
    if text.startswith("/") or text in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(text.strip("[]")).is_loopback
    except ValueError:
        return False


def tls_mode_default(host: object, mode: str | None) -> str | None:
    """The TLS mode to use: ``mode`` when given, ``require`` for a host that is not loopback,
    None (the driver's own default) on loopback."""
    if mode:
        return mode
    return None if is_loopback_host(host) else TLS_DEFAULT_REMOTE


# ---------------------------------------------------------------------------------------------
# What the load script reports as materialization metadata.
class LoadMetadata:
    """Metadata keys of the load script's materialization."""

    ROWS_READ = "rows_read"
    ROWS_WRITTEN = "rows_written"
    WATERMARK_BEFORE = "watermark_before"
    WATERMARK_AFTER = "watermark_after"
    DURATION_SECONDS = "duration_seconds"
    DESTINATION = "destination"
    LOAD_STRATEGY = "load_strategy"
    REQUESTED_LOAD_STRATEGY = "requested_load_strategy"
    ENGINE = "engine"
    TABLE_NAME = "dagster/table_name"
    COLUMN_SCHEMA = "dagster/column_schema"
    ROW_COUNT = "dagster/row_count"
    # Set when this attempt loaded nothing because an earlier attempt of the row had committed to
    # the destination without its success being recorded: that attempt's metadata_id and the
    # destination version it committed. WATERMARK_AFTER is then the destination's watermark.
    RECONCILED_METADATA_ID = "reconciled_metadata_id"
    RECONCILED_VERSION = "reconciled_destination_version"
    # Row-count reconciliation (the asset's row_count check, docs/assets.md). SOURCE_ROWS: the
    # rows a full load's one source statement returned (one snapshot), counted by the reader, not
    # the writer; DESTINATION_ROWS_BEFORE: the destination's row count at the version the write
    # started from (0 when it did not exist). ROW_COUNT is the count after the write.
    SOURCE_ROWS = "source_rows"
    DESTINATION_ROWS_BEFORE = "destination_rows_before"
    # Why a load ran full (None for an incremental or merge load): one of FULL_REASONS.
    FULL_REASON = "full_load_reason"
    # What a person should know about how the load ran (e.g. a JDBC read that could not be split),
    # one sentence per note joined with "; "; the asset appends it to the history row's message.
    NOTES = "load_notes"
    # Column control (sql/017): the names of the columns left out and hashed, comma-separated
    # (never a value); absent when the row names none.
    COLUMNS_EXCLUDED = "columns_excluded"
    COLUMNS_HASHED = "columns_hashed"
    # The source table's own comment (PostgreSQL COMMENT ON TABLE, MySQL COMMENT); its column
    # comments are the column descriptions of COLUMN_SCHEMA.
    SOURCE_COMMENT = "source_comment"
    # The reconciliation check (engines.arrow.verify): passed or not, its sentence, its depth and the
    # facts it read from both sides (source_rows_in_scope, destination_rows_in_scope, ...).
    VERIFIED = "verification_passed"
    VERIFICATION = "verification"
    VERIFY_DEPTH = "verify_depth"


# Keys of LoadReport's fields, in the order the script reports them (LoadMetadata's values).
_REPORT_KEYS: dict[str, str] = {
    "rows_read": LoadMetadata.ROWS_READ,
    "rows_written": LoadMetadata.ROWS_WRITTEN,
    "watermark_before": LoadMetadata.WATERMARK_BEFORE,
    "watermark_after": LoadMetadata.WATERMARK_AFTER,
    "duration_seconds": LoadMetadata.DURATION_SECONDS,
    "destination": LoadMetadata.DESTINATION,
    "load_strategy": LoadMetadata.LOAD_STRATEGY,
    "requested_load_strategy": LoadMetadata.REQUESTED_LOAD_STRATEGY,
    "engine": LoadMetadata.ENGINE,
    "table_name": LoadMetadata.TABLE_NAME,
    "column_schema": LoadMetadata.COLUMN_SCHEMA,
    # Reported only when set (None / empty: absent from the metadata).
    "source_comment": LoadMetadata.SOURCE_COMMENT,
    "row_count": LoadMetadata.ROW_COUNT,
    "destination_rows_before": LoadMetadata.DESTINATION_ROWS_BEFORE,
    "full_load_reason": LoadMetadata.FULL_REASON,
    "source_rows": LoadMetadata.SOURCE_ROWS,
    "columns_excluded": LoadMetadata.COLUMNS_EXCLUDED,
    "columns_hashed": LoadMetadata.COLUMNS_HASHED,
    "verified": LoadMetadata.VERIFIED,
    "verification": LoadMetadata.VERIFICATION,
    "verify_depth": LoadMetadata.VERIFY_DEPTH,
    "notes": LoadMetadata.NOTES,
    "reconciled_metadata_id": LoadMetadata.RECONCILED_METADATA_ID,
    "reconciled_version": LoadMetadata.RECONCILED_VERSION,
}
# Always reported, None or not (the columns of every materialization).
_ALWAYS_REPORTED = tuple(list(_REPORT_KEYS)[:11])
# Reported when truthy (a text or comma-separated names); the other optional ones when not None.
_REPORTED_WHEN_TRUTHY = ("source_comment", "columns_excluded", "columns_hashed", "notes")


@dataclass(frozen=True)
class LoadReport:
    """What one load reports: the load script builds it and reports ``to_metadata()`` as its
    materialization; the asset reads it back with ``from_metadata`` and records it
    (``LakebaseClient.record_success``). Keys: :class:`LoadMetadata`."""

    rows_read: int | None
    rows_written: int | None
    watermark_after: Any = None
    watermark_before: Any = None
    duration_seconds: float | None = None
    destination: str | None = None
    load_strategy: str | None = None  # the strategy applied (the row may have asked another)
    requested_load_strategy: str | None = None
    engine: str | None = None
    table_name: str | None = None
    column_schema: Any = None  # the Pipes wire form of ``dagster/column_schema``
    source_comment: str | None = None
    row_count: int | None = None
    destination_rows_before: int | None = None
    full_load_reason: str | None = None
    source_rows: int | None = None
    columns_excluded: str | None = None
    columns_hashed: str | None = None
    verified: bool | None = None
    verification: str | None = None
    verify_depth: str | None = None
    notes: str | None = None
    reconciled_metadata_id: int | None = None
    reconciled_version: int | None = None
    # Further facts reported beside them (the reconciliation check's, e.g. source_rows_in_scope).
    facts: Mapping[str, Any] = field(default_factory=dict)

    def to_metadata(self) -> dict[str, Any]:
        """The materialization metadata: the always-reported keys, then the set ones."""
        metadata: dict[str, Any] = {}
        for name, key in _REPORT_KEYS.items():
            value = getattr(self, name)
            is_set = bool(value) if name in _REPORTED_WHEN_TRUTHY else value is not None
            if is_set or name in _ALWAYS_REPORTED:
                metadata[key] = value
        for key, value in self.facts.items():
            metadata.setdefault(key, value)  # a field's own value wins over a fact's
        return metadata

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> LoadReport:
        """The report a materialization carries. Values may arrive wrapped (Dagster
        ``MetadataValue``): their ``.value`` is used. Keys it does not name become ``facts``."""
        plain = {key: getattr(value, "value", value) for key, value in metadata.items()}
        known = {key: name for name, key in _REPORT_KEYS.items()}
        values = {known[key]: value for key, value in plain.items() if key in known}
        facts = {key: value for key, value in plain.items() if key not in known}
        return cls(**{"rows_read": None, "rows_written": None, **values}, facts=facts)

    @property
    def reconciled(self) -> bool:
        """Nothing was loaded: an earlier attempt's unrecorded commit is being recorded."""
        return self.reconciled_metadata_id is not None


FULL_REASON_FIRST_LOAD = "first load"
FULL_REASON_FORCED = "forced"
FULL_REASON_STRATEGY = "strategy"
FULL_REASON_NO_WATERMARK = "no watermark yet"
FULL_REASON_COLUMN_CONTROL = "columns_exclude or columns_hash changed"
FULL_REASONS: tuple[str, ...] = (
    FULL_REASON_FIRST_LOAD,
    FULL_REASON_FORCED,
    FULL_REASON_STRATEGY,
    FULL_REASON_NO_WATERMARK,
    FULL_REASON_COLUMN_CONTROL,
)


def full_load_reason(
    *,
    force_full_reload: bool,
    destination_exists: bool,
    load_strategy: str,
    incremental_column: str | None,
    incremental_value: str | None,
) -> str | None:
    """Why a load runs full, or None when it does not (the same rules as the engines' choice of
    strategy). A missing destination is a first load even when the row also forces a reload."""
    if not destination_exists:
        return FULL_REASON_FIRST_LOAD
    if force_full_reload:
        return FULL_REASON_FORCED
    if load_strategy == "full":
        return FULL_REASON_STRATEGY
    if incremental_column and incremental_value is None:
        return FULL_REASON_NO_WATERMARK
    return None


# ---------------------------------------------------------------------------------------------
# Failure kinds: what DataLoader itself knows about a failure it raised or settled. A failure that
# carries a kind is decided by kind (``databricks_scripts.failures.KIND_RULES``); a failure without
# one (None) is a foreign error (a driver's, a cluster's, a cloud's) and only its text (and code)
# is classified. The same names are table_control.last_failure_kind and
# historical_metadata.failure_kind (sql/014, whose CHECK lists them: a new kind needs both).
FailureKind = Literal[
    "bad_config",
    "source_auth",
    "schema_conflict",
    "data_mismatch",
    "stale_attempt",
    "cancelled",
    "stuck_queued",
    "run_timeout",
    "orphaned",
    "internal",
]
FAILURE_KINDS: tuple[FailureKind, ...] = get_args(FailureKind)
# the row's or the deployment's settings cannot work
KIND_BAD_CONFIG: FailureKind = "bad_config"
# the source's secret is missing or unusable
KIND_SOURCE_AUTH: FailureKind = "source_auth"
# the source's columns do not fit the destination's
KIND_SCHEMA_CONFLICT: FailureKind = "schema_conflict"
# the source's rows break a rule the load keeps (keys, the delete floor, cursor formats)
KIND_DATA_MISMATCH: FailureKind = "data_mismatch"
# fenced: another attempt of the row took over
KIND_STALE_ATTEMPT: FailureKind = "stale_attempt"
# a person terminated the run (or the load was told to stop)
KIND_CANCELLED: FailureKind = "cancelled"
# longqueued_monitor: the run never left the queue
KIND_STUCK_QUEUED: FailureKind = "stuck_queued"
# longrunning_monitor: the load ran past the threshold
KIND_RUN_TIMEOUT: FailureKind = "run_timeout"
# the attempt's run ended before the load started
KIND_ORPHANED: FailureKind = "orphaned"
# DataLoader broke one of its own invariants
KIND_INTERNAL: FailureKind = "internal"


def known_kind(kind: object) -> FailureKind | None:
    """``kind`` when it is one of FAILURE_KINDS, else None (a foreign error)."""
    for known in FAILURE_KINDS:
        if kind == known:
            return known
    return None


# ---------------------------------------------------------------------------------------------
# Failure codes: what a foreign error's driver said about it, ``<family>:<value>`` (``sqlstate:57014``,
# ``mysql:1040``, ``sqlserver:1205``, ``oracle:ORA-01013``, ``databricks:DELTA_CONCURRENT_APPEND``,
# ``http:503``; databricks_scripts.retry.codes reads and decides them). The same text is
# table_control.last_failure_code and historical_metadata.failure_code (sql/018, whose CHECK is
# this shape).
FAILURE_CODE_FAMILIES: tuple[str, ...] = (
    "mysql",
    "sqlserver",
    "oracle",
    "sqlstate",
    "databricks",
    "http",
)
FAILURE_CODE_SHAPE = re.compile(
    r"^(?:" + "|".join(FAILURE_CODE_FAMILIES) + r"):[A-Za-z0-9_.-]{1,100}$"
)


def known_code(code: object) -> str | None:
    """``code`` when it has a failure code's shape, else None."""
    return code if isinstance(code, str) and FAILURE_CODE_SHAPE.match(code) else None


# ---------------------------------------------------------------------------------------------
# The error channel: a failed script sends ``{ERROR_MESSAGE_KEY: text, ERROR_KIND_KEY: kind}`` as a
# Pipes custom message and ends stderr with ``STDERR_ERROR_PREFIX + [kind] text`` (for runs whose
# messages are lost). The kind is absent (None) for a foreign error, which carries its driver's
# code instead when it has one (``ERROR_CODE_KEY``, ``[code=...]``).
ERROR_MESSAGE_KEY = "dataloader_error"
ERROR_KIND_KEY = "dataloader_error_kind"
ERROR_CODE_KEY = "dataloader_error_code"
STDERR_ERROR_PREFIX = "DATALOADER_ERROR: "
_STDERR_TAG = re.compile(r"\[(kind|code)=([A-Za-z0-9_.:-]+)\] ")


def error_message(text: str, kind: str | None = None, code: str | None = None) -> dict[str, str]:
    """The custom message a failed script reports."""
    message = {ERROR_MESSAGE_KEY: text}
    if known_kind(kind):
        message[ERROR_KIND_KEY] = str(kind)
    elif known_code(code):
        message[ERROR_CODE_KEY] = str(code)
    return message


def error_from_message(message: object) -> str | None:
    """The error text of a custom message, or None when it is not an error message."""
    if isinstance(message, Mapping) and message.get(ERROR_MESSAGE_KEY):
        return str(message[ERROR_MESSAGE_KEY])
    return None


def kind_from_message(message: object) -> str | None:
    """The failure kind of an error custom message; None when it has none (a foreign error)."""
    if isinstance(message, Mapping) and message.get(ERROR_MESSAGE_KEY):
        return known_kind(message.get(ERROR_KIND_KEY))
    return None


def code_from_message(message: object) -> str | None:
    """The failure code of an error custom message; None when it has none."""
    if isinstance(message, Mapping) and message.get(ERROR_MESSAGE_KEY):
        return known_code(message.get(ERROR_CODE_KEY))
    return None


def stderr_error_line(text: str, kind: str | None = None, code: str | None = None) -> str:
    """The last stderr line of a failed script: ``[kind=<kind>] `` (or ``[code=<code>] ``) and
    the text on one line."""
    one_line = " | ".join(line.strip() for line in str(text).splitlines() if line.strip())
    if known_kind(kind):
        tag = f"[kind={kind}] "
    else:
        tag = f"[code={code}] " if known_code(code) else ""
    return f"{STDERR_ERROR_PREFIX}{tag}{one_line}\n"


def _last_error_line(lines: list[str] | tuple[str, ...]) -> str | None:
    for line in reversed(lines):
        if line.startswith(STDERR_ERROR_PREFIX):
            return line[len(STDERR_ERROR_PREFIX) :].strip()
    return None


def _stderr_tag(text: str) -> tuple[str | None, str | None, int]:
    """(kind, code, where the text starts) of an error line's tag."""
    tag = _STDERR_TAG.match(text)
    if tag is None:
        return None, None, 0
    if tag.group(1) == "kind" and known_kind(tag.group(2)):
        return tag.group(2), None, tag.end()
    if tag.group(1) == "code" and known_code(tag.group(2)):
        return None, tag.group(2), tag.end()
    return None, None, 0


def error_from_stderr(lines: list[str] | tuple[str, ...]) -> str | None:
    """The text of the last ``STDERR_ERROR_PREFIX`` line (without its tag), or None."""
    text = _last_error_line(lines)
    if text is None:
        return None
    return text[_stderr_tag(text)[2] :]


def kind_from_stderr(lines: list[str] | tuple[str, ...]) -> str | None:
    """The kind tag of the last ``STDERR_ERROR_PREFIX`` line; None for a foreign error."""
    return _stderr_tag(_last_error_line(lines) or "")[0]


def code_from_stderr(lines: list[str] | tuple[str, ...]) -> str | None:
    """The code tag of the last ``STDERR_ERROR_PREFIX`` line; None when it has none."""
    return _stderr_tag(_last_error_line(lines) or "")[1]


# ---------------------------------------------------------------------------------------------
# Retry decisions: what the retry script reports, failed_monitor decides by rule, and the asset
# applies to the control row.
RETRY_RECOMMENDED = "Retry Recommended"
REQUIRES_REVIEW = "Requires Review"
DECISIONS: tuple[str, ...] = (RETRY_RECOMMENDED, REQUIRES_REVIEW)
RETRY_DECISION_MESSAGE_KEY = "retry_decision"


@dataclass(frozen=True)
class Decision:
    """One retry-or-review decision. Anything but a clear ``Retry Recommended`` is review."""

    decision: str
    confidence: float | None
    reason: str
    decider: str

    METADATA_KEYS = ("decision", "confidence", "reason", "decider")

    def __post_init__(self) -> None:
        if self.decision not in DECISIONS:
            object.__setattr__(self, "decision", REQUIRES_REVIEW)
        object.__setattr__(self, "confidence", _confidence(self.confidence))
        object.__setattr__(self, "reason", str(self.reason or "No reason given."))
        object.__setattr__(self, "decider", str(self.decider or "unknown"))

    @property
    def retry(self) -> bool:
        return self.decision == RETRY_RECOMMENDED

    @classmethod
    def review(cls, reason: str, *, decider: str, confidence: float = 1.0) -> Decision:
        return cls(REQUIRES_REVIEW, confidence, reason, decider)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Decision | None:
        """A decision from reported metadata or a stored dict; None when it names no decision.

        Metadata values may arrive wrapped (Dagster ``MetadataValue``): their ``.value`` is used.
        """

        def plain(key: str) -> Any:
            value = values.get(key)
            return getattr(value, "value", value)

        if not plain("decision"):
            return None
        return cls(
            decision=str(plain("decision")),
            confidence=plain("confidence"),
            reason=str(plain("reason") or ""),
            decider=str(plain("decider") or "unknown"),
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _confidence(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if math.isnan(number):
        return None
    return min(max(number, 0.0), 1.0)
