"""Run requests from control rows: run config, tags, run keys, the source-system key.

Plain module (no Dagster imports) so the shape the spec prescribes is unit-tested on its own. The
sensors wrap these values in ``RunRequest`` objects.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

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


def load_params(row: Mapping[str, Any], source: ResolvedSource | None = None) -> dict[str, Any]:
    """The loader script's params (the wire contract's ``LOAD_PARAM_FIELDS``) from a control row.

    Values are JSON-safe: the interval becomes seconds, the watermark stays text. ``source`` is the
    row's resolved source (``LakebaseClient.resolve_source``): its connection settings and secret
    *name* replace the row's ``db_config_value``/``db_kv_scope``. Neither carries a password, so
    the result is safe to show in the UI.
    """
    if source is not None:
        row = {**row, "db_config_value": source.db_config_value, "db_kv_scope": source.db_kv_scope}
    params: dict[str, Any] = {}
    for field in LOAD_PARAM_FIELDS:
        if field == "lookback_window_seconds":
            params[field] = _seconds(row.get("lookback_window"))
        elif field == "db_config_value":
            params[field] = dict(row.get("db_config_value") or {})
        elif field == "merge_keys":
            keys = row.get("merge_keys")
            params[field] = list(keys) if keys else None
        elif field == "force_full_reload":
            params[field] = bool(row.get("force_full_reload"))
        elif field == "delete_detection":
            params[field] = row.get(field) or "none"
        elif field == "delete_max_fraction":
            value = row.get(field)
            params[field] = None if value is None else float(value)
        elif field in ("columns_exclude", "columns_hash"):
            value = row.get(field)
            params[field] = list(value) if value else None
        elif field in ("hash_secret_scope", "hash_secret_key"):
            secret = source.hash_secret if source is not None else None
            params[field] = None if secret is None else secret[field == "hash_secret_key"]
        elif field == "incremental_value":
            value = row.get("incremental_value")
            params[field] = None if value is None else str(value)
        else:
            params[field] = row.get(field)
    return params


def attempt_config(row: Mapping[str, Any], *, metadata_id_column: str = "metadata_id") -> dict:
    """Which attempt a run works on: the row, its key, its history row. The control row is
    authoritative for everything else (the asset reads it), so nothing is copied here for show."""
    return {
        "config_id": row["config_id"],
        "control_key": row["control_key"],
        "metadata_id": row.get(metadata_id_column),
    }


# The sensors' runs log through the code location's "console" logger (one line per event in the
# terminal, dagsters/console_logger.py). Dagster uses a job's own loggers only when the run config
# names them; without it a run falls back to its DEBUG console logger with whole stack traces.
CONSOLE_LOGGER_CONFIG: dict[str, Any] = {"loggers": {"console": {}}}


def load_run_config(row: Mapping[str, Any]) -> dict[str, Any]:
    """Run config of a claimed row's load run (the claim returns the new ``metadata_id``)."""
    return {"ops": {LOAD_ASSET: {"config": attempt_config(row)}}, **CONSOLE_LOGGER_CONFIG}


def load_run_key(row: Mapping[str, Any]) -> str:
    # The history row id makes the key: a re-queued table gets a new run, a repeated tick does not.
    return f"{row['control_key']}:{row['metadata_id']}"


def attempt_tag(metadata_id: object) -> str:
    """The tag a batch run carries for each attempt it holds."""
    return f"{TAG_ATTEMPT_PREFIX}{int(metadata_id)}"  # type: ignore[call-overload]


def attempt_run_filters(metadata_id: object, config_id: object) -> list[dict[str, str]]:
    """Tag filters that find the run of an attempt: its own run, or the batch run holding it."""
    return [{TAG_METADATA_ID: str(metadata_id)}, {attempt_tag(metadata_id): str(config_id)}]


def batch_run_config(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Run config of a batch run: the claimed attempts, in the order they are loaded."""
    attempts = [attempt_config(row) for row in rows]
    return {"ops": {LOAD_BATCH_OP: {"config": {"attempts": attempts}}}, **CONSOLE_LOGGER_CONFIG}


def batch_run_key(rows: Iterable[Mapping[str, Any]]) -> str:
    # Its attempts' history rows make the key, as for one table's run.
    return "batch:" + "-".join(str(row["metadata_id"]) for row in rows)


def batch_run_tags(rows: list[Mapping[str, Any]]) -> dict[str, str]:
    """One source's tag (the per-source run limit holds it like one load), one tag per attempt."""
    tags = {
        TAG_SOURCE_SYSTEM: source_system(rows[0]),
        TAG_TRIGGER: "retry" if any(triggered_by(row) == "retry" for row in rows) else "sensor",
        TAG_BATCH_SIZE: str(len(rows)),
        TAG_CONTROL_KEYS: ", ".join(str(row["control_key"]) for row in rows)[:1000],
    }
    tags.update({attempt_tag(row["metadata_id"]): str(row["config_id"]) for row in rows})
    return tags


_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def source_system(row: Mapping[str, Any]) -> str:
    """One name per source, used to cap concurrent loads against it.

    A row that names a source_connection: ``connection:<name>`` (the connection is the unit a
    data team manages; tables of one database share it). Otherwise ``postgresql:db.example.com:5432``
    style; the database name is left out on purpose: two databases on one server share its CPU
    and connections.
    """
    if row.get("connection_name"):
        return _UNSAFE.sub("_", f"connection:{row['connection_name']}").strip("_")[:200]
    config = row.get("db_config_value") or {}
    host = str(config.get("host") or config.get("server_hostname") or "unknown")
    port = config.get("port")
    name = f"{row.get('db_type')}:{host}" + (f":{port}" if port else "")
    return _UNSAFE.sub("_", name).strip("_")[:200]


def destination(row: Mapping[str, Any]) -> str:
    return ".".join(
        str(row.get(part) or "")
        for part in ("destination_catalog", "destination_schema_name", "destination_table_name")
    )


def load_run_tags(row: Mapping[str, Any], *, triggered_by: str = "sensor") -> dict[str, str]:
    return {
        TAG_CONTROL_KEY: str(row["control_key"]),
        TAG_SOURCE_SYSTEM: source_system(row),
        TAG_DESTINATION: destination(row),
        TAG_METADATA_ID: str(row["metadata_id"]),
        TAG_TRIGGER: triggered_by,
    }


def launch_tags(row: Mapping[str, Any]) -> dict[str, str]:
    """The table's tags on any launch of its partition (the job's partitioned config): the
    source system tag puts a person's run under the same per-source limit as the sensor's.

    Dagster lays these over a sensor request's own tags, so they are exactly the values
    ``load_run_tags`` gives for the same row, and nothing about the attempt or its trigger
    (a person's run gets those when it starts and has made its attempt)."""
    return {
        TAG_CONTROL_KEY: str(row["control_key"]),
        TAG_SOURCE_SYSTEM: source_system(row),
        TAG_DESTINATION: destination(row),
    }


def environment_tags(environment: str | None) -> dict[str, str]:
    """The spec's DAGSTER_ENVIRONMENT (npd | prod) as a run tag; nothing when it is unset."""
    return {TAG_ENVIRONMENT: environment} if environment else {}


def triggered_by(row: Mapping[str, Any]) -> str:
    return "retry" if int(row.get("retry_count") or 0) > 0 else "sensor"


def retry_run_config(row: Mapping[str, Any]) -> dict[str, Any]:
    """Run config of a failed row's analysis run: the failed attempt is the row's latest."""
    config = attempt_config(row, metadata_id_column="last_metadata_id")
    return {"ops": {RETRY_ASSET: {"config": config}}, **CONSOLE_LOGGER_CONFIG}


def retry_run_key(row: Mapping[str, Any]) -> str:
    # One analysis per failed attempt: the failed attempt's history row names the run.
    return f"retry-analysis:{row['control_key']}:{row.get('last_metadata_id')}"


def retry_run_tags(row: Mapping[str, Any]) -> dict[str, str]:
    return {
        TAG_CONTROL_KEY: str(row["control_key"]),
        TAG_METADATA_ID: str(row.get("last_metadata_id")),
    }


def landing_run_config(config_ids: Iterable[int]) -> dict[str, Any]:
    return {"ops": {LANDING_OP: {"config": {"config_ids": sorted(int(c) for c in config_ids)}}}}


def landing_run_key(rows: Iterable[Mapping[str, Any]]) -> str:
    """Same batch of (row, attempt) pairs -> same key, so one batch is never launched twice."""
    pairs = sorted((int(r["config_id"]), int(r.get("last_metadata_id") or 0)) for r in rows)
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
