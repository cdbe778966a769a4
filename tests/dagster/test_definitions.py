"""The code location loads and validates; settings, run config and run links follow the spec."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import dagster as dg
import pytest
import yaml
from deployment_env import deployment_env
from helpers import make_row

from dagsters.definitions import build_definitions, defs
from dagsters.local.cli import GENERATED_MARKER, dev_environment
from dagsters.policy.run_requests import (
    landing_run_config,
    landing_run_key,
    load_params,
    run_id_from_url,
    source_system,
)
from dagsters.resources.pipes_databricks import PipesDatabricksResource
from dagsters.runners.databricks import databricks_run_name
from dagsters.settings import Settings, SettingsError, load_settings
from databricks_scripts.contract import LOAD_PARAM_FIELDS

ROOT = Path(__file__).resolve().parents[2]


def test_definitions_validate_like_the_cli():
    dg.Definitions.validate_loadable(defs)
    # The same check `dagster definitions validate` runs, in its own process.
    completed = subprocess.run(
        [
            str(Path(sys.executable).with_name("dagster")),
            "definitions",
            "validate",
            "-w",
            str(ROOT / "workspace.yaml"),
        ],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_definitions_hold_the_specs_sensors_assets_jobs_and_resources():
    repo = defs.get_repository_def()
    sensors = {s.name: s for s in repo.sensor_defs}
    assert {name: s.minimum_interval_seconds for name, s in sensors.items()} == {
        "master_sensor": 60,
        "longqueued_monitor": 600,
        "longrunning_monitor": 600,
        "failed_monitor": 900,
        "landing_table_monitor": 1800,
    }
    assert sensors["master_sensor"].job_name == "dataloader__table_load_job"
    assert sensors["failed_monitor"].job_name == "dataloader__retry_analysis_job"
    assert sensors["landing_table_monitor"].job_name == "landing_table_git_job"
    keys = {key.to_user_string() for key in repo.assets_defs_by_key}
    assert {"dataloader__table_load", "dataloader__retry_analysis"} <= keys
    assert set(defs.resources) >= {"lakebase", "pipes_databricks", "databricks_rest", "models_repo"}
    load_job = repo.get_job("dataloader__table_load_job")
    assert load_job.partitions_def.name == "control_key"


def test_sensor_status_and_intervals_follow_the_environment():
    settings = load_settings(
        {"DATALOADER_MASTER_SENSOR_INTERVAL_SECONDS": "15", "DATALOADER_EXECUTION": "databricks"}
    )
    built = build_definitions(settings).get_repository_def()
    master = built.get_sensor_def("master_sensor")
    assert master.minimum_interval_seconds == 15
    # Deployments start with sensors stopped unless asked; local mode starts them.
    assert master.default_status == dg.DefaultSensorStatus.STOPPED
    assert load_settings({}).sensors_running
    assert load_settings({"DATALOADER_SENSORS_RUNNING": "false"}).sensors_running is False


def test_settings_defaults_are_the_specs_and_bad_values_are_refused():
    assert load_settings({}) == Settings()
    assert Settings().master_batch_size == 10
    assert Settings().longqueued_threshold_minutes == 60
    assert Settings().longrunning_threshold_minutes == 180
    assert Settings().retry.max_retries == 3
    assert load_settings({"DATALOADER_MAX_RETRIES": "5"}).retry.max_retries == 5
    assert load_settings({"DATALOADER_MASTER_SENSOR_BATCH_SIZE": "25"}).master_batch_size == 25
    with pytest.raises(SettingsError, match="DATALOADER_MASTER_SENSOR_BATCH_SIZE"):
        load_settings({"DATALOADER_MASTER_SENSOR_BATCH_SIZE": "ten"})
    with pytest.raises(SettingsError, match="greater than 0"):
        load_settings({"DATALOADER_LONGQUEUED_THRESHOLD_MINUTES": "0"})
    with pytest.raises(SettingsError, match="DATALOADER_EXECUTION"):
        load_settings({"DATALOADER_EXECUTION": "cloud"})


def dagster_run_url(run_id: str, env: dict[str, str]) -> str:
    return load_settings(env).dagster_run_url(run_id)


def test_dagster_run_links():
    assert dagster_run_url("abc", {}) == "http://127.0.0.1:3000/runs/abc"
    assert (
        dagster_run_url("abc", {"DATALOADER_DAGSTER_BASE_URL": "https://acme.dagster.cloud/prod/"})
        == "https://acme.dagster.cloud/prod/runs/abc"
    )
    cloud = {
        "DAGSTER_CLOUD_URL": "https://acme.agent.dagster.cloud",
        "DAGSTER_CLOUD_DEPLOYMENT_NAME": "prod",
    }
    assert dagster_run_url("abc", cloud) == "https://acme.dagster.cloud/prod/runs/abc"
    assert run_id_from_url("https://acme.dagster.cloud/prod/runs/abc-123") == "abc-123"
    assert run_id_from_url("http://127.0.0.1:3000/runs/abc/") == "abc"
    assert run_id_from_url("not a link") is None
    assert run_id_from_url(None) is None


def test_load_params_are_json_safe_and_complete():
    row = make_row(
        config_id=7,
        control_key="k",
        db_type="mysql",
        db_config_value={"host": "h", "port": 3306, "password_secret": "pw"},
        merge_keys=["a", "b"],
        lookback_window=timedelta(minutes=5),
        incremental_value="2024-01-01",
    )
    params = load_params(row, metadata_id=9)
    assert list(params) == list(LOAD_PARAM_FIELDS) and params["metadata_id"] == 9
    assert params["lookback_window_seconds"] == 300.0
    assert params["merge_keys"] == ["a", "b"]
    assert params["force_full_reload"] is False
    assert params["db_config_value"] == {"host": "h", "port": 3306, "password_secret": "pw"}
    assert source_system(row) == "mysql_h_3306"


def test_landing_run_key_is_stable_for_one_batch():
    rows = [make_row(config_id=2, last_metadata_id=5), make_row(config_id=1, last_metadata_id=4)]
    assert landing_run_key(rows) == landing_run_key(list(reversed(rows)))
    assert landing_run_key(rows) != landing_run_key(
        [make_row(config_id=2, last_metadata_id=6), make_row(config_id=1, last_metadata_id=4)]
    )
    assert landing_run_config([2, 1]) == {
        "ops": {"landing_table_git_op": {"config": {"config_ids": [1, 2]}}}
    }


def test_dev_environment_writes_a_dagster_home_with_a_source_system_limit(tmp_path):
    env = dev_environment("127.0.0.1", 3999, {"DATALOADER_HOME": str(tmp_path)})
    assert env["DAGSTER_HOME"] == str(tmp_path / "dagster_home")
    assert env["DATALOADER_DAGSTER_BASE_URL"] == "http://127.0.0.1:3999"
    assert env["DATALOADER_LAKE_ROOT"] == str(tmp_path / "lake")
    # Dagster's tail of a step's output gets half a second after the step: its last lines reach the
    # terminal (a person's own setting wins).
    assert env["DAGSTER_COMPUTE_LOG_TAIL_WAIT_AFTER_FINISH"] == "0.5"
    own = {"DATALOADER_HOME": str(tmp_path), "DAGSTER_COMPUTE_LOG_TAIL_WAIT_AFTER_FINISH": "0"}
    assert (
        dev_environment("127.0.0.1", 3999, own)["DAGSTER_COMPUTE_LOG_TAIL_WAIT_AFTER_FINISH"] == "0"
    )
    text = (tmp_path / "dagster_home" / "dagster.yaml").read_text()
    assert text.startswith(GENERATED_MARKER)
    config = yaml.safe_load(text)
    [limit] = config["concurrency"]["runs"]["tag_concurrency_limits"]
    assert limit["key"] == "dataloader/source_system"
    assert limit["value"] == {"applyLimitPerUniqueValue": True}
    # A person's own dagster.yaml is kept.
    (tmp_path / "dagster_home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    dev_environment("127.0.0.1", 3999, {"DATALOADER_HOME": str(tmp_path)})
    assert (tmp_path / "dagster_home" / "dagster.yaml").read_text().startswith("telemetry")


def test_dev_dagster_home_is_an_instance_that_dequeues_at_the_set_interval(tmp_path):
    """The generated dagster.yaml loads as a Dagster instance: a queued run coordinator with the
    per-source limit and DATALOADER_DEQUEUE_INTERVAL_SECONDS (Dagster's own default is 5 s)."""
    env = {"DATALOADER_HOME": str(tmp_path), "DATALOADER_DEQUEUE_INTERVAL_SECONDS": "2"}
    dev_environment("127.0.0.1", 3999, env)
    with dg.DagsterInstance.from_config(str(tmp_path / "dagster_home")) as instance:
        coordinator = instance.run_coordinator
        assert coordinator.dequeue_interval_seconds == 2
        assert coordinator.dequeue_use_threads is True
        assert instance.nux_enabled is False  # no sign-up dialog over the UI
        [limit] = instance.get_concurrency_config().run_queue_config.tag_concurrency_limits
        assert limit["key"] == "dataloader/source_system"
        assert limit["limit"] == 2


def test_dagster_environment_reaches_job_tags_and_databricks_run_names():
    repo = build_definitions(load_settings(deployment_env("npd"))).get_repository_def()
    for job in ("dataloader__table_load_job", "dataloader__retry_analysis_job"):
        assert repo.get_job(job).tags["dataloader/environment"] == "npd"
    unset = build_definitions(Settings()).get_repository_def()
    assert "dataloader/environment" not in unset.get_job("dataloader__table_load_job").tags

    npd = PipesDatabricksResource.from_settings(Settings(environment="npd"))
    assert npd.environment == "npd"
    assert PipesDatabricksResource.from_settings(Settings()).environment is None
    name = databricks_run_name("pg.orders", "abc-123", "prod")
    assert name == f"dataloader [prod] pg.orders (dagster run {dagster_run_url('abc-123', {})})"
    assert databricks_run_name("pg.orders", "abc-123", None).startswith("dataloader pg.orders (")


def test_load_and_retry_runs_execute_their_one_step_in_the_run_worker():
    """Each run of these jobs is one step: it runs in the run worker's own process, never in a
    second process that imports the code location again (docs/operations.md, throughput)."""
    repo = build_definitions(Settings()).get_repository_def()
    for job in ("dataloader__table_load_job", "dataloader__retry_analysis_job"):
        job_def = repo.get_job(job)
        assert len(job_def.graph.node_defs) == 1
        assert job_def.executor_def is dg.in_process_executor


def test_batch_runs_are_a_job_of_their_own_launched_by_master_sensor_only_when_asked():
    """DATALOADER_RUN_BATCH_SIZE > 1: the batch job exists, runs in the run worker, and
    master_sensor targets both load jobs; unset or 1: neither the job nor the second target."""
    plain = build_definitions(Settings()).get_repository_def()
    assert not plain.has_job("dataloader__table_load_batch_job")
    assert plain.get_sensor_def("master_sensor").job_name == "dataloader__table_load_job"

    repo = build_definitions(load_settings({"DATALOADER_RUN_BATCH_SIZE": "10"}))
    repo = repo.get_repository_def()
    batch = repo.get_job("dataloader__table_load_batch_job")
    assert batch.executor_def is dg.in_process_executor
    assert batch.partitions_def is None
    targets = {t.job_name for t in repo.get_sensor_def("master_sensor").targets}
    assert targets == {"dataloader__table_load_job", "dataloader__table_load_batch_job"}
