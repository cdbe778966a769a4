"""databricks.yml syncs databricks_scripts/ to where the code location runs them, dev paused."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from dagsters.resources.pipes_databricks import PipesDatabricksResource

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "databricks.yml"


@pytest.fixture(scope="module")
def bundle() -> dict:
    return yaml.safe_load(BUNDLE.read_text())


def test_only_the_scripts_are_synced(bundle):
    assert bundle["bundle"]["name"] == "dataloader"
    paths = bundle["sync"]["paths"]
    assert paths == ["databricks_scripts"]
    for path in paths:
        assert (ROOT / path / "dataloader_pipe.py").is_file()
        assert (ROOT / path / "dataloader_retry_pipe.py").is_file()
    assert "**/__pycache__" in bundle["sync"]["exclude"]
    assert "include" not in bundle["sync"]  # nothing outside the scripts rides along


def test_dev_is_the_default_target_and_paused(bundle):
    dev = bundle["targets"]["dev"]
    assert dev["default"] is True
    assert dev["mode"] == "development"  # development mode pauses schedules and triggers
    assert dev["presets"]["trigger_pause_status"] == "PAUSED"
    assert [name for name, t in bundle["targets"].items() if t.get("default")] == ["dev"]


def test_prod_puts_scripts_where_the_code_location_looks(bundle):
    prod = bundle["targets"]["prod"]
    assert prod["mode"] == "production"
    assert prod["run_as"]["service_principal_name"] == "${var.prod_service_principal}"
    synced = f"{prod['workspace']['file_path']}/{bundle['sync']['paths'][0]}"
    # The resource's default script location (used when DATALOADER_SCRIPTS_PATH is unset).
    resource = PipesDatabricksResource(execution="databricks", cluster_id="c")
    task = resource.databricks_runner().task("x.py")
    assert task["spark_python_task"]["python_file"] == f"{synced}/x.py"


def test_every_variable_reference_is_declared_and_no_secret_is_inlined(bundle):
    text = BUNDLE.read_text()
    used = set(re.findall(r"\$\{var\.([A-Za-z0-9_]+)\}", text))
    assert used <= set(bundle["variables"]), used - set(bundle["variables"])
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        assert not re.search(r"(?i)\b(token|password|secret)\s*:", line), line
    assert not re.search(r"dapi[0-9a-f]{8,}", text)


def test_pipes_volume_for_serverless(bundle):
    volume = bundle["resources"]["volumes"]["pipes"]
    assert volume["volume_type"] == "MANAGED"
    assert (volume["catalog_name"], volume["schema_name"], volume["name"]) == (
        "${var.catalog}",
        "${var.schema}",
        "pipes",
    )


@pytest.mark.skipif(
    shutil.which("databricks") is None or os.environ.get("DATALOADER_TEST_BUNDLE_CLI") != "1",
    reason="needs the databricks CLI and DATALOADER_TEST_BUNDLE_CLI=1 (validate talks to the "
    "workspace of the CLI's profile); the structure checks above stand in for it",
)
def test_databricks_cli_validates_the_bundle():
    result = subprocess.run(
        ["databricks", "bundle", "validate", "-t", "dev"],
        check=False,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
