"""databricks.yml syncs databricks_scripts/ to where the code location runs them, dev paused; it
is valid against the Databricks CLI's published JSON schema for bundles, and every variable resolves
in every target by the CLI's own rule."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from jsonschema import validators

from dagsters.resources.pipes_databricks import PipesDatabricksResource

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "databricks.yml"
# The CLI's bundle/schema/jsonschema.json, v1.13.0 (tests/data/databricks_cli/README.md).
CLI_SCHEMA = ROOT / "tests" / "data" / "databricks_cli" / "bundle_jsonschema.json"


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
    assert prod["run_as"]["service_principal_name"] == "${var.service_principal}"
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


def test_the_pipes_volume_sits_in_a_schema_the_bundle_declares(bundle):
    """The bundle creates the volume's schema (a deploy into a catalog without it would fail), and
    the volume names the schema resource so the deploy creates the schema first."""
    schema = bundle["resources"]["schemas"]["dataloader"]
    assert (schema["catalog_name"], schema["name"]) == ("${var.catalog}", "${var.schema}")
    volume = bundle["resources"]["volumes"]["pipes"]
    assert volume["volume_type"] == "MANAGED"
    assert (volume["catalog_name"], volume["schema_name"], volume["name"]) == (
        "${var.catalog}",
        "${resources.schemas.dataloader.name}",
        "pipes",
    )


def test_the_catalog_is_set_per_target_and_one_service_principal_variable_serves_them(bundle):
    assert "default" not in bundle["variables"]["catalog"]  # no assumed `main` catalog
    for name, target in bundle["targets"].items():
        assert target["variables"]["catalog"], name
    assert set(bundle["variables"]) == {"catalog", "schema", "service_principal"}
    for name in ("npd", "prod"):
        target = bundle["targets"][name]
        assert target["run_as"] == {"service_principal_name": "${var.service_principal}"}
        assert target["variables"]["service_principal"] == {
            "lookup": {"service_principal": f"dataloader-{name}"}
        }


# -- the Databricks CLI's rules, without the CLI -------------------------------------------------


def _ecma_pattern(pattern: str) -> str:
    """The schema's ECMA-262 ``pattern`` as a Python regex: only ``\\p{L}`` (letters) and
    ``[\\p{L}\\p{N}]`` (letters and digits) occur, and are translated exactly."""
    translated = pattern.replace(r"[\p{L}\p{N}]", r"[^\W_]").replace(r"\p{L}", r"[^\W\d_]")
    assert r"\p" not in translated, f"untranslated Unicode class in {pattern!r}"
    return translated


def _pattern(validator, pattern, instance, schema):
    if validator.is_type(instance, "string") and not re.search(_ecma_pattern(pattern), instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


CliSchemaValidator = validators.extend(jsonschema.Draft202012Validator, {"pattern": _pattern})


def schema_errors(document: Any) -> list[str]:
    """Where ``document`` breaks the CLI's JSON schema for bundles (empty: valid)."""
    schema = json.loads(CLI_SCHEMA.read_text())
    errors = CliSchemaValidator(schema).iter_errors(document)
    return [
        f"{'.'.join(map(str, e.absolute_path))}: {jsonschema.exceptions.best_match([e]).message}"
        for e in errors
    ]


def _strings(node: Any):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def variable_problems(document: dict) -> list[str]:
    """The CLI's variable rules (bundle/config/root.go MergeTargetOverrides and
    validateVariableOverrides, mutator/set_variables.go), with no --var, BUNDLE_VAR_* or
    variable-overrides.json: a target assigns only declared variables; a target's value replaces
    the declared default or lookup (a plain value is a default); after that every declared
    variable needs a default or a lookup in every target, used there or not; every ${var.x} is
    declared and every ${resources.<kind>.<key>...} names a declared resource."""
    declared = document.get("variables") or {}
    problems = []
    for text in _strings(document):
        for name in re.findall(r"\$\{var\.([A-Za-z0-9_-]+)", text):
            if name not in declared:
                problems.append(f"${{var.{name}}} is used but not declared")
        for kind, key in re.findall(r"\$\{resources\.([a-z_]+)\.([A-Za-z0-9_-]+)", text):
            if key not in ((document.get("resources") or {}).get(kind) or {}):
                problems.append(f"${{resources.{kind}.{key}}} names no declared resource")
    for target_name, target in (document.get("targets") or {}).items():
        overrides = (target or {}).get("variables") or {}
        for name in overrides:
            if name not in declared:
                problems.append(f"{target_name}: variable {name} is not defined but is assigned")
        for name, variable in declared.items():
            merged = dict(variable or {})
            if name in overrides:
                value = overrides[name]
                value = value if isinstance(value, dict) else {"default": value}
                if "default" in value:
                    merged.update(default=value["default"], lookup=None)
                if "lookup" in value:
                    merged.update(lookup=value["lookup"], default=None)
            if merged.get("default") is None and not merged.get("lookup"):
                problems.append(f"{target_name}: no value assigned to required variable {name}")
    return problems


def test_the_bundle_is_valid_against_the_cli_json_schema(bundle):
    assert schema_errors(bundle) == []


def test_the_schema_check_refuses_what_the_cli_refuses(bundle):
    """The schema bites: a misspelt key and a run_as of the wrong shape are refused."""
    bad = json.loads(json.dumps(bundle))
    bad["resources"]["volumes"]["pipes"]["volume_typ"] = "MANAGED"
    assert any(p.startswith("resources") for p in schema_errors(bad))
    bad = json.loads(json.dumps(bundle))
    bad["targets"]["npd"]["run_as"] = {"service_principal": "x"}
    assert any(p.startswith("targets") for p in schema_errors(bad))


def test_every_variable_resolves_in_every_target(bundle):
    assert variable_problems(bundle) == []


def test_the_variable_rule_names_what_the_cli_refuses():
    """The bundle as it was (two service principal variables without a value) fails for every
    target, as `databricks bundle validate` did."""
    before = {
        "variables": {
            "catalog": {"default": "main"},
            "npd_service_principal": {"description": "x"},
            "prod_service_principal": {"description": "x"},
        },
        "resources": {"volumes": {"pipes": {"catalog_name": "${var.catalog}"}}},
        "targets": {"dev": {}, "npd": {"run_as": {"x": "${var.npd_service_principal}"}}},
    }
    assert variable_problems(before) == [
        "dev: no value assigned to required variable npd_service_principal",
        "dev: no value assigned to required variable prod_service_principal",
        "npd: no value assigned to required variable npd_service_principal",
        "npd: no value assigned to required variable prod_service_principal",
    ]
    wrong = {
        "variables": {"a": {"default": "x", "lookup": None}},
        "resources": {"volumes": {"v": {"schema_name": "${resources.schemas.s.name}"}}},
        "targets": {"t": {"variables": {"b": "y", "a": {"lookup": {"warehouse": "w"}}}}},
        "x": "${var.c}",
    }
    assert variable_problems(wrong) == [
        "${resources.schemas.s} names no declared resource",
        "${var.c} is used but not declared",
        "t: variable b is not defined but is assigned",
    ]


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
