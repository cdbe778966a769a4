"""The launchpad shows the one option a person sets, never resource config.

Dagster's UI pre-fills the launchpad with ``rootDefaultYaml`` of the run config schema (the asset
page's "Open launchpad" asks for the asset's selection of ``__ASSET_JOB``, the job page for the
job). Asked here through Dagster's GraphQL schema, against the real code location
(``dagsters/definitions.py``) served by a real code server process, once with the embedded
Lakebase and once with a configured one whose host and password the process holds.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster_graphql.test.utils import define_out_of_process_context, execute_dagster_graphql

from dagsters.policy.run_requests import LOAD_ASSET

DEFINITIONS = str(Path(__file__).resolve().parents[2] / "dagsters" / "definitions.py")
LOAD_JOB = "dataloader__table_load_job"
ONLY_OPTION = {"ops": {LOAD_ASSET: {"config": {"force_full_reload": False}}}}

SCHEMA = """query($s: PipelineSelector!) { runConfigSchemaOrError(selector: $s) { __typename
  ... on RunConfigSchema { rootDefaultYaml
    allConfigTypes { key description
      ... on CompositeConfigType { fields { name description defaultValueAsJson } } } }
  ... on PythonError { message } } }"""


@pytest.fixture(params=["embedded", "configured"])
def code_location(request, tmp_path: Path, monkeypatch) -> Iterator[tuple[object, list[str]]]:
    home = tmp_path / "machine-specific-home"
    monkeypatch.setenv("DATALOADER_HOME", str(home))
    monkeypatch.delenv("DATALOADER_LAKE_ROOT", raising=False)
    for name in ("LAKEBASE_HOST", "LAKEBASE_PASSWORD", "DAGSTER_ENVIRONMENT"):
        monkeypatch.delenv(name, raising=False)
    hidden = [str(home), "seed_demo", "sslmode"]
    if request.param == "configured":
        monkeypatch.setenv("LAKEBASE_HOST", "lakebase-host-7f3a.example.invalid")
        monkeypatch.setenv("LAKEBASE_USER", "svc_loader_7f3a")
        monkeypatch.setenv("LAKEBASE_PASSWORD", "Lakebase-Pass-7f3a")
        hidden += ["lakebase-host-7f3a", "svc_loader_7f3a", "Lakebase-Pass-7f3a"]
    with (
        dg.instance_for_test() as instance,
        define_out_of_process_context(DEFINITIONS, None, instance) as context,
    ):
        yield context, hidden


def _schema(context, **selector) -> dict:
    [location] = context.code_location_names
    result = execute_dagster_graphql(
        context,
        SCHEMA,
        {"s": {"repositoryLocationName": location, "repositoryName": "__repository__", **selector}},
    )
    assert not result.errors, result.errors
    found = result.data["runConfigSchemaOrError"]
    assert found["__typename"] == "RunConfigSchema", found
    return found


@pytest.mark.parametrize(
    "selector",
    [
        {"pipelineName": LOAD_JOB},
        {"pipelineName": "__ASSET_JOB", "assetSelection": [{"path": [LOAD_ASSET]}]},
    ],
    ids=["job launchpad", "asset page launchpad"],
)
def test_the_launchpad_is_prefilled_with_the_load_option_only(code_location, selector):
    context, hidden = code_location
    schema = _schema(context, **selector)
    prefilled = yaml.safe_load(schema["rootDefaultYaml"])
    resources = prefilled.pop("resources", {})
    assert prefilled == ONLY_OPTION
    assert resources in ({}, None)  # no resource has config a launch could set
    # Nothing machine-specific or secret-adjacent anywhere in what the launchpad can show
    # (defaults and descriptions of every config type, also the ones it would scaffold).
    everything = json.dumps(schema)
    assert not [h for h in hidden if h in everything], [h for h in hidden if h in everything]
