"""table_assets_sensor: a row added (or paused) with SQL gets (or loses) its declared table asset
without a person reloading the code location. Local work only.

The destination tables are declared when the code location loads (``assets/table_specs``). This
sensor reads the same rows the same way (``control/table_listing``) every
``DATALOADER_TABLE_ASSETS_RELOAD_SECONDS`` (15) and, when their fingerprint differs from the one
the loaded definitions were built from, asks the webserver that serves the UI
(``DATALOADER_DAGSTER_BASE_URL``, which ``dataloader dev`` sets to its own address) to reload this
code location through its GraphQL mutation ``reloadRepositoryLocation``: the UI's Deployment →
Reload. The reloaded code location declares the new set, and its sensor finds nothing to do.

The cursor holds the fingerprint last asked for: a reload that did not change the loaded set (the
webserver unreachable, the control database unreadable while the code location loaded) is asked
for again only after ``RETRY_SECONDS``, never on every tick.

Built only when ``Settings.reloads_table_assets`` (and imported only then). Not built in a
deployment (npd, prod, Dagster+): there a code location is reloaded by a deploy,
and a Dagster+ reload needs an API token this code location should not hold (docs/assets.md).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

import dagster as dg

from dagsters.control.table_listing import declared_fingerprint, rows_to_declare
from dagsters.resources.lakebase import LakebaseResource
from dagsters.sensors import alert_on_error, default_status
from dagsters.settings import Settings

SENSOR_NAME = "table_assets_sensor"
LOCATION_NAME = "dataloader"  # workspace.yaml's location_name, when the sensor cannot tell
RETRY_SECONDS = 300
RELOAD_TIMEOUT_SECONDS = 120  # the webserver answers once the code location has loaded again
RELOAD_MUTATION = (
    "mutation($name: String!) { reloadRepositoryLocation(repositoryLocationName: $name) {"
    " __typename ... on WorkspaceLocationEntry { name }"
    " ... on PythonError { message } ... on ReloadNotSupported { message }"
    " ... on RepositoryLocationNotFound { message } ... on UnauthorizedError { message } } }"
)


def request_reload(base_url: str, location: str) -> str | None:
    """Ask the webserver at ``base_url`` to reload ``location``: None when it did, else why not."""
    body = json.dumps({"query": RELOAD_MUTATION, "variables": {"name": location}}).encode()
    request = urllib.request.Request(
        f"{base_url.rstrip('/')}/graphql",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=RELOAD_TIMEOUT_SECONDS) as response:
            answer = json.load(response)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return f"the webserver at {base_url} did not answer: {exc}"
    if answer.get("errors"):
        return f"the webserver refused: {answer['errors'][0].get('message')}"
    result = (answer.get("data") or {}).get("reloadRepositoryLocation") or {}
    if result.get("__typename") != "WorkspaceLocationEntry":
        return f"{result.get('__typename')}: {result.get('message')}"
    return None


def _cursor(raw: str | None) -> Mapping[str, Any]:
    try:
        return json.loads(raw) if raw else {}
    except ValueError:
        return {}


def build_table_assets_sensor(settings: Settings, built_from: str) -> dg.SensorDefinition:
    """The sensor of a code location whose declared tables have fingerprint ``built_from``."""

    @dg.sensor(
        name=SENSOR_NAME,
        minimum_interval_seconds=settings.table_assets_reload_seconds,
        default_status=default_status(settings),
        description=(
            "Local work: reloads this code location when the active table_control rows change, "
            "so a table added or paused with SQL gets or loses its asset, checks and freshness."
        ),
    )
    @alert_on_error(settings, SENSOR_NAME)
    def table_assets_sensor(
        context: dg.SensorEvaluationContext, lakebase: LakebaseResource
    ) -> dg.SkipReason:
        rows, _over_cap = rows_to_declare(lakebase.get_client(), settings.table_assets_max)
        now = declared_fingerprint(rows)
        if now == built_from:
            return dg.SkipReason(f"The declared tables match the {len(rows)} active row(s).")
        asked = _cursor(context.cursor)
        if asked.get("fingerprint") == now and time.time() - asked.get("at", 0) < RETRY_SECONDS:
            return dg.SkipReason(
                "A reload was asked for these rows and the declared tables still differ; asking "
                f"again after {RETRY_SECONDS} s (the code location's log says why)."
            )
        origin = context.code_location_origin
        location = getattr(origin, "location_name", None) or LOCATION_NAME
        context.update_cursor(json.dumps({"fingerprint": now, "at": time.time()}))
        failed = request_reload(settings.dagster_base_url, location)
        if failed:
            context.log.warning(f"Reloading code location {location}: {failed}")
            return dg.SkipReason(f"Could not reload code location {location}: {failed}")
        context.log.info(f"Active tables changed: code location {location} reloaded")
        return dg.SkipReason(
            f"The active rows changed ({len(rows)} to declare): code location {location} reloaded."
        )

    return table_assets_sensor
