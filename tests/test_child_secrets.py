"""The local load subprocess inherits only its own source's secret (issue 17).

A real Dagster run drives the real local runner; the scripts directory holds stand-ins named like
the two Pipes scripts that write down which variables they were started with.
"""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest

from dagsters.resources.pipes_databricks import PipesDatabricksResource
from databricks_scripts.loader_params import secret_env_var

STANDIN = """
import json, os, sys
from dagster_pipes import open_dagster_pipes
with open_dagster_pipes() as context:
    out = context.get_extra("params")["out"]
    with open(out, "w") as f:
        json.dump(dict(os.environ), f)
    context.report_asset_materialization()
"""

OWN = secret_env_var("kv-prod", "erp-pg-pass")
OTHER = secret_env_var("kv-prod", "hr-pg-pass")
SECRETS = {
    "LAKEBASE_PASSWORD": "lakebase-pw-0123456789",
    OWN: "erp-pw-0123456789",
    OTHER: "hr-pw-0123456789",
    "DATABRICKS_TOKEN": "dapi0123456789abcdef0123456789",
    "DATALOADER_AI_API_KEY": "sk-test-0123456789abcdef",
    "PGPASSWORD": "pgpass-0123456789",
}


def run_standin(tmp_path: Path, script: str, params: dict) -> dict[str, str]:
    scripts = tmp_path / "scripts"
    scripts.mkdir(exist_ok=True)
    (scripts / script).write_text(STANDIN)
    out = tmp_path / f"{script}.env.json"

    @dg.asset
    def runs_the_script(context, pipes: PipesDatabricksResource):
        outcome = pipes.run_script(
            context, script=script, params={**params, "out": str(out)}, label="env"
        )
        assert outcome.error is None, outcome.error
        return dg.MaterializeResult()

    dg.materialize(
        [runs_the_script],
        resources={"pipes": PipesDatabricksResource(execution="local", scripts_path=str(scripts))},
    )
    return json.loads(out.read_text())


@pytest.fixture
def secrets_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DATALOADER_BATCH_ROWS", "1234")  # a setting, not a secret


def test_load_script_gets_its_own_sources_secret_and_no_other(tmp_path, secrets_in_env):
    env = run_standin(
        tmp_path,
        "dataloader_pipe.py",
        {"db_kv_scope": "kv-prod", "db_config_value": {"password_secret": "erp-pg-pass"}},
    )
    assert env[OWN] == SECRETS[OWN]
    assert not {n for n in SECRETS if n != OWN} & set(env)
    assert env["DATALOADER_BATCH_ROWS"] == "1234" and "PATH" in env  # the rest is inherited
    assert not any(v in env.values() for n, v in SECRETS.items() if n != OWN)


def test_load_without_a_secret_gets_none(tmp_path, secrets_in_env):
    env = run_standin(tmp_path, "dataloader_pipe.py", {"db_config_value": {"host": "/tmp"}})
    assert not set(SECRETS) & set(env)


def test_retry_script_gets_its_model_key_but_never_the_lakebase_password(tmp_path, secrets_in_env):
    env = run_standin(tmp_path, "dataloader_retry_pipe.py", {"control_key": "x"})
    assert env["DATALOADER_AI_API_KEY"] == SECRETS["DATALOADER_AI_API_KEY"]
    assert env["DATABRICKS_TOKEN"] == SECRETS["DATABRICKS_TOKEN"]
    assert "LAKEBASE_PASSWORD" not in env and "PGPASSWORD" not in env
