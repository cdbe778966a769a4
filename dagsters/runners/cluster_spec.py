"""``DATALOADER_DATABRICKS_NEW_CLUSTER``: the JSON ``new_cluster`` spec, checked before use.

databricks-sdk's ``ClusterSpec.from_dict`` drops keys it does not know without a word (a typo such
as ``"num_worker"`` would silently give a cluster the API refuses, or one that hangs), and the Jobs
API only answers after a run was submitted. So the spec is checked here, at code-location load
(``dagsters/deployment.py``) and again before each submit, and every problem is named at once:

- valid JSON, an object, only keys ``ClusterSpec`` knows;
- ``spark_version`` present and a supported runtime (15.4 LTS or later, as the scripts require);
- ``node_type_id`` or ``instance_pool_id``;
- ``num_workers`` or ``autoscale`` (``min_workers`` <= ``max_workers``); 0 workers only with a
  single-node profile (``is_single_node``, or ``spark.databricks.cluster.profile=singleNode``);
- ``data_security_mode`` one that can use Unity Catalog, since destinations are catalog.schema.table
  names (an API-created cluster without it has no Unity Catalog access);
- the SDK's ``kind`` rules (``compute.Kind`` / ``compute.DataSecurityMode`` docs): ``kind`` one
  the SDK knows (``from_dict`` drops an unknown one silently); ``is_single_node``,
  ``use_ml_runtime`` and the ``DATA_SECURITY_MODE_AUTO`` / ``_DEDICATED`` / ``_STANDARD`` modes
  only with ``"kind": "CLASSIC_PREVIEW"`` (the API refuses them otherwise; ``SINGLE_USER`` and
  ``USER_ISOLATION`` need no kind).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from databricks_scripts.script_env import runtime_problem

SETTING = "DATALOADER_DATABRICKS_NEW_CLUSTER"
# ClusterSpec fields whose SDK docs say "This field can only be used when `kind = CLASSIC_PREVIEW`"
# (tests/dagster/test_new_cluster_spec.py reads the SDK's docstrings to keep this list equal to them).
CLASSIC_PREVIEW_FIELDS = ("is_single_node", "use_ml_runtime")
CLASSIC_PREVIEW = "CLASSIC_PREVIEW"
UNITY_CATALOG_MODES = (
    "SINGLE_USER",
    "USER_ISOLATION",
    "DATA_SECURITY_MODE_AUTO",
    "DATA_SECURITY_MODE_DEDICATED",
    "DATA_SECURITY_MODE_STANDARD",
)


def _known_keys() -> set[str]:
    from databricks.sdk.service.compute import ClusterSpec

    return {f.name for f in dataclasses.fields(ClusterSpec)}


def classic_preview_modes() -> tuple[str, ...]:
    """The access modes the SDK allows only with ``kind = CLASSIC_PREVIEW`` (the
    ``DATA_SECURITY_MODE_*`` aliases of ``compute.DataSecurityMode``)."""
    from databricks.sdk.service.compute import DataSecurityMode

    return tuple(m.value for m in DataSecurityMode if m.value.startswith("DATA_SECURITY_MODE_"))


def _kind_problems(spec: dict[str, Any]) -> list[str]:
    from databricks.sdk.service.compute import Kind

    kind = spec.get("kind")
    kinds = sorted(k.value for k in Kind)
    if kind is not None and kind not in kinds:
        known = ", ".join(kinds)
        return [f"kind {kind!r} is not one databricks-sdk knows ({known}); it would be dropped"]
    if kind == CLASSIC_PREVIEW:
        return []
    needing = [name for name in CLASSIC_PREVIEW_FIELDS if spec.get(name) is not None]
    mode = spec.get("data_security_mode")
    if mode in classic_preview_modes():
        needing.append(f"data_security_mode {mode}")
    if not needing:
        return []
    problem = (
        f'{", ".join(needing)} can only be used with "kind": "{CLASSIC_PREVIEW}" (the '
        "Clusters API refuses them otherwise): add the kind, or use SINGLE_USER / "
        "USER_ISOLATION and the singleNode profile, which need none"
    )
    return [problem]


def _single_node(spec: dict[str, Any]) -> bool:
    conf = spec.get("spark_conf") or {}
    return spec.get("is_single_node") is True or (
        isinstance(conf, dict) and conf.get("spark.databricks.cluster.profile") == "singleNode"
    )


def _workers_problems(spec: dict[str, Any]) -> list[str]:
    autoscale, workers = spec.get("autoscale"), spec.get("num_workers")
    if autoscale is not None:
        if not isinstance(autoscale, dict) or not all(
            isinstance(autoscale.get(k), int) for k in ("min_workers", "max_workers")
        ):
            return ["autoscale needs integer min_workers and max_workers"]
        if autoscale["min_workers"] > autoscale["max_workers"]:
            return ["autoscale.min_workers is greater than autoscale.max_workers"]
        return []
    if workers is None:
        if _single_node(spec):
            return []
        return ["set num_workers or autoscale (or a single-node profile)"]
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 0:
        return [f"num_workers must be a whole number >= 0, got {workers!r}"]
    if workers == 0 and not _single_node(spec):
        return [
            (
                "num_workers 0 needs a single-node profile (is_single_node: true, or spark_conf "
                '"spark.databricks.cluster.profile": "singleNode" with custom_tags '
                '"ResourceClass": "SingleNode"): without one Spark jobs never get executors'
            )
        ]
    return []


def new_cluster_problems(text: str) -> list[str]:
    """Every problem of the JSON spec ``text``; empty when it can be submitted."""
    try:
        spec = json.loads(text)
    except ValueError as exc:
        return [f"{SETTING} is not valid JSON: {exc}"]
    if not isinstance(spec, dict):
        return [f"{SETTING} must be a JSON object (a new_cluster spec), got {type(spec).__name__}"]
    problems: list[str] = []
    unknown = sorted(set(spec) - _known_keys())
    if unknown:
        problems.append(
            f"unknown key(s) {', '.join(unknown)}: databricks-sdk's ClusterSpec does not know "
            "them and would drop them silently"
        )
    version = spec.get("spark_version")
    if not version:
        problems.append('spark_version is required (e.g. "15.4.x-scala2.12")')
    elif problem := runtime_problem(str(version), (3, 11)):
        problems.append(problem)
    if not (spec.get("node_type_id") or spec.get("instance_pool_id")):
        problems.append("node_type_id or instance_pool_id is required")
    problems += _workers_problems(spec)
    problems += _kind_problems(spec)
    mode = spec.get("data_security_mode")
    if mode not in UNITY_CATALOG_MODES:
        problems.append(
            f"data_security_mode {mode!r} cannot write Unity Catalog tables: use one of "
            f"{', '.join(UNITY_CATALOG_MODES)}"
        )
    return [p if p.startswith(SETTING) else f"{SETTING}: {p}" for p in problems]


def parse_new_cluster(text: str) -> dict[str, Any]:
    """The spec as a dict; ValueError naming every problem when it cannot be used."""
    problems = new_cluster_problems(text)
    if problems:
        raise ValueError("; ".join(problems))
    return json.loads(text)
