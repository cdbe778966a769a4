"""The DataLoader code location: five sensors, two assets, the landing job and their resources.

Loaded by ``dagster dev -w workspace.yaml`` locally and by Dagster+ (``dagster_cloud.yaml``).
Sensor intervals, batch size and thresholds come from ``dagsters.utils.settings`` (the spec's
defaults, ``DATALOADER_`` environment overrides); the execution backend from
``DATALOADER_EXECUTION`` (local subprocess or Databricks). ``DAGSTER_ENVIRONMENT`` (npd | prod) is
validated here and tags every run the sensors and jobs launch.
"""

from __future__ import annotations

import dagster as dg

import dagsters.settings
from dagsters.assets.dataloader_pipes_asset import (
    dataloader_retry_analysis,
    dataloader_table_load,
)
from dagsters.jobs.landing_table_git_job import landing_table_git_job
from dagsters.resources.databricks_rest import DatabricksRestResource
from dagsters.resources.lakebase import LakebaseResource
from dagsters.resources.models_repo import ModelsRepoResource
from dagsters.resources.pipes_databricks import PipesDatabricksResource
from dagsters.sensors.dataloader_failed_monitor import RETRY_JOB, build_failed_monitor
from dagsters.sensors.dataloader_landing_table_monitor import build_landing_table_monitor
from dagsters.sensors.dataloader_longqueued_monitor import build_longqueued_monitor
from dagsters.sensors.dataloader_longrunning_monitor import build_longrunning_monitor
from dagsters.sensors.dataloader_master_sensor import LOAD_JOB, build_master_sensor
from dagsters.utils.run_config import environment_tags
from dagsters.utils.settings import Settings, load_settings


def build_definitions(settings: Settings | None = None) -> dg.Definitions:
    settings = settings or load_settings()
    load_job = dg.define_asset_job(
        LOAD_JOB,
        selection=[dataloader_table_load],
        description="One table load; launched by master_sensor, or by a person for a partition.",
        tags=environment_tags(settings.environment),
    )
    retry_job = dg.define_asset_job(
        RETRY_JOB,
        selection=[dataloader_retry_analysis],
        description="Retry-or-review decision for one failed load; launched by failed_monitor.",
        tags=environment_tags(settings.environment),
    )
    return dg.Definitions(
        assets=[dataloader_table_load, dataloader_retry_analysis],
        jobs=[load_job, retry_job, landing_table_git_job],
        sensors=[
            build_master_sensor(settings),
            build_longqueued_monitor(settings),
            build_longrunning_monitor(settings),
            build_failed_monitor(settings),
            build_landing_table_monitor(settings),
        ],
        resources={
            "lakebase": LakebaseResource(),
            "pipes_databricks": PipesDatabricksResource.from_env(),
            "databricks_rest": DatabricksRestResource(),
            # landing branch: stands in until build_definitions takes dagsters.settings.Settings.
            "models_repo": ModelsRepoResource.from_settings(dagsters.settings.load_settings()),
        },
    )


defs = build_definitions()
