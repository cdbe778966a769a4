"""The Dagster+ alert policy file: read and sent by the real dagster-cloud CLI, shaped as documented.

dagster-cloud (1.13) ships no local schema for alert policies: ``alert-policies sync`` parses the
YAML and sends it as the ``reconcileAlertPoliciesFromDocument`` document, and Dagster+ validates it
server-side. So this test runs the real CLI against a local GraphQL stand-in (what it sends is what
Dagster+ would receive) and checks the document against the rules of the documented YAML
reference. Dagster+'s own server-side validation has not run on it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from dagsters.alerts import ALERT_ON_FAILURE_TAGS
from dagsters.definitions import build_definitions
from dagsters.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
POLICIES = ROOT / "dagster_plus" / "alert_policies.yaml"
RUN_EVENTS = {"JOB_FAILURE", "JOB_SUCCESS", "JOB_LONG_RUNNING"}
ALONE_EVENTS = {"TICK_FAILURE", "CODE_LOCATION_ERROR", "AGENT_UNAVAILABLE"}
SERVICES = {"email", "slack", "microsoft_teams", "pagerduty", "email_owners"}
CLI = Path(sys.executable).with_name("dagster-cloud")


class GraphqlStandin:
    """Plays Dagster+'s GraphQL endpoint for the reconcile mutation; records the documents."""

    def __init__(self):
        self.documents: list[dict] = []
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                document = body["variables"]["document"]
                standin.documents.append(document)
                names = [{"name": p["name"]} for p in document["alert_policies"]]
                out = {
                    "data": {
                        "reconcileAlertPoliciesFromDocument": {
                            "__typename": "ReconcileAlertPoliciesSuccess",
                            "alertPolicies": names,
                        }
                    }
                }
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(json.dumps(out).encode())

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.mark.skipif(
    not CLI.exists() and shutil.which("dagster-cloud") is None,
    reason="dagster-cloud is not installed (pip install -e '.[test]')",
)
def test_the_dagster_cloud_cli_syncs_the_policy_file():
    standin = GraphqlStandin()
    try:
        completed = subprocess.run(
            [
                str(CLI),
                "deployment",
                "alert-policies",
                "sync",
                "--url",
                standin.url,
                "--api-token",
                "test-token",
                "--deployment",
                "prod",
                "-a",
                str(POLICIES),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        standin.server.shutdown()
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "Synced alert policies: dataloader-" in completed.stdout
    [document] = standin.documents
    assert document == yaml.safe_load(POLICIES.read_text())


def test_the_policies_follow_the_documented_shape():
    policies = yaml.safe_load(POLICIES.read_text())["alert_policies"]
    names = [p["name"] for p in policies]
    assert len(names) == len(set(names))
    for policy in policies:
        events = set(policy["event_types"])
        assert events, policy["name"]
        if events & ALONE_EVENTS:  # tick / code-location / agent events: a policy of their own
            assert len(events) == 1 and "tags" not in policy, policy["name"]
        else:
            assert events <= RUN_EVENTS, policy["name"]
        [service] = policy["notification_service"]
        assert service in SERVICES
        if service == "slack":
            assert set(policy["notification_service"]["slack"]) == {
                "slack_workspace_name",
                "slack_channel_name",
            }
    assert {e for p in policies for e in p["event_types"]} >= {"TICK_FAILURE", "JOB_FAILURE"}


def test_the_job_failure_policy_matches_the_jobs_around_the_loads():
    [policy] = [
        p
        for p in yaml.safe_load(POLICIES.read_text())["alert_policies"]
        if "JOB_FAILURE" in p["event_types"]
    ]
    assert {t["key"]: t["value"] for t in policy["tags"]} == ALERT_ON_FAILURE_TAGS
    repo = build_definitions(Settings()).get_repository_def()
    for job in (
        "dataloader__retry_analysis_job",
        "landing_table_git_job",
        "dataloader__history_retention_job",
        "dataloader__release_review_job",
    ):
        tags = repo.get_job(job).tags
        assert all(tags.get(k) == v for k, v in ALERT_ON_FAILURE_TAGS.items()), job
    # Load runs do not carry it: their failures are retried or reviewed per table.
    load_tags = repo.get_job("dataloader__table_load_job").tags
    assert "dataloader/alert_on_failure" not in load_tags
