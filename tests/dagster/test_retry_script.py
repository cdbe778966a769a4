"""The retry script as a Dagster Pipes process: given an analysis request, dataloader_retry_pipe.py
reports one decision (the model's or the rules'), takes its model settings from its environment or
the request, fails loudly on a bad start, and runs unchanged on a Databricks cluster.

No control database here: what a decision does to the row is test_retry_decisions.py and
test_retry_end_to_end.py.
"""

import subprocess
import sys
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from dagster._core.errors import DagsterPipesExecutionError
from dagster_databricks import PipesDatabricksClient
from dagster_databricks.pipes import PipesDbfsMessageReader
from databricks.sdk.service import compute, jobs
from databricks_standin import DatabricksStandin, databricks_standin
from helpers import read_failed_row
from openai_standin import OpenAIStandIn, Reply, good_answer, openai_standin

from dagsters.policy.retry_analysis import build_analysis_request

__all__ = ["databricks_standin", "openai_standin"]  # fixtures, imported so pytest finds them here

SCRIPT = Path(__file__).resolve().parents[2] / "databricks_scripts" / "dataloader_retry_pipe.py"
SCOPE_SECRET = "Scope-Secret-Value-77"


pytestmark = pytest.mark.usefixtures("no_ai_model")  # the script inherits the environment


def _run_script(request: dict, env: dict[str, str] | None = None) -> tuple[dict, list[Any]]:
    """Materialize a throwaway asset that runs the script; (reported metadata, custom messages)."""
    captured: list[Any] = []

    @dg.asset(name="retry_probe")
    def retry_probe(
        context: dg.AssetExecutionContext, pipes_subprocess_client: dg.PipesSubprocessClient
    ):
        invocation = pipes_subprocess_client.run(
            command=[sys.executable, str(SCRIPT)],
            context=context,
            extras={"params": request},
            env=env or {},
        )
        captured.extend(invocation.get_custom_messages())
        return invocation.get_materialize_result()

    result = dg.materialize(
        [retry_probe], resources={"pipes_subprocess_client": dg.PipesSubprocessClient()}
    )
    [materialization] = result.asset_materializations_for_node("retry_probe")
    metadata = {key: value.value for key, value in materialization.metadata.items()}
    return metadata, captured


def test_rules_decide_when_no_model_is_configured() -> None:
    request = build_analysis_request(read_failed_row("ORA-00942: table or view does not exist"), [])

    metadata, messages = _run_script(request)

    assert metadata["decision"] == "Requires Review"
    assert metadata["decider"] == "rules"
    assert metadata["retry_count"] == 1
    assert "does not exist" in metadata["reason"]
    [message] = messages
    assert message["retry_decision"]["rule_category"] == "permanent"
    assert message["retry_decision"]["decision"] == metadata["decision"]


def test_model_answer_is_reported_and_secrets_stay_home(
    openai_standin: OpenAIStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATALOADER_SECRET__JDBC__PG_PW", SCOPE_SECRET)
    openai_standin.queue(good_answer("Retry Recommended", 0.88, "The connection was refused once."))
    row = read_failed_row(
        "connection to server at pg-prod failed: Connection refused "
        f"(dsn postgresql://loader:{SCOPE_SECRET}@pg-prod/sales password={SCOPE_SECRET})"
    )
    request = build_analysis_request(row, [])

    metadata, messages = _run_script(
        request,
        env={
            "DATALOADER_AI_MODEL": "gpt-standin",
            "DATALOADER_AI_BASE_URL": openai_standin.base_url,
            "DATALOADER_AI_API_KEY": "sk-script-test-key-000000000000",
        },
    )

    assert (metadata["decision"], metadata["decider"]) == ("Retry Recommended", "gpt-standin")
    assert metadata["confidence"] == pytest.approx(0.88)
    assert messages[0]["retry_decision"]["rule_decision"] == "Retry Recommended"
    [sent] = openai_standin.requests
    assert "Connection refused" in sent.raw
    assert SCOPE_SECRET not in sent.raw
    assert "pg_pw" not in sent.raw and "password_secret" not in sent.raw  # no db_config_value


def test_advisor_settings_can_come_with_the_request(openai_standin: OpenAIStandIn) -> None:
    # An existing Databricks cluster does not see the code location's environment.
    openai_standin.queue(good_answer("Requires Review", 0.95, "Same error three times."))
    request = build_analysis_request(read_failed_row("ERROR:  deadlock detected"), [])
    request["advisor"] = {"model": "served-model", "base_url": openai_standin.base_url}

    metadata, _ = _run_script(request)

    assert (metadata["decision"], metadata["decider"]) == ("Requires Review", "served-model")
    assert len(openai_standin.requests) == 1


def test_model_timeout_falls_back_to_rules(openai_standin: OpenAIStandIn) -> None:
    openai_standin.default = Reply(content="{}", delay_seconds=30)
    request = build_analysis_request(read_failed_row("(1205, 'Lock wait timeout exceeded')"), [])

    metadata, messages = _run_script(
        request,
        env={
            "DATALOADER_AI_MODEL": "gpt-standin",
            "DATALOADER_AI_BASE_URL": openai_standin.base_url,
            "DATALOADER_AI_TIMEOUT_SECONDS": "0.3",
            "DATALOADER_AI_MAX_RETRIES": "0",
        },
    )

    assert (metadata["decision"], metadata["decider"]) == ("Retry Recommended", "rules")
    assert "timed out" in messages[0]["retry_decision"]["model_error"]


def test_request_without_error_message_fails_the_run() -> None:
    with pytest.raises(DagsterPipesExecutionError, match="failed"):
        _run_script({"control_key": "sales.orders"})


def test_started_outside_dagster_says_so() -> None:
    process = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120, check=False
    )
    assert process.returncode == 2
    assert "started by Dagster Pipes" in process.stderr


def test_runs_unchanged_on_a_databricks_cluster(
    databricks_standin: DatabricksStandin, openai_standin: OpenAIStandIn
) -> None:
    # Existing cluster: bootstrap as CLI parameters, context and messages on DBFS, the scripts
    # directory deployed as a bundle would; the model settings travel in the request.
    scripts = databricks_standin.deploy(SCRIPT.parent, "/Workspace/Shared/dataloader/scripts")
    openai_standin.queue(good_answer("Retry Recommended", 0.9, "Spot loss is temporary."))
    request = build_analysis_request(
        read_failed_row("Cluster 0101-x was terminated. Reason: SPOT_INSTANCE_TERMINATION"), []
    )
    request["advisor"] = {"model": "served-model", "base_url": openai_standin.base_url}
    workspace = databricks_standin.workspace_client()
    pipes_client = PipesDatabricksClient(
        workspace,
        poll_interval_seconds=0.2,
        message_reader=PipesDbfsMessageReader(client=workspace, interval=0.2),
    )
    task = jobs.SubmitTask(
        task_key="retry_analysis",
        spark_python_task=jobs.SparkPythonTask(python_file=f"{scripts}/{SCRIPT.name}"),
        existing_cluster_id="0101-000000-standin",
        libraries=[compute.Library(pypi=compute.PythonPyPiLibrary(package="openai"))],
    )

    @dg.asset(name="retry_on_databricks")
    def retry_on_databricks(context: dg.AssetExecutionContext):
        invocation = pipes_client.run(context=context, task=task, extras={"params": request})
        return invocation.get_materialize_result()

    result = dg.materialize([retry_on_databricks])

    [materialization] = result.asset_materializations_for_node("retry_on_databricks")
    metadata = {key: value.value for key, value in materialization.metadata.items()}
    assert (metadata["decision"], metadata["decider"]) == ("Retry Recommended", "served-model")
    assert databricks_standin.only_run().result_state == "SUCCESS"
