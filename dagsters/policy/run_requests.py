"""Run requests from control rows: run config, tags, run keys, the source-system key.

Plain module (no Dagster imports) so the shape the spec prescribes is unit-tested on its own. The
sensors wrap these values in ``RunRequest`` objects.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from dagsters.control.rows import ClaimedRow, ControlRow
from databricks_scripts.contract import LOAD_ASSET_NAME, LOAD_PARAM_FIELDS

if TYPE_CHECKING:
    from dagsters.control.source_connections import ResolvedSource

LOAD_ASSET = LOAD_ASSET_NAME
RETRY_ASSET = "dataloader__retry_analysis"
LANDING_JOB = "landing_table_git_job"
LANDING_OP = "landing_table_git_op"

TAG_CONTROL_KEY = "dataloader/control_key"
TAG_SOURCE_SYSTEM = "dataloader/source_system"
TAG_DESTINATION = "dataloader/destination"
TAG_METADATA_ID = "dataloader/metadata_id"
TAG_TRIGGER = "dataloader/triggered_by"
TAG_ENVIRONMENT = "dataloader/environment"
# A batch run (DATALOADER_RUN_BATCH_SIZE > 1) carries one tag per attempt it holds,
# ``dataloader/attempt-<metadata_id>: <config_id>`` (values a rename cannot change), so the
# monitors find every attempt's run; ``dataloader/control_keys`` lists the tables for people.
TAG_ATTEMPT_PREFIX = "dataloader/attempt-"
TAG_BATCH_SIZE = "dataloader/batch_size"
TAG_CONTROL_KEYS = "dataloader/control_keys"
LOAD_BATCH_JOB = "dataloader__table_load_batch_job"
LOAD_BATCH_OP = "dataloader__table_load_batch"


def _seconds(value: Any) -> float:
    if value is None:
        return 0.0
    if isinstance(value, timedelta):
        return value.total_seconds()
    return float(value)


def load_params(
    row: ControlRow, source: ResolvedSource | None = None, *, metadata_id: int | None = None
) -> dict[str, Any]:
    """The loader script's params (the wire contract's ``LOAD_PARAM_FIELDS``) from a control row
    and its attempt (``metadata_id``; None: no attempt, a deep verification).

    Values are JSON-safe: the interval becomes seconds, the watermark stays text. ``source`` is the
    row's resolved source (``LakebaseClient.resolve_source``): its connection settings and secret
    *name* replace the row's ``db_config_value``/``db_kv_scope``. Neither carries a password, so
    the result is safe to show in the UI.
    """
    config = source.db_config_value if source is not None else row.db_config_value
    secret = source.hash_secret if source is not None else None
    values: dict[str, Any] = {
        "config_id": row.config_id,
        "control_key": row.control_key,
        "metadata_id": metadata_id,
        "source_catalog": row.source_catalog,
        "source_schema_name": row.source_schema_name,
        "source_table_name": row.source_table_name,
        "destination_catalog": row.destination_catalog,
        "destination_schema_name": row.destination_schema_name,
        "destination_table_name": row.destination_table_name,
        "db_type": row.db_type,
        "db_config_value": dict(config or {}),
        "db_kv_scope": source.db_kv_scope if source is not None else row.db_kv_scope,
        "load_strategy": row.load_strategy,
        "incremental_column": row.incremental_column,
        "incremental_value": None if row.incremental_value is None else str(row.incremental_value),
        "merge_keys": list(row.merge_keys) if row.merge_keys else None,
        "lookback_window_seconds": _seconds(row.lookback_window),
        "force_full_reload": bool(row.force_full_reload),
        "delete_detection": row.delete_detection or "none",
        "delete_max_fraction": (
            None if row.delete_max_fraction is None else float(row.delete_max_fraction)
        ),
        "jdbc_partition_column": row.jdbc_partition_column,
        "jdbc_num_partitions": row.jdbc_num_partitions,
        "verify_depth": row.verify_depth,
        "columns_exclude": list(row.columns_exclude) if row.columns_exclude else None,
        "columns_hash": list(row.columns_hash) if row.columns_hash else None,
        "schema_change": row.schema_change,
        "hash_secret_scope": None if secret is None else secret[0],
        "hash_secret_key": None if secret is None else secret[1],
    }
    return {field: values[field] for field in LOAD_PARAM_FIELDS}


def attempt_config(row: ControlRow, metadata_id: int | None) -> dict:
    """Which attempt a run works on: the row, its key, its history row. The control row is
    authoritative for everything else (the asset reads it), so nothing is copied here for show."""
    return {"config_id": row.config_id, "control_key": row.control_key, "metadata_id": metadata_id}


# The sensors' runs log through the code location's "console" logger (one line per event in the
# terminal, dagsters/console_logger.py). Dagster uses a job's own loggers only when the run config
# names them; without it a run falls back to its DEBUG console logger with whole stack traces.
CONSOLE_LOGGER_CONFIG: dict[str, Any] = {"loggers": {"console": {}}}


def load_run_config(row: ClaimedRow) -> dict[str, Any]:
    """Run config of a claimed row's load run (the claim returns the new ``metadata_id``)."""
    config = attempt_config(row, row.metadata_id)
    return {"ops": {LOAD_ASSET: {"config": config}}, **CONSOLE_LOGGER_CONFIG}


def load_run_key(row: ClaimedRow) -> str:
    # The history row id makes the key: a re-queued table gets a new run, a repeated tick does not.
    return f"{row.control_key}:{row.metadata_id}"


def attempt_tag(metadata_id: object) -> str:
    """The tag a batch run carries for each attempt it holds."""
    return f"{TAG_ATTEMPT_PREFIX}{int(metadata_id)}"  # type: ignore[call-overload]


def attempt_run_filters(metadata_id: object, config_id: object) -> list[dict[str, str]]:
    """Tag filters that find the run of an attempt: its own run, or the batch run holding it."""
    return [{TAG_METADATA_ID: str(metadata_id)}, {attempt_tag(metadata_id): str(config_id)}]


def batch_run_config(rows: Iterable[ClaimedRow]) -> dict[str, Any]:
    """Run config of a batch run: the claimed attempts, in the order they are loaded."""
    attempts = [attempt_config(row, row.metadata_id) for row in rows]
    return {"ops": {LOAD_BATCH_OP: {"config": {"attempts": attempts}}}, **CONSOLE_LOGGER_CONFIG}


def batch_run_key(rows: Iterable[ClaimedRow]) -> str:
    # Its attempts' history rows make the key, as for one table's run.
    return "batch:" + "-".join(str(row.metadata_id) for row in rows)


def batch_run_tags(rows: Sequence[ClaimedRow]) -> dict[str, str]:
    """One source's tag (the per-source run limit holds it like one load), one tag per attempt."""
    tags = {
        TAG_SOURCE_SYSTEM: source_system(rows[0]),
        TAG_TRIGGER: "retry" if any(triggered_by(row) == "retry" for row in rows) else "sensor",
        TAG_BATCH_SIZE: str(len(rows)),
        TAG_CONTROL_KEYS: ", ".join(str(row.control_key) for row in rows)[:1000],
    }
    tags.update({attempt_tag(row.metadata_id): str(row.config_id) for row in rows})
    return tags


_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def source_system(row: ControlRow) -> str:
    """One name per source, used to cap concurrent loads against it.

    A row that names a source_connection: ``connection:<name>`` (the connection is the unit a
    data team manages; tables of one database share it). Otherwise ``postgresql:db.example.com:5432``
    style; the database name is left out on purpose: two databases on one server share its CPU
    and connections.
    """
    if row.connection_name:
        return _UNSAFE.sub("_", f"connection:{row.connection_name}").strip("_")[:200]
    config = row.db_config_value or {}
    host = str(config.get("host") or config.get("server_hostname") or "unknown")
    port = config.get("port")
    name = f"{row.db_type}:{host}" + (f":{port}" if port else "")
    return _UNSAFE.sub("_", name).strip("_")[:200]


def destination(row: ControlRow) -> str:
    return ".".join(
        str(part or "")
        for part in (
            row.destination_catalog,
            row.destination_schema_name,
            row.destination_table_name,
        )
    )


def load_run_tags(row: ClaimedRow, *, triggered_by: str = "sensor") -> dict[str, str]:
    return {
        TAG_CONTROL_KEY: str(row.control_key),
        TAG_SOURCE_SYSTEM: source_system(row),
        TAG_DESTINATION: destination(row),
        TAG_METADATA_ID: str(row.metadata_id),
        TAG_TRIGGER: triggered_by,
    }


def launch_tags(row: ControlRow) -> dict[str, str]:
    """The table's tags on any launch of its partition (the job's partitioned config): the
    source system tag puts a person's run under the same per-source limit as the sensor's.

    Dagster lays these over a sensor request's own tags, so they are exactly the values
    ``load_run_tags`` gives for the same row, and nothing about the attempt or its trigger
    (a person's run gets those when it starts and has made its attempt)."""
    return {
        TAG_CONTROL_KEY: str(row.control_key),
        TAG_SOURCE_SYSTEM: source_system(row),
        TAG_DESTINATION: destination(row),
    }


def environment_tags(environment: str | None) -> dict[str, str]:
    """The spec's DAGSTER_ENVIRONMENT (npd | prod) as a run tag; nothing when it is unset."""
    return {TAG_ENVIRONMENT: environment} if environment else {}


def triggered_by(row: ControlRow) -> str:
    return "retry" if int(row.retry_count or 0) > 0 else "sensor"


def retry_run_config(row: ControlRow) -> dict[str, Any]:
    """Run config of a failed row's analysis run: the failed attempt is the row's latest."""
    config = attempt_config(row, row.last_metadata_id)
    return {"ops": {RETRY_ASSET: {"config": config}}, **CONSOLE_LOGGER_CONFIG}


def retry_run_key(row: ControlRow) -> str:
    # One analysis per failed attempt: the failed attempt's history row names the run.
    return f"retry-analysis:{row.control_key}:{row.last_metadata_id}"


def retry_run_tags(row: ControlRow) -> dict[str, str]:
    return {
        TAG_CONTROL_KEY: str(row.control_key),
        TAG_METADATA_ID: str(row.last_metadata_id),
    }


def landing_run_config(config_ids: Iterable[int]) -> dict[str, Any]:
    return {"ops": {LANDING_OP: {"config": {"config_ids": sorted(int(c) for c in config_ids)}}}}


def landing_run_key(rows: Iterable[ControlRow]) -> str:
    """Same batch of (row, attempt) pairs -> same key, so one batch is never launched twice."""
    pairs = sorted((int(r.config_id), int(r.last_metadata_id or 0)) for r in rows)
    digest = hashlib.sha256(repr(pairs).encode()).hexdigest()[:16]
    return f"landing:{len(pairs)}:{digest}"


def run_id_from_url(url: str | None) -> str | None:
    """The Dagster run id at the end of a ``.../runs/<run_id>`` link (spec: longrunning_monitor)."""
    if not url:
        return None
    parts = [p for p in urlparse(url).path.split("/") if p]
    if len(parts) >= 2 and parts[-2] == "runs":
        return parts[-1]
    return None
