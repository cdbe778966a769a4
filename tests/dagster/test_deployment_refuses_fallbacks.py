"""In a deployment the code location refuses to load, listing every missing setting at once.

Locally nothing changes: no variable set still means the embedded database, subprocess loads and
sensors running. The bundle has the spec's environments (npd, prod), each owned by a service
principal and syncing the scripts where the code location looks for them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml
from deployment_env import LAKEBASE_PASSWORD, MODELS_TOKEN, deployment_env

from dagsters.definitions import build_definitions
from dagsters.deployment import DeploymentNotReady, deployment_problems
from dagsters.local.lakebase import EmbeddedLakebaseResource
from dagsters.runners.databricks import DEFAULT_WORKSPACE_SCRIPTS
from dagsters.settings import load_settings


def _built(resource):
    """The object a config-less resource definition (dagsters/resources/settled.py) hands out."""
    return resource.resource_fn(None) if isinstance(resource, dg.ResourceDefinition) else resource


ROOT = Path(__file__).resolve().parents[2]


def refusal(env: dict[str, str]) -> str:
    with pytest.raises(DeploymentNotReady) as info:
        build_definitions(load_settings(env))
    return str(info.value)


def test_local_mode_needs_nothing_and_keeps_its_fallbacks():
    settings = load_settings({})
    assert not settings.deployment
    assert deployment_problems(settings) == []
    defs = build_definitions(settings)
    assert isinstance(_built(defs.resources["lakebase"]), EmbeddedLakebaseResource)
    master = defs.get_repository_def().get_sensor_def("master_sensor")
    assert master.default_status == dg.DefaultSensorStatus.RUNNING


def test_a_ready_deployment_loads():
    settings = load_settings(deployment_env("prod"))
    assert settings.deployment
    assert deployment_problems(settings) == []
    defs = build_definitions(settings)
    dg.Definitions.validate_loadable(defs)
    assert not isinstance(_built(defs.resources["lakebase"]), EmbeddedLakebaseResource)


def test_an_empty_deployment_gets_one_message_naming_every_missing_setting():
    message = refusal({"DAGSTER_ENVIRONMENT": "npd"})
    assert message.startswith("DataLoader refuses to load in deployment 'npd'")
    for name in (
        "LAKEBASE_HOST",
        "DATALOADER_EXECUTION",
        "DATABRICKS_HOST or DATABRICKS_WORKSPACE_URL",
        "DATABRICKS_CLUSTER_ID",
        "DATABRICKS_WAREHOUSE_ID",
        "DATALOADER_MODELS_URL",
        "DATALOADER_DAGSTER_BASE_URL",
    ):
        assert name in message, name
    assert "7 setting(s)" in message
    assert "Deploying to Dagster+" in message


def test_dagster_plus_alone_marks_a_deployment_and_needs_the_environment_name():
    env = deployment_env("prod", DAGSTER_ENVIRONMENT=None)
    message = refusal(env)
    assert "DAGSTER_ENVIRONMENT is not set (Dagster+ deployment 'prod')" in message
    assert "1 setting(s)" in message


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"LAKEBASE_HOST": "127.0.0.1"}, "LAKEBASE_HOST=127.0.0.1 is this container"),
        ({"LAKEBASE_HOST": "localhost"}, "LAKEBASE_HOST=localhost is this container"),
        ({"LAKEBASE_SSLMODE": "disable"}, "LAKEBASE_SSLMODE=disable"),
        ({"LAKEBASE_PASSWORD": None}, "LAKEBASE_PASSWORD is not set"),
        ({"LAKEBASE_USER": None}, "LAKEBASE_USER is not set"),
        ({"DATALOADER_LAKEBASE_AUTH_MODE": "oauth"}, "oauth needs DATALOADER_LAKEBASE_INSTANCE"),
        ({"DATALOADER_EXECUTION": "local"}, "DATALOADER_EXECUTION is 'local'"),
        (
            {
                "DATABRICKS_CLUSTER_ID": None,
                "DATALOADER_DATABRICKS_SERVERLESS": "true",
                "DATALOADER_DATABRICKS_VOLUME_PATH": None,
            },
            "SERVERLESS=true needs DATALOADER_DATABRICKS_VOLUME_PATH",
        ),
        ({"DAGSTER_CLOUD_URL": None}, "run links would point at http://127.0.0.1:3000"),
        (
            {"DATALOADER_DAGSTER_BASE_URL": "http://localhost:3000"},
            "run links would point at http://localhost:3000",
        ),
    ],
)
def test_each_contradiction_is_named(override, expected):
    message = refusal(deployment_env("npd", **override))
    assert expected in message
    assert "1 setting(s)" in message


def test_oauth_with_an_instance_needs_no_password():
    env = deployment_env(
        "npd",
        LAKEBASE_PASSWORD=None,
        DATALOADER_LAKEBASE_AUTH_MODE="oauth",
        DATALOADER_LAKEBASE_INSTANCE="dataloader-npd",
    )
    assert deployment_problems(load_settings(env)) == []


def test_the_refusal_never_shows_a_secret():
    message = refusal(deployment_env("prod", LAKEBASE_HOST="localhost", DATABRICKS_HOST=None))
    assert LAKEBASE_PASSWORD not in message
    assert MODELS_TOKEN not in message
    assert MODELS_TOKEN not in repr(load_settings(deployment_env()))


def test_the_code_location_itself_refuses_to_load_in_an_unready_deployment():
    """What Dagster+ does: import the module; the error it shows is the list."""
    env = {"PATH": "/usr/bin:/bin", "DAGSTER_ENVIRONMENT": "prod", "HOME": str(ROOT)}
    completed = subprocess.run(
        [sys.executable, "-c", "import dagsters.definitions"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode != 0
    assert "DeploymentNotReady" in completed.stderr
    assert "LAKEBASE_HOST is not set" in completed.stderr
    assert "DATALOADER_MODELS_URL is not set" in completed.stderr


@pytest.fixture(scope="module")
def bundle() -> dict:
    return yaml.safe_load((ROOT / "databricks.yml").read_text())


@pytest.mark.parametrize("target", ["npd", "prod"])
def test_bundle_targets_are_the_spec_environments(bundle, target):
    spec = bundle["targets"][target]
    assert spec["mode"] == "production"
    principal = "${var.service_principal}"
    assert spec["run_as"] == {"service_principal_name": principal}
    assert {"level": "CAN_MANAGE", "service_principal_name": principal} in spec["permissions"]
    # One variable, given a value in each target: the principal named dataloader-<target>.
    assert spec["variables"]["service_principal"]["lookup"] == {
        "service_principal": f"dataloader-{target}"
    }
    synced = f"{spec['workspace']['file_path']}/{bundle['sync']['paths'][0]}"
    # Where the code location's Databricks runner looks when DATALOADER_SCRIPTS_PATH is unset.
    assert synced == DEFAULT_WORKSPACE_SCRIPTS
    assert not spec.get("default")


def test_bundle_has_only_dev_and_the_spec_environments(bundle):
    assert set(bundle["targets"]) == {"dev", "npd", "prod"}
    assert bundle["targets"]["dev"]["mode"] == "development"
