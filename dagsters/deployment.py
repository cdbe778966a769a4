"""No silent fallback in a deployment: what a code location in npd, prod or on Dagster+ must have.

Locally every setting has a fallback that makes ``make dev`` work with nothing set: an embedded
PostgreSQL with demo rows, loads as subprocesses writing to this machine's disk, a models repository
that is ``git init``-ed on the spot, run links to ``127.0.0.1``. In a deployment each of those would
"work" while losing data (rows marked loaded to a disk that disappears with the container), so
``build_definitions`` calls :func:`require_deployment_ready` and the code location refuses to load
with ONE message that lists every missing or contradictory setting, so a person fixes them all in
one go instead of one per reload.

A deployment is recognised by ``DAGSTER_ENVIRONMENT`` (npd | prod) or by Dagster+'s own
``DAGSTER_CLOUD_DEPLOYMENT_NAME``. Plain module: no Dagster, no environment reads (the values come
from :class:`dagsters.settings.Settings`).
"""

from __future__ import annotations

from ipaddress import ip_address
from urllib.parse import urlparse

from dagsters.runners.cluster_spec import new_cluster_problems
from dagsters.settings import Settings, SettingsError

_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


class DeploymentNotReady(SettingsError):
    """A deployment's settings miss something or contradict each other; the message lists all."""


def _loopback(host: str | None) -> bool:
    if not host:
        return False
    name = host.strip().strip("[]").lower()
    if name in _LOOPBACK_NAMES:
        return True
    try:
        return ip_address(name).is_loopback
    except ValueError:
        return False


def _lakebase_problems(settings: Settings) -> list[str]:
    lakebase = settings.lakebase
    if lakebase.embedded:
        return [
            (
                "LAKEBASE_HOST is not set: the embedded PostgreSQL with demo tables is for local "
                "work only; set the Lakebase host (and run `dataloader migrate` against it once)"
            )
        ]
    problems = []
    if _loopback(lakebase.host):
        problems.append(
            f"LAKEBASE_HOST={lakebase.host} is this container itself; it must name the Lakebase "
            "instance"
        )
    if not lakebase.user:
        problems.append("LAKEBASE_USER is not set")
    if lakebase.auth_mode == "password" and not lakebase.password:
        problems.append(
            "LAKEBASE_PASSWORD is not set (or use DATALOADER_LAKEBASE_AUTH_MODE=oauth with "
            "DATALOADER_LAKEBASE_INSTANCE or DATALOADER_LAKEBASE_ENDPOINT)"
        )
    if lakebase.auth_mode == "oauth" and not (lakebase.instance_name or lakebase.endpoint):
        problems.append(
            "DATALOADER_LAKEBASE_AUTH_MODE=oauth needs DATALOADER_LAKEBASE_INSTANCE or "
            "DATALOADER_LAKEBASE_ENDPOINT"
        )
    if lakebase.sslmode == "disable":
        problems.append("LAKEBASE_SSLMODE=disable: Lakebase connections must use TLS")
    return problems


def _databricks_problems(settings: Settings) -> list[str]:
    databricks = settings.databricks
    problems = []
    if settings.execution != "databricks":
        problems.append(
            f"DATALOADER_EXECUTION is {settings.execution!r}: loads would run as subprocesses "
            "writing to this container's disk; set DATALOADER_EXECUTION=databricks"
        )
    if not databricks.workspace_configured:
        problems.append("no Databricks workspace: set DATABRICKS_HOST or DATABRICKS_WORKSPACE_URL")
    if not (databricks.cluster_id or databricks.new_cluster_json or databricks.serverless):
        problems.append(
            "no compute for loads: set DATABRICKS_CLUSTER_ID, DATALOADER_DATABRICKS_NEW_CLUSTER "
            "(JSON spec) or DATALOADER_DATABRICKS_SERVERLESS=true"
        )
    if databricks.new_cluster_json and not databricks.cluster_id and not databricks.serverless:
        problems += new_cluster_problems(databricks.new_cluster_json)
    classic = (
        bool(databricks.cluster_id or databricks.new_cluster_json) and not databricks.serverless
    )
    if classic and not databricks.volume_path and not databricks.pipes_dbfs:
        problems.append(
            "classic compute keeps the Dagster Pipes files in a Unity Catalog volume: set "
            "DATALOADER_DATABRICKS_VOLUME_PATH=/Volumes/<catalog>/<schema>/pipes, or "
            "DATALOADER_DATABRICKS_PIPES_DBFS=true to keep them on the DBFS root"
        )
    if databricks.pipes_dbfs and (databricks.serverless or databricks.volume_path):
        problems.append(
            "DATALOADER_DATABRICKS_PIPES_DBFS=true contradicts "
            + (
                "DATALOADER_DATABRICKS_SERVERLESS=true"
                if databricks.serverless
                else "DATALOADER_DATABRICKS_VOLUME_PATH"
            )
            + ": the Pipes files go to one place; unset one of them"
        )
    if databricks.serverless and not databricks.volume_path:
        problems.append(
            "DATALOADER_DATABRICKS_SERVERLESS=true needs DATALOADER_DATABRICKS_VOLUME_PATH "
            "(the Unity Catalog volume for Pipes files)"
        )
    if not databricks.warehouse_id:
        problems.append(
            "DATABRICKS_WAREHOUSE_ID is not set: the landing job reads table schemas from Unity "
            "Catalog through a SQL warehouse"
        )
    return problems


def deployment_problems(settings: Settings) -> list[str]:
    """Every missing or contradictory setting of a deployment; empty locally or when ready."""
    if not settings.deployment:
        return []
    problems = []
    if not settings.environment:
        problems.append(
            f"DAGSTER_ENVIRONMENT is not set (Dagster+ deployment {settings.cloud_deployment!r}): "
            "set it to npd or prod"
        )
    problems += _lakebase_problems(settings)
    problems += _databricks_problems(settings)
    if not settings.paths.models_url:
        problems.append(
            "DATALOADER_MODELS_URL is not set: the landing job must push the dbt files to the "
            "models repository (a container's local git copy disappears with it)"
        )
    if _loopback(urlparse(settings.dagster_base_url).hostname):
        problems.append(
            f"run links would point at {settings.dagster_base_url}: set "
            "DATALOADER_DAGSTER_BASE_URL (or DAGSTER_CLOUD_URL on Dagster+)"
        )
    return problems


def require_deployment_ready(settings: Settings) -> None:
    """Raise :class:`DeploymentNotReady` listing every problem; nothing happens in local mode."""
    problems = deployment_problems(settings)
    if not problems:
        return
    where = settings.environment or settings.cloud_deployment
    lines = "\n".join(f"  - {problem}" for problem in problems)
    raise DeploymentNotReady(
        f"DataLoader refuses to load in deployment {where!r}: {len(problems)} setting(s) missing "
        f"or contradictory (local fallbacks are never used in a deployment):\n{lines}\n"
        "See docs/operations.md, 'Deploying to Dagster+'."
    )
