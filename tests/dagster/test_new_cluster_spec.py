"""``DATALOADER_DATABRICKS_NEW_CLUSTER`` is checked before use (issue 12, item 9): keys the SDK
does not know are refused instead of dropped silently, and what the Jobs API and Unity Catalog need
is named, at code-location load and on the row when a load is attempted."""

import inspect
import json
import re

import pytest
from databricks_fixtures import BACKENDS, NEW_CLUSTER, claim_and_materialize, standin  # noqa: F401
from databricks_standin import databricks_standin  # noqa: F401
from deployment_env import deployment_env
from helpers import add_control_row, control_row, history

from dagsters.deployment import deployment_problems
from dagsters.runners.cluster_spec import new_cluster_problems, parse_new_cluster
from dagsters.settings import load_settings

GOOD = {
    "spark_version": "16.4.x-scala2.12",
    "node_type_id": "Standard_D4ds_v5",
    "autoscale": {"min_workers": 1, "max_workers": 4},
    "data_security_mode": "DATA_SECURITY_MODE_DEDICATED",
    "kind": "CLASSIC_PREVIEW",
    "spark_env_vars": {"DATALOADER_ENGINE": "spark"},
}


def _problems(**changes) -> list[str]:
    spec = {**GOOD, **changes}
    return new_cluster_problems(json.dumps({k: v for k, v in spec.items() if v is not None}))


def test_a_complete_spec_passes_and_the_e2e_single_node_spec_too():
    assert _problems() == []
    assert parse_new_cluster(NEW_CLUSTER)["num_workers"] == 0
    assert (
        _problems(autoscale=None, num_workers=2, instance_pool_id="pool", node_type_id=None) == []
    )


def test_a_key_the_sdk_does_not_know_is_refused_not_dropped():
    [problem] = _problems(num_worker=2)
    assert "unknown key(s) num_worker" in problem
    assert "drop them silently" in problem


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"spark_version": None}, "spark_version is required"),
        ({"spark_version": "14.3.x-scala2.12"}, "Databricks Runtime 14.3.x-scala2.12 is not"),
        ({"node_type_id": None}, "node_type_id or instance_pool_id is required"),
        ({"autoscale": None}, "set num_workers or autoscale"),
        ({"autoscale": {"min_workers": 5, "max_workers": 2}}, "min_workers is greater"),
        ({"autoscale": None, "num_workers": 0}, "num_workers 0 needs a single-node profile"),
        ({"autoscale": None, "num_workers": "2"}, "num_workers must be a whole number"),
        ({"data_security_mode": None}, "data_security_mode None cannot write Unity Catalog"),
        ({"data_security_mode": "LEGACY_SINGLE_USER"}, "cannot write Unity Catalog"),
        (
            {"kind": None},
            'data_security_mode DATA_SECURITY_MODE_DEDICATED can only be used with "kind"',
        ),
        ({"kind": "CLASSIC"}, "kind 'CLASSIC' is not one databricks-sdk knows (CLASSIC_PREVIEW)"),
        (
            {"kind": None, "data_security_mode": "SINGLE_USER", "is_single_node": True},
            'is_single_node can only be used with "kind": "CLASSIC_PREVIEW"',
        ),
        (
            {"kind": None, "data_security_mode": "USER_ISOLATION", "use_ml_runtime": False},
            'use_ml_runtime can only be used with "kind": "CLASSIC_PREVIEW"',
        ),
    ],
)
def test_what_the_api_and_unity_catalog_need_is_named(changes, expected):
    problems = _problems(**changes)
    assert len(problems) == 1, problems
    assert expected in problems[0]
    assert problems[0].startswith("DATALOADER_DATABRICKS_NEW_CLUSTER: ")


@pytest.mark.parametrize(
    "mode",
    ["DATA_SECURITY_MODE_AUTO", "DATA_SECURITY_MODE_STANDARD", "DATA_SECURITY_MODE_DEDICATED"],
)
def test_the_kind_only_modes_and_fields_pass_with_classic_preview(mode):
    assert _problems(data_security_mode=mode) == []
    single = {"autoscale": None, "num_workers": 0, "is_single_node": True, "use_ml_runtime": True}
    assert _problems(data_security_mode=mode, **single) == []
    [problem] = _problems(kind=None, data_security_mode=mode, **single)
    assert f"is_single_node, use_ml_runtime, data_security_mode {mode} can only be used" in problem
    # The old forms need no kind.
    assert _problems(kind=None, data_security_mode="USER_ISOLATION") == []


def test_the_kind_rules_are_the_sdks():
    """The modes and fields the checker ties to CLASSIC_PREVIEW are those the SDK's own docs name:
    DataSecurityMode's "can only be used when `kind = CLASSIC_PREVIEW`" list, and every
    ClusterSpec field documented "This field can only be used when `kind = CLASSIC_PREVIEW`"."""
    from databricks.sdk.service.compute import ClusterSpec, DataSecurityMode, Kind

    from dagsters.runners.cluster_spec import CLASSIC_PREVIEW_FIELDS, classic_preview_modes

    assert [k.value for k in Kind] == ["CLASSIC_PREVIEW"]
    doc = " ".join(DataSecurityMode.__doc__.split())
    kind_only = doc.split("can only be used when `kind = CLASSIC_PREVIEW`.")[1]
    kind_only = kind_only.split("The following modes can be used regardless of `kind`")[0]
    assert set(re.findall(r"`(DATA_SECURITY_MODE_[A-Z]+)`", kind_only)) == set(
        classic_preview_modes()
    )
    assert sorted(classic_preview_modes()) == [
        "DATA_SECURITY_MODE_AUTO",
        "DATA_SECURITY_MODE_DEDICATED",
        "DATA_SECURITY_MODE_STANDARD",
    ]
    source = inspect.getsource(ClusterSpec)
    documented = re.findall(
        r"\n    (\w+): Optional\[[^\]]+\] = None\n"
        r'    """This field can only be used when `kind = CLASSIC_PREVIEW`',
        source,
    )
    assert sorted(documented) == sorted(CLASSIC_PREVIEW_FIELDS)


def test_every_problem_is_named_at_once_and_bad_json_is_said_plainly():
    spec = {"num_worker": 1, "spark_version": "13.3.x-scala2.12"}
    assert len(new_cluster_problems(json.dumps(spec))) == 5
    [bad] = new_cluster_problems('{"spark_version": ')
    assert bad.startswith("DATALOADER_DATABRICKS_NEW_CLUSTER is not valid JSON")
    assert "must be a JSON object" in new_cluster_problems("[1]")[0]


def test_the_deployment_check_lists_the_spec_problems():
    env = deployment_env(
        DATABRICKS_CLUSTER_ID=None,
        DATALOADER_DATABRICKS_NEW_CLUSTER=json.dumps({**GOOD, "num_worker": 1}),
    )
    problems = deployment_problems(load_settings(env))
    assert any("unknown key(s) num_worker" in p for p in problems), problems
    good = deployment_env(DATABRICKS_CLUSTER_ID=None, DATALOADER_DATABRICKS_NEW_CLUSTER=NEW_CLUSTER)
    assert deployment_problems(load_settings(good)) == []


def test_a_bad_spec_fails_the_row_before_anything_is_submitted(
    standin,  # noqa: F811
    control_db,
    source_db,
    source,
    lake_root,
    db,
    instance,
):
    add_control_row(db, source_db, "pg.orders", "orders")
    spec = json.dumps({"spark_version": "15.4.x-scala2.12", "node_type_id": "x", "num_worker": 1})
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(BACKENDS, "bad_cluster", {"new_cluster_json": spec})
        result, _ = claim_and_materialize(control_db, instance, "pg.orders", "bad_cluster")

    assert not result.success
    assert standin.runs == {}
    row = control_row(db, "pg.orders")
    assert row["last_status"] == "Failed"
    assert "unknown key(s) num_worker" in row["last_message"]
    assert history(db, "pg.orders")[-1]["message"] == row["last_message"]
