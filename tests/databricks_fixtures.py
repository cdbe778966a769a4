"""The Databricks stand-in as the loads use it, for every test that runs a load on "Databricks":
the ``standin`` fixture (the repository's scripts deployed, the Arrow engine as the cluster's
runtime, the SDK's environment pointing at it), the three compute backends, and a claim then a
materialization of one partition as master_sensor and a run worker do it. Registered for the whole
suite by tests/conftest.py (``pytest_plugins``), so no test file redefines or imports them."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
from databricks_standin import (  # noqa: F401 - databricks_standin: the fixture standin builds on
    CLUSTER,
    REPO_SCRIPTS,
    VOLUME,
    WORKSPACE_SCRIPTS,
    DatabricksStandin,
    arrow_runtime,
    databricks_standin,
)
from deltalake import DeltaTable
from helpers import claim_due, lakebase_for

from dagsters.assets.dataloader_pipes_asset import build_load_asset
from dagsters.partitions import PARTITIONS_NAME
from dagsters.policy.run_requests import load_run_config
from dagsters.resources.pipes_databricks import PipesDatabricksResource
from dagsters.settings import load_settings
from dagsters.utils.lakebase_client import LakebaseClient

# A single-node job cluster that can write Unity Catalog tables (dagsters/runners/cluster_spec.py).
NEW_CLUSTER = (
    '{"spark_version": "15.4.x-scala2.12", "node_type_id": "i3.xlarge", "num_workers": 0, '
    '"data_security_mode": "SINGLE_USER", '
    '"spark_conf": {"spark.databricks.cluster.profile": "singleNode", "spark.master": "local[*]"}, '
    '"custom_tags": {"ResourceClass": "SingleNode"}}'
)
BACKENDS = {
    # Classic compute keeps the Pipes files in the volume unless DBFS is asked for.
    "existing_cluster": {"cluster_id": CLUSTER, "volume_path": VOLUME},
    "new_cluster": {"new_cluster_json": NEW_CLUSTER, "volume_path": VOLUME},
    "serverless": {"serverless": True, "volume_path": VOLUME},
}


@pytest.fixture
def standin(
    databricks_standin: DatabricksStandin,  # noqa: F811
    lake_root: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> DatabricksStandin:
    databricks_standin.deploy(REPO_SCRIPTS, WORKSPACE_SCRIPTS)
    # The run sees only a cluster's environment; with no Spark in the stand-in, its runtime
    # loads with the Arrow engine into the test's lake.
    databricks_standin.runtime_env.update(arrow_runtime(lake_root))
    # The resource authenticates like production: databricks-sdk reads these.
    for name, value in databricks_standin.env().items():
        monkeypatch.setenv(name, value)
    return databricks_standin


def databricks_backend(backend: str) -> PipesDatabricksResource:
    return PipesDatabricksResource(
        execution="databricks",
        scripts_path=WORKSPACE_SCRIPTS,
        poll_interval_seconds=0.2,
        **BACKENDS[backend],
    )


def claim_and_materialize(control_db, instance, key, backend="existing_cluster", pipes=None):
    """What master_sensor and a run worker do: claim the due row, run its partition (with
    ``pipes``, else the ``backend`` of BACKENDS running the repository's scripts)."""
    with LakebaseClient(control_db) as client:
        [claimed] = [r for r in claim_due(client, 10) if r.control_key == key]
    instance.add_dynamic_partitions(PARTITIONS_NAME, [key])
    result = dg.materialize(
        [build_load_asset(load_settings())],
        partition_key=key,
        run_config=load_run_config(claimed),
        resources={
            "lakebase": lakebase_for(control_db),
            "pipes_databricks": pipes or databricks_backend(backend),
        },
        instance=instance,
        raise_on_error=False,
    )
    return result, claimed


def destination_rows(lake_root: Path) -> int:
    return DeltaTable(str(lake_root / "lake" / "raw" / "orders")).to_pyarrow_table().num_rows
