"""Sensor intervals, batch sizes, thresholds and links, read from the environment.

Defaults are the spec's (docs/spec: master_sensor every 60 s with 10 tables per tick, queue timeout
60 min checked every 10 min, run timeout 180 min checked every 10 min, failure analysis every 15 min
with at most 3 retries, landing tables every 30 min). Every value can be overridden with a
``DATALOADER_`` environment variable so local work does not wait ten minutes for a monitor.

Plain module: imports nothing from Dagster.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlparse

LOCAL_DAGSTER_BASE_URL = "http://127.0.0.1:3000"


@dataclass(frozen=True)
class Settings:
    execution: str = "local"
    sensors_running: bool = True

    master_interval_seconds: int = 60
    master_batch_size: int = 10

    longqueued_interval_seconds: int = 600
    longqueued_threshold_minutes: int = 60

    longrunning_interval_seconds: int = 600
    longrunning_threshold_minutes: int = 180

    failed_interval_seconds: int = 900
    failed_batch_size: int = 10
    max_retries: int = 3

    landing_interval_seconds: int = 1800

    # failed_monitor takes back an analysis requested this long ago that never decided.
    retry_analysis_timeout_minutes: int = 60

    # The spec's DAGSTER_ENVIRONMENT (npd | prod); None when unset (local work).
    environment: str | None = None


# Environment variable -> Settings field, for every integer setting.
_INT_VARS = {
    "DATALOADER_MASTER_SENSOR_INTERVAL_SECONDS": "master_interval_seconds",
    "DATALOADER_MASTER_SENSOR_BATCH_SIZE": "master_batch_size",
    "DATALOADER_LONGQUEUED_INTERVAL_SECONDS": "longqueued_interval_seconds",
    "DATALOADER_LONGQUEUED_THRESHOLD_MINUTES": "longqueued_threshold_minutes",
    "DATALOADER_LONGRUNNING_INTERVAL_SECONDS": "longrunning_interval_seconds",
    "DATALOADER_LONGRUNNING_THRESHOLD_MINUTES": "longrunning_threshold_minutes",
    "DATALOADER_FAILED_INTERVAL_SECONDS": "failed_interval_seconds",
    "DATALOADER_FAILED_BATCH_SIZE": "failed_batch_size",
    "DATALOADER_MAX_RETRIES": "max_retries",
    "DATALOADER_LANDING_INTERVAL_SECONDS": "landing_interval_seconds",
    "DATALOADER_RETRY_ANALYSIS_TIMEOUT_MINUTES": "retry_analysis_timeout_minutes",
}

EXECUTION_MODES = ("local", "databricks")
ENVIRONMENTS = ("npd", "prod")


class SettingsError(ValueError):
    """A DATALOADER_ environment variable holds a value that cannot be used."""


def _positive_int(name: str, raw: str) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, got {raw!r}") from None
    if value <= 0:
        raise SettingsError(f"{name} must be greater than 0, got {value}")
    return value


def _flag(name: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on", "running"):
        return True
    if lowered in ("0", "false", "no", "off", "stopped"):
        return False
    raise SettingsError(f"{name} must be true or false, got {raw!r}")


def execution_mode(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    mode = (env.get("DATALOADER_EXECUTION") or "local").strip().lower()
    if mode not in EXECUTION_MODES:
        raise SettingsError(f"DATALOADER_EXECUTION must be one of {EXECUTION_MODES}, got {mode!r}")
    return mode


def dagster_environment(env: Mapping[str, str] | None = None) -> str | None:
    """The spec's ``DAGSTER_ENVIRONMENT`` (``npd`` or ``prod``), or None when it is unset.

    A typo must stop the code location from loading rather than tag prod runs as something else.
    """
    env = os.environ if env is None else env
    raw = (env.get("DAGSTER_ENVIRONMENT") or "").strip()
    if not raw:
        return None
    if raw.lower() not in ENVIRONMENTS:
        raise SettingsError(f"DAGSTER_ENVIRONMENT must be one of {ENVIRONMENTS}, got {raw!r}")
    return raw.lower()


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Settings from ``env`` (default ``os.environ``); unset variables keep the spec's defaults."""
    env = os.environ if env is None else env
    mode = execution_mode(env)
    values: dict[str, object] = {"execution": mode, "environment": dagster_environment(env)}
    for name, field in _INT_VARS.items():
        raw = env.get(name)
        if raw not in (None, ""):
            values[field] = _positive_int(name, raw)
    # Sensors start by themselves locally, so `dataloader dev` loads the demo without clicks; in a
    # deployment a person turns them on deliberately unless DATALOADER_SENSORS_RUNNING says so.
    raw_running = env.get("DATALOADER_SENSORS_RUNNING")
    values["sensors_running"] = (
        _flag("DATALOADER_SENSORS_RUNNING", raw_running) if raw_running else mode == "local"
    )
    return Settings(**values)  # type: ignore[arg-type]


def dagster_base_url(env: Mapping[str, str] | None = None) -> str:
    """Where people open the Dagster UI, for the run links written into table_control.

    ``DATALOADER_DAGSTER_BASE_URL`` wins; on Dagster+ the organisation and deployment are derived
    from ``DAGSTER_CLOUD_URL`` and ``DAGSTER_CLOUD_DEPLOYMENT_NAME``; otherwise the local webserver.
    """
    env = os.environ if env is None else env
    explicit = (env.get("DATALOADER_DAGSTER_BASE_URL") or "").strip()
    if explicit:
        return explicit.rstrip("/")
    deployment = (env.get("DAGSTER_CLOUD_DEPLOYMENT_NAME") or "").strip()
    cloud_url = (env.get("DAGSTER_CLOUD_URL") or "").strip()
    if deployment and cloud_url:
        host = urlparse(cloud_url).hostname or ""
        organisation = host.split(".")[0]
        if organisation:
            return f"https://{organisation}.dagster.cloud/{deployment}"
    return LOCAL_DAGSTER_BASE_URL


def dagster_run_url(run_id: str, env: Mapping[str, str] | None = None) -> str:
    return f"{dagster_base_url(env)}/runs/{run_id}"
