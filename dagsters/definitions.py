"""The DataLoader code location: five sensors, two assets, the landing job and their resources.

Loaded by ``dagster dev -w workspace.yaml`` locally and by Dagster+ (``dagster_cloud.yaml``).
This is the edge: ``load_settings()`` reads the environment once (``dagsters/settings.py``: the
spec's defaults, ``DATALOADER_`` overrides, ``LAKEBASE_*``, ``DAGSTER_ENVIRONMENT``, ...) and
``build_definitions(settings)`` hands that one ``Settings`` object to every sensor, asset and
resource. With no ``LAKEBASE_HOST`` the ``lakebase`` resource is the embedded local server
(``dagsters.local``; the only product-side import of it is here). In a deployment (npd, prod,
Dagster+) nothing falls back to local mode: ``build_definitions`` refuses to load with one message
listing every missing or contradictory setting (``dagsters/deployment.py``).

``build_definitions(settings, translator=...)`` takes a ``DataLoaderTranslator`` (default: the
shipped one, ``dagsters/translator.py``): every table asset, its checks, the load's runtime report
and the review status name a row's asset with it. A code location of your own that builds with a
subclass (``defs = build_definitions(load_settings(), translator=MyTranslator())``) changes the
keys and groups everywhere (README.md, "Your own asset keys and groups").
"""

from __future__ import annotations

import dagster as dg

from dagsters.alerts import ALERT_ON_FAILURE_TAGS
from dagsters.assets.dataloader_pipes_asset import build_load_asset, build_retry_asset
from dagsters.assets.deep_verify import DEEP_CHECKS, deep_verify_job, deep_verify_schedule
from dagsters.assets.launch_config import load_job_config
from dagsters.assets.load_checks import load_review_check
from dagsters.assets.table_specs import declared_rows, table_asset_definitions
from dagsters.console_logger import one_line_console_logger
from dagsters.control.table_listing import declared_fingerprint
from dagsters.deployment import require_deployment_ready
from dagsters.jobs.history_retention_job import (
    build_history_retention_job,
    build_history_retention_schedule,
)
from dagsters.jobs.landing_table_git_job import landing_table_git_job
from dagsters.jobs.release_review_job import release_review_job
from dagsters.local.lakebase import lakebase_resource
from dagsters.policy.run_requests import environment_tags
from dagsters.resources.databricks_rest import DatabricksRestResource
from dagsters.resources.databricks_workspace import DatabricksWorkspaceResource
from dagsters.resources.models_repo import ModelsRepoResource
from dagsters.resources.pipes_databricks import PipesDatabricksResource
from dagsters.resources.settled import settled
from dagsters.sensors.dataloader_failed_monitor import RETRY_JOB, build_failed_monitor
from dagsters.sensors.dataloader_landing_table_monitor import build_landing_table_monitor
from dagsters.sensors.dataloader_longqueued_monitor import build_longqueued_monitor
from dagsters.sensors.dataloader_longrunning_monitor import build_longrunning_monitor
from dagsters.sensors.dataloader_master_sensor import LOAD_JOB, batching, build_master_sensor
from dagsters.settings import Settings, load_settings
from dagsters.translator import DEFAULT_TRANSLATOR, DataLoaderTranslator


def build_resources(settings: Settings) -> dict[str, object]:
    """Every resource, built from ``settings``; no secret becomes visible resource config.

    One ``databricks_workspace`` (host from settings, credentials from databricks-sdk's own chain)
    is injected into every resource that talks to Databricks and into the sensors that do, so a
    process builds one ``WorkspaceClient``, on first use (never in local mode)."""
    workspace = DatabricksWorkspaceResource.from_settings(settings)
    return {
        "databricks_workspace": workspace,
        "lakebase": lakebase_resource(settings, workspace),
        "pipes_databricks": PipesDatabricksResource.from_settings(settings, workspace=workspace),
        "databricks_rest": DatabricksRestResource.from_settings(settings, workspace=workspace),
        "models_repo": ModelsRepoResource.from_settings(settings, workspace),
    }


def build_definitions(
    settings: Settings, translator: DataLoaderTranslator = DEFAULT_TRANSLATOR
) -> dg.Definitions:
    # In npd/prod/Dagster+ no local fallback may stand in for a missing setting: refuse to load,
    # listing every problem at once (dagsters/deployment.py). Local mode is unaffected.
    require_deployment_ready(settings)
    resources = build_resources(settings)
    load_asset = build_load_asset(settings, translator)
    retry_asset = build_retry_asset(settings, translator)
    lakebase = resources["lakebase"]
    load_job = dg.define_asset_job(
        LOAD_JOB,
        # Without the load asset's needs_review check: one step per run (the load reports it).
        selection=dg.AssetSelection.assets(load_asset).without_checks(),
        description="One table load; launched by master_sensor, or by a person for a partition.",
        tags=environment_tags(settings.environment),
        # A partition picked in the launchpad gets the table's tags (its per-source limit).
        config=load_job_config(lambda key: lakebase.get_client().get_table_details(key)),
        # One step per run: the multiprocess executor's second process (importing the code
        # location again) and its slow exit bought nothing but time (docs/operations.md).
        executor_def=dg.in_process_executor,
    )
    retry_job = dg.define_asset_job(
        RETRY_JOB,
        selection=[retry_asset],
        description="Retry-or-review decision for one failed load; launched by failed_monitor.",
        tags={**environment_tags(settings.environment), **ALERT_ON_FAILURE_TAGS},
        executor_def=dg.in_process_executor,  # one step per run, like the load job
    )
    retention_job = build_history_retention_job(settings)
    tables = declared_rows(settings, lakebase)
    table_specs, table_checks = table_asset_definitions(settings, lakebase, tables, translator)
    jobs = [load_job, retry_job, landing_table_git_job, retention_job, release_review_job]
    schedules = [build_history_retention_schedule(settings, retention_job)]
    deep = [c for c in table_checks if DEEP_CHECKS in c.node_def.name]
    if deep:  # declared keyed tables: their deep verification, on demand or weekly
        jobs.append(deep_verify_job(deep[0]))
        schedules.append(deep_verify_schedule(jobs[-1]))
    load_jobs = None
    if batching(settings):  # DATALOADER_RUN_BATCH_SIZE > 1: master_sensor launches both jobs
        from dagsters.assets.load_batch import build_load_batch_job

        load_jobs = [load_job, build_load_batch_job(settings, translator)]
        jobs.append(load_jobs[-1])
    sensors = [
        build_master_sensor(settings, load_jobs),
        build_longqueued_monitor(settings),
        build_longrunning_monitor(settings),
        build_failed_monitor(settings, translator),
        build_landing_table_monitor(settings),
    ]
    if settings.reloads_table_assets:  # local work: a new row's asset without a manual reload
        from dagsters.sensors.table_assets_sensor import build_table_assets_sensor

        sensors.append(build_table_assets_sensor(settings, declared_fingerprint(tables)))
    return dg.Definitions(
        assets=[load_asset, retry_asset, *table_specs],
        asset_checks=[load_review_check(), *table_checks],
        jobs=jobs,
        schedules=schedules,
        sensors=sensors,
        resources=settled(resources),  # no resource config in the launchpad
        loggers={"console": one_line_console_logger},  # one line per event in the terminal
    )


defs = build_definitions(load_settings())
