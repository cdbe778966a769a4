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
from databricks_scripts.load.params import secret_env_var

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


# Issue 22: an allow-list, read from the running child as another process on the host would.
# The stand-in writes its pid and waits for the test to say it has read /proc/<pid>/environ.
WAITING_STANDIN = """
import os, time
from pathlib import Path
from dagster_pipes import open_dagster_pipes
with open_dagster_pipes() as context:
    params = context.get_extra("params")
    Path(params["pid_file"]).write_text(str(os.getpid()))
    deadline = time.monotonic() + 120
    while not Path(params["go_file"]).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    context.report_asset_materialization()
"""

NOT_FOR_THE_LOADER = {
    "DATALOADER_ALERT_SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T000/B000/xyzsecret",
    "DATALOADER_ALERT_TEAMS_WEBHOOK_URL": "https://example.webhook.office.com/webhookb2/secret",
    "DATALOADER_MODELS_URL": "https://x-access-token:ghp_secret0123456789@github.com/o/models.git",
    "LAKEBASE_HOST": "lakebase.example.com",
    "LAKEBASE_USER": "dataloader-sp",
    "PGHOST": "elsewhere.example.com",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-0123456789",
    "SOME_UNRELATED_SETTING": "whatever",
}


def read_running_childs_environ(tmp_path: Path, script: str, params: dict) -> dict[str, str]:
    import threading
    import time

    scripts = tmp_path / "scripts"
    scripts.mkdir(exist_ok=True)
    (scripts / script).write_text(WAITING_STANDIN)
    pid_file, go_file = tmp_path / "child.pid", tmp_path / "go"
    errors: list[BaseException] = []

    @dg.asset
    def runs_the_script(context, pipes: PipesDatabricksResource):
        outcome = pipes.run_script(
            context,
            script=script,
            params={**params, "pid_file": str(pid_file), "go_file": str(go_file)},
            label="env",
        )
        assert outcome.error is None, outcome.error
        return dg.MaterializeResult()

    def materialize() -> None:
        try:
            dg.materialize(
                [runs_the_script],
                resources={
                    "pipes": PipesDatabricksResource(execution="local", scripts_path=str(scripts))
                },
            )
        except BaseException as exc:  # noqa: BLE001 - reported below, in the test's thread
            errors.append(exc)

    thread = threading.Thread(target=materialize)
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while not (pid_file.exists() and pid_file.read_text()) and thread.is_alive():
            assert time.monotonic() < deadline, "the child never started"
            time.sleep(0.05)
        raw = Path(f"/proc/{int(pid_file.read_text())}/environ").read_bytes()
    finally:
        go_file.write_text("go")
        thread.join(timeout=120)
    assert not errors, errors
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


def test_running_load_process_holds_only_allow_listed_variables(
    tmp_path, secrets_in_env, monkeypatch
):
    from databricks_scripts.script_env import is_script_base_env_var

    for name, value in NOT_FOR_THE_LOADER.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    monkeypatch.setenv("TZ", "UTC")
    env = read_running_childs_environ(
        tmp_path,
        "dataloader_pipe.py",
        {"db_kv_scope": "kv-prod", "db_config_value": {"password_secret": "erp-pg-pass"}},
    )
    assert not set(NOT_FOR_THE_LOADER) & set(env)
    assert not any(v in "\n".join(env.values()) for v in NOT_FOR_THE_LOADER.values())
    assert env[OWN] == SECRETS[OWN] and not {n for n in SECRETS if n != OWN} & set(env)
    assert env["DATALOADER_BATCH_ROWS"] == "1234"
    assert env["LC_ALL"] == "C.UTF-8" and env["TZ"] == "UTC" and "PATH" in env
    pipes_and_runner = {"PYTHONUNBUFFERED"} | {n for n in env if n.startswith("DAGSTER_PIPES_")}
    unexpected = {
        n for n in env if not is_script_base_env_var(n) and n != OWN and n not in pipes_and_runner
    }
    assert unexpected == set()


def test_running_retry_process_holds_no_webhook_models_url_or_lakebase_login(
    tmp_path, secrets_in_env, monkeypatch
):
    for name, value in NOT_FOR_THE_LOADER.items():
        monkeypatch.setenv(name, value)
    env = read_running_childs_environ(tmp_path, "dataloader_retry_pipe.py", {"control_key": "x"})
    assert not set(NOT_FOR_THE_LOADER) & set(env)
    assert env["DATALOADER_AI_API_KEY"] == SECRETS["DATALOADER_AI_API_KEY"]
