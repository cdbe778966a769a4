"""Every setting of the code location, read from the environment once, at the edge.

``load_settings(env)`` is called by ``build_definitions`` (the code location) and by the CLI; the
result is passed down to sensors, resources and jobs. No module below the edge reads
``os.environ``: what it needs is a field here. Defaults are the spec's (master_sensor every 60 s
with 10 tables per tick, queue timeout 60 min checked every 10 min, run timeout 180 min checked
every 10 min, failure analysis every 15 min with at most 3 retries, landing tables every 30 min);
every value can be overridden with a ``DATALOADER_`` variable so local work does not wait ten
minutes for a monitor.

Plain module: imports nothing from Dagster, so the CLI and tests use it without a code location.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

PROJECT_ROOT = Path(__file__).resolve().parents[1]
LOCAL_SCRIPTS_DIR = PROJECT_ROOT / "databricks_scripts"
LOCAL_DAGSTER_BASE_URL = "http://127.0.0.1:3000"
EXECUTION_MODES = ("local", "databricks")
# How `dataloader dev`'s instance starts a run's worker (dagsters/local/run_launcher.py).
RUN_LAUNCHERS = ("forkserver", "default")
DEFAULT_RUN_LAUNCHER = "forkserver" if sys.platform.startswith("linux") else "default"
ENVIRONMENTS = ("npd", "prod")
LAKEBASE_AUTH_MODES = ("password", "oauth")
DEFAULT_LOAD_TIMEOUT_SECONDS = 10_800  # spec: 3 hours per load
DEFAULT_MODELS_BRANCH = "dataloader/landing-tables"  # never a branch people work on


class SettingsError(ValueError):
    """An environment variable holds a value that cannot be used."""


@dataclass(frozen=True)
class RetryPolicy:
    """How often failed_monitor retries a table before a person must look (spec: 3)."""

    max_retries: int = 3
    # failed_monitor takes back an analysis requested this long ago that never decided.
    analysis_timeout_minutes: int = 60


@dataclass(frozen=True)
class Paths:
    """Where local state lives: the project's data directory, the local lake, the dbt repo."""

    home: Path = PROJECT_ROOT / ".dataloader"
    lake_root: Path = PROJECT_ROOT / ".dataloader" / "lake"
    models_repo: Path = PROJECT_ROOT / ".dataloader" / "models_repo"
    models_branch: str = DEFAULT_MODELS_BRANCH
    models_remote: str | None = None  # None: origin if present, else the only remote, else none
    # DATALOADER_MODELS_URL: the models repository's git URL (required in a deployment).
    models_url: str | None = field(default=None, repr=False)
    # DATALOADER_MODELS_TOKEN is set (the value itself stays in the environment: a dg.EnvVar).
    models_token: bool = False
    # DATALOADER_MODELS_TOKEN_SECRET: "<scope>/<key>" of a Databricks secret holding the token.
    models_token_secret: str | None = None


@dataclass(frozen=True)
class LakebaseSettings:
    """The control database (spec: ``LAKEBASE_*``). No host: the embedded local server.

    The password is kept out of ``repr``; resources take it as ``dg.EnvVar("LAKEBASE_PASSWORD")``
    so it never shows in the UI's resource configuration.
    """

    host: str | None = None
    port: int = 5432
    database: str = "dataloader"
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    sslmode: str = "require"
    auth_mode: str = "password"
    instance_name: str | None = None  # OAuth: provisioned database instance
    endpoint: str | None = None  # OAuth: projects/<p>/branches/<b>/endpoints/<e>

    @property
    def embedded(self) -> bool:
        return not self.host


@dataclass(frozen=True)
class DatabricksSettings:
    """The workspace and how scripts run there (``DATALOADER_EXECUTION=databricks``).

    Credentials are never here: databricks-sdk reads them from its own chain.
    """

    # The host to hand the SDK explicitly (``DATABRICKS_WORKSPACE_URL`` when ``DATABRICKS_HOST`` is
    # unset); None lets the SDK resolve it itself.
    workspace_host: str | None = None
    # DATABRICKS_HOST or DATABRICKS_WORKSPACE_URL names a workspace (a deployment needs one).
    workspace_configured: bool = False
    warehouse_id: str | None = None
    cluster_id: str | None = None
    new_cluster_json: str | None = None
    serverless: bool = False
    volume_path: str | None = None
    # DATALOADER_DATABRICKS_PIPES_DBFS: classic compute keeps the Pipes files on the DBFS root
    # (deprecated, absent from new accounts) instead of the volume; only when asked for.
    pipes_dbfs: bool = False
    libraries: tuple[str, ...] | None = None  # None: per script
    poll_interval_seconds: float = 5.0


@dataclass(frozen=True)
class Settings:
    execution: str = "local"
    # The spec's DAGSTER_ENVIRONMENT (npd | prod); None when unset (local work).
    environment: str | None = None
    # DAGSTER_CLOUD_DEPLOYMENT_NAME: set by Dagster+ in every deployment it runs this code in.
    cloud_deployment: str | None = None
    sensors_running: bool = True

    master_interval_seconds: int = 60
    master_batch_size: int = 10
    # Tables of one source per load run (DATALOADER_RUN_BATCH_SIZE): 1 (default) is one run per
    # table; N > 1 lets master_sensor launch one run for up to N due rows of one source, each
    # table keeping its own attempt (dagsters/assets/load_batch.py). Local execution only.
    run_batch_size: int = 1
    longqueued_interval_seconds: int = 600
    longqueued_threshold_minutes: int = 60
    longrunning_interval_seconds: int = 600
    longrunning_threshold_minutes: int = 180
    failed_interval_seconds: int = 900
    failed_batch_size: int = 10
    landing_interval_seconds: int = 1800

    retry: RetryPolicy = RetryPolicy()
    paths: Paths = Paths()
    lakebase: LakebaseSettings = LakebaseSettings()
    databricks: DatabricksSettings = DatabricksSettings()

    # Where people open the Dagster UI, for run links written into table_control.
    dagster_base_url: str = LOCAL_DAGSTER_BASE_URL
    scripts_path: str | None = None  # local directory or workspace path of databricks_scripts/
    load_timeout_seconds: int = DEFAULT_LOAD_TIMEOUT_SECONDS
    # How long a finished load keeps retrying to write its result to an unreachable control
    # database (bounded exponential back-off, 1 s doubling to 30 s) before it gives up; a commit
    # whose success was not written is recorded by the row's next load (docs/control-database.md).
    writeback_retry_seconds: int = 300
    # Per-source limit: master_sensor claims no more in-flight rows per source system (everywhere)
    # and `dataloader dev` writes it as the instance's tag limit; keep the Dagster+ deployment's
    # tag_concurrency_limits at the same value. Overall run limit: local instance (CLI) only.
    source_concurrency: int = 2
    max_concurrent_runs: int = 10
    # How often the local instance's run queue launches queued runs (Dagster's default is 5 s; a
    # tiny load's run otherwise waits most of its life in the queue). Local instance (CLI) only.
    dequeue_interval_seconds: int = 1
    # How the local instance starts a run's worker (DATALOADER_RUN_LAUNCHER): "forkserver" forks
    # it from a process with Dagster imported (Linux; the default there), "default" is Dagster's
    # own launcher (the code server spawns a fresh process). Local instance (CLI) only.
    run_launcher: str = DEFAULT_RUN_LAUNCHER
    # historical_metadata retention: finished attempts older than this are deleted in batches by
    # dataloader__history_retention_job on its schedule (cron, UTC).
    history_retention_days: int = 400
    history_retention_batch_rows: int = 10_000
    history_retention_cron: str = "30 3 * * *"
    # Alerts (dagsters/alerts.py): webhook URLs are secrets (kept out of repr, masked).
    alert_slack_webhook_url: str | None = field(default=None, repr=False)
    alert_teams_webhook_url: str | None = field(default=None, repr=False)
    alert_after_failures: int = 2  # tell someone when a table has failed this many times in a row
    # How many active table_control rows are declared as assets of their own (0: none; the
    # loads still record every table's materializations). docs/assets.md, "How this scales".
    table_assets_max: int = 0
    # table_assets_sensor's interval: it reloads the code location (local work only) when the
    # active rows change, so a row added with SQL gets its declared asset. 0: no such sensor.
    table_assets_reload_seconds: int = 15
    # Secret values this process holds (Lakebase password, AI key, DATALOADER_SECRET__*), masked
    # wherever text leaves: logs, history rows, exceptions. Kept out of repr.
    secrets: tuple[str, ...] = field(default=(), repr=False)
    # The non-secret DATALOADER_AI_* settings, handed to the retry script in its request.
    advisor: Mapping[str, str] = field(default_factory=dict)

    @property
    def deployment(self) -> bool:
        """True in npd/prod or on Dagster+: no local fallback may stand in for a setting there."""
        return bool(self.environment or self.cloud_deployment)

    @property
    def reloads_table_assets(self) -> bool:
        """Local work that declares tables: ``table_assets_sensor`` reloads the code location
        when the active rows change (never in a deployment, where a deploy reloads it)."""
        return (
            not self.deployment
            and self.table_assets_max > 0
            and self.table_assets_reload_seconds > 0
        )

    def dagster_run_url(self, run_id: str) -> str:
        return f"{self.dagster_base_url}/runs/{run_id}"


# Environment variable -> Settings field, for every top-level integer setting.
_INT_VARS = {
    "DATALOADER_MASTER_SENSOR_INTERVAL_SECONDS": "master_interval_seconds",
    "DATALOADER_MASTER_SENSOR_BATCH_SIZE": "master_batch_size",
    "DATALOADER_RUN_BATCH_SIZE": "run_batch_size",
    "DATALOADER_LONGQUEUED_INTERVAL_SECONDS": "longqueued_interval_seconds",
    "DATALOADER_LONGQUEUED_THRESHOLD_MINUTES": "longqueued_threshold_minutes",
    "DATALOADER_LONGRUNNING_INTERVAL_SECONDS": "longrunning_interval_seconds",
    "DATALOADER_LONGRUNNING_THRESHOLD_MINUTES": "longrunning_threshold_minutes",
    "DATALOADER_FAILED_INTERVAL_SECONDS": "failed_interval_seconds",
    "DATALOADER_FAILED_BATCH_SIZE": "failed_batch_size",
    "DATALOADER_LANDING_INTERVAL_SECONDS": "landing_interval_seconds",
    "DATALOADER_LOAD_TIMEOUT_SECONDS": "load_timeout_seconds",
    "DATALOADER_WRITEBACK_RETRY_SECONDS": "writeback_retry_seconds",
    "DATALOADER_SOURCE_CONCURRENCY": "source_concurrency",
    "DATALOADER_MAX_CONCURRENT_RUNS": "max_concurrent_runs",
    "DATALOADER_DEQUEUE_INTERVAL_SECONDS": "dequeue_interval_seconds",
    "DATALOADER_HISTORY_RETENTION_DAYS": "history_retention_days",
    "DATALOADER_HISTORY_RETENTION_BATCH_ROWS": "history_retention_batch_rows",
    "DATALOADER_ALERT_AFTER_FAILURES": "alert_after_failures",
}


def _text(env: Mapping[str, str], name: str) -> str | None:
    value = (env.get(name) or "").strip()
    return value or None


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = _text(env, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, got {raw!r}") from None
    if value <= 0:
        raise SettingsError(f"{name} must be greater than 0, got {value}")
    return value


def _whole_number(env: Mapping[str, str], name: str, default: int) -> int:
    """A whole number, 0 or more."""
    raw = _text(env, name)
    if raw is None:
        return default
    return 0 if raw == "0" else _positive_int(env, name, default)


def _positive_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = _text(env, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if not value > 0:
        raise SettingsError(f"{name} must be greater than 0, got {raw!r}")
    return value


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = _text(env, name)
    if raw is None:
        return default
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on", "running"):
        return True
    if lowered in ("0", "false", "no", "off", "stopped"):
        return False
    raise SettingsError(f"{name} must be true or false, got {raw!r}")


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...], default: str | None):
    raw = _text(env, name)
    if raw is None:
        return default
    if raw.lower() not in choices:
        raise SettingsError(f"{name} must be one of {choices}, got {raw!r}")
    return raw.lower()


def _run_launcher(env: Mapping[str, str]) -> str:
    chosen = _choice(env, "DATALOADER_RUN_LAUNCHER", RUN_LAUNCHERS, DEFAULT_RUN_LAUNCHER)
    if chosen == "forkserver" and not sys.platform.startswith("linux"):
        raise SettingsError(
            f"DATALOADER_RUN_LAUNCHER=forkserver needs Linux (this is {sys.platform}); "
            "unset it or set it to 'default'"
        )
    return chosen


def _cron(env: Mapping[str, str], name: str, default: str) -> str:
    raw = _text(env, name)
    if raw is None:
        return default
    from dagsters.policy.schedule import validate_cron

    try:
        return validate_cron(raw)
    except ValueError as exc:
        raise SettingsError(f"{name}: {exc}") from None


def _secret_ref(env: Mapping[str, str], name: str) -> str | None:
    raw = _text(env, name)
    if raw is None:
        return None
    scope, _, key = raw.partition("/")
    if not scope.strip() or not key.strip():
        raise SettingsError(f"{name} must be <scope>/<key> of a Databricks secret, got {raw!r}")
    return f"{scope.strip()}/{key.strip()}"


def _paths(env: Mapping[str, str]) -> Paths:
    home = Path(_text(env, "DATALOADER_HOME") or PROJECT_ROOT / ".dataloader").expanduser()
    home = home.resolve()
    lake = Path(_text(env, "DATALOADER_LAKE_ROOT") or home / "lake").expanduser()
    repo = Path(_text(env, "DATALOADER_MODELS_REPO") or home / "models_repo").expanduser()
    return Paths(
        home=home,
        lake_root=lake,
        models_repo=repo,
        models_branch=_text(env, "DATALOADER_MODELS_BRANCH") or DEFAULT_MODELS_BRANCH,
        models_remote=_text(env, "DATALOADER_MODELS_REMOTE"),
        models_url=_text(env, "DATALOADER_MODELS_URL"),
        models_token=bool(_text(env, "DATALOADER_MODELS_TOKEN")),
        models_token_secret=_secret_ref(env, "DATALOADER_MODELS_TOKEN_SECRET"),
    )


def _lakebase(env: Mapping[str, str]) -> LakebaseSettings:
    return LakebaseSettings(
        host=_text(env, "LAKEBASE_HOST"),
        port=_positive_int(env, "LAKEBASE_PORT", 5432),
        database=_text(env, "LAKEBASE_DATABASE") or "dataloader",
        user=_text(env, "LAKEBASE_USER"),
        password=env.get("LAKEBASE_PASSWORD") or None,
        sslmode=_text(env, "LAKEBASE_SSLMODE") or "require",
        auth_mode=_choice(env, "DATALOADER_LAKEBASE_AUTH_MODE", LAKEBASE_AUTH_MODES, "password"),
        instance_name=_text(env, "DATALOADER_LAKEBASE_INSTANCE"),
        endpoint=_text(env, "DATALOADER_LAKEBASE_ENDPOINT"),
    )


def workspace_host(env: Mapping[str, str]) -> str | None:
    """The host to give databricks-sdk explicitly, or None to let it resolve one by itself.

    The spec names ``DATABRICKS_WORKSPACE_URL``; the SDK reads ``DATABRICKS_HOST``, which wins
    when both are set. People copy the address bar or just the host name.
    """
    if _text(env, "DATABRICKS_HOST"):
        return None
    url = (_text(env, "DATABRICKS_WORKSPACE_URL") or "").rstrip("/")
    if not url:
        return None
    return url if "://" in url else f"https://{url}"


def _databricks(env: Mapping[str, str]) -> DatabricksSettings:
    libraries = tuple(
        lib.strip() for lib in (env.get("DATALOADER_DATABRICKS_LIBRARIES") or "").split(",")
    )
    return DatabricksSettings(
        workspace_host=workspace_host(env),
        workspace_configured=bool(
            _text(env, "DATABRICKS_HOST") or _text(env, "DATABRICKS_WORKSPACE_URL")
        ),
        warehouse_id=_text(env, "DATABRICKS_WAREHOUSE_ID"),
        cluster_id=_text(env, "DATABRICKS_CLUSTER_ID"),
        new_cluster_json=_text(env, "DATALOADER_DATABRICKS_NEW_CLUSTER"),
        serverless=_flag(env, "DATALOADER_DATABRICKS_SERVERLESS", False),
        volume_path=_text(env, "DATALOADER_DATABRICKS_VOLUME_PATH"),
        pipes_dbfs=_flag(env, "DATALOADER_DATABRICKS_PIPES_DBFS", False),
        libraries=tuple(lib for lib in libraries if lib) or None,
        poll_interval_seconds=_positive_float(env, "DATALOADER_DATABRICKS_POLL_SECONDS", 5.0),
    )


def dagster_base_url(env: Mapping[str, str]) -> str:
    """``DATALOADER_DAGSTER_BASE_URL``; on Dagster+ derived from ``DAGSTER_CLOUD_URL`` and
    ``DAGSTER_CLOUD_DEPLOYMENT_NAME``; otherwise the local webserver."""
    explicit = _text(env, "DATALOADER_DAGSTER_BASE_URL")
    if explicit:
        return explicit.rstrip("/")
    deployment = _text(env, "DAGSTER_CLOUD_DEPLOYMENT_NAME")
    cloud_url = _text(env, "DAGSTER_CLOUD_URL")
    if deployment and cloud_url:
        organisation = (urlparse(cloud_url).hostname or "").split(".")[0]
        if organisation:
            return f"https://{organisation}.dagster.cloud/{deployment}"
    return LOCAL_DAGSTER_BASE_URL


def _secrets_and_advisor(env: Mapping[str, str]) -> tuple[tuple[str, ...], dict[str, str]]:
    # The Pipes scripts' own modules know which variables are secret and which DATALOADER_AI_*
    # settings may travel; one definition serves both sides.
    from databricks_scripts.redaction import secrets_from_env
    from databricks_scripts.retry.advisor import advisor_settings_from_env

    return tuple(secrets_from_env(env)), advisor_settings_from_env(env)


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Settings from ``env`` (default ``os.environ``); unset variables keep the spec's defaults."""
    env = dict(os.environ if env is None else env)
    execution = _choice(env, "DATALOADER_EXECUTION", EXECUTION_MODES, "local")
    values: dict[str, object] = {
        field_name: _positive_int(env, name, getattr(Settings, field_name))
        for name, field_name in _INT_VARS.items()
    }
    secrets, advisor = _secrets_and_advisor(env)
    slack = _text(env, "DATALOADER_ALERT_SLACK_WEBHOOK_URL")
    teams = _text(env, "DATALOADER_ALERT_TEAMS_WEBHOOK_URL")
    secrets = tuple(dict.fromkeys([*secrets, *(url for url in (slack, teams) if url)]))
    return Settings(
        execution=execution,
        environment=_choice(env, "DAGSTER_ENVIRONMENT", ENVIRONMENTS, None),
        cloud_deployment=_text(env, "DAGSTER_CLOUD_DEPLOYMENT_NAME"),
        # Sensors start by themselves locally, so `dataloader dev` loads the demo without clicks;
        # in a deployment a person turns them on deliberately unless the variable says so.
        sensors_running=_flag(env, "DATALOADER_SENSORS_RUNNING", execution == "local"),
        retry=RetryPolicy(
            max_retries=_positive_int(env, "DATALOADER_MAX_RETRIES", RetryPolicy.max_retries),
            analysis_timeout_minutes=_positive_int(
                env,
                "DATALOADER_RETRY_ANALYSIS_TIMEOUT_MINUTES",
                RetryPolicy.analysis_timeout_minutes,
            ),
        ),
        paths=_paths(env),
        table_assets_max=_whole_number(env, "DATALOADER_TABLE_ASSETS_MAX", 0),
        table_assets_reload_seconds=_whole_number(
            env, "DATALOADER_TABLE_ASSETS_RELOAD_SECONDS", Settings.table_assets_reload_seconds
        ),
        lakebase=_lakebase(env),
        databricks=_databricks(env),
        dagster_base_url=dagster_base_url(env),
        scripts_path=_text(env, "DATALOADER_SCRIPTS_PATH"),
        run_launcher=_run_launcher(env),
        history_retention_cron=_cron(env, "DATALOADER_HISTORY_RETENTION_CRON", "30 3 * * *"),
        alert_slack_webhook_url=slack,
        alert_teams_webhook_url=teams,
        secrets=secrets,
        advisor=advisor,
        **values,  # type: ignore[arg-type]
    )


def child_environment(
    overrides: Mapping[str, str] | None = None,
    *,
    keep_secret: Callable[[str], bool] | None = None,
    allow: Callable[[str], bool] | None = None,
) -> dict[str, str]:
    """This process's environment plus ``overrides``, for a child process (scripts, git).

    With ``allow``, only the variables ``allow(name)`` accepts are inherited (the Pipes scripts:
    an allow-list, ``dagsters.runners.local.environment_for_script``). With ``keep_secret``,
    every secret variable (``redaction.is_secret_env_var``: the Lakebase password,
    ``DATALOADER_SECRET__*``, tokens, ...) is left out unless ``keep_secret(name)`` says the child
    needs it. ``overrides`` are always set.
    """
    from databricks_scripts.redaction import is_secret_env_var

    env = dict(os.environ)
    if allow is not None:
        env = {k: v for k, v in env.items() if allow(k)}
    if keep_secret is not None:
        env = {k: v for k, v in env.items() if not is_secret_env_var(k, v) or keep_secret(k)}
    return {**env, **(overrides or {})}
