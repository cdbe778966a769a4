"""Somebody is told: Slack and Microsoft Teams notifications for the rows that need a person.

Sent when a row goes to review, when a table has failed ``DATALOADER_ALERT_AFTER_FAILURES`` times in
a row, and when a sensor tick fails. Each message says which table (control key), why (the
cause), where to look (the Dagster run and the Databricks run) and how to release the row (the job
to launch from the UI, or the one-line command).

Transport: ``slack_sdk``'s incoming-webhook client (installed with ``dagster-slack``) for
``DATALOADER_ALERT_SLACK_WEBHOOK_URL`` and ``dagster-msteams``' ``TeamsClient`` with an adaptive
card for ``DATALOADER_ALERT_TEAMS_WEBHOOK_URL``. Webhook URLs are secrets (they carry the channel's
key): they are masked like every other secret and never logged. A failed notification is logged
(redacted) and never fails the sensor or run that sent it. No URL configured: nothing is sent.

Plain module apart from the two clients; built from settings at the edge and passed down.
"""

from __future__ import annotations

import json
import logging
import re
import shlex
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from dagsters.control.rows import ControlRow
from databricks_scripts.redaction import redact

RELEASE_JOB = "dataloader__release_review_job"
# Jobs around the loads (retry analysis, landing, retention, release) carry this tag; the Dagster+
# alert policy dagster_plus/alert_policies.yaml announces their failed runs.
ALERT_ON_FAILURE_TAGS = {"dataloader/alert_on_failure": "true"}
_TIMEOUT_SECONDS = 15
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Alert:
    """One notification about one table (or one sensor)."""

    title: str
    cause: str
    control_key: str | None = None
    dagster_run: str | None = None
    databricks_run: str | None = None

    @classmethod
    def for_row(cls, title: str, row: ControlRow, cause: str | None = None) -> Alert:
        return cls(
            title=title,
            cause=str(cause or row.last_message or "no message"),
            control_key=row.control_key,
            dagster_run=row.last_dagster_run,
            databricks_run=row.last_databricks_run,
        )

    def lines(self, escape: Callable[[str], str] = lambda text: text) -> list[str]:
        """The message, one line each; ``escape`` is applied to every value that comes from data
        (key, cause, run links: a control row and a source's error text are written by others).
        The release command is shell-quoted, so pasting it runs ``dataloader release`` and only
        that, whatever the control key holds."""
        out = [self.title]
        if self.control_key:
            out.append(f"Table: {escape(self.control_key)}")
        out.append(f"Cause: {escape(self.cause)}")
        out.append(f"Dagster run: {escape(self.dagster_run or 'none')}")
        out.append(f"Databricks run: {escape(self.databricks_run or 'none')}")
        if self.control_key:
            # The UI action and the command, not raw SQL: a release is one guarded transition
            # (dagsters/control/review_release.py), never a hand-written status UPDATE.
            key = self.control_key
            yaml_key = key if re.fullmatch(r"[A-Za-z0-9_.-]+", key) else json.dumps(key)
            command = shlex.join(["dataloader", "release", key])
            out.append(
                f"Release it once fixed: launch {RELEASE_JOB} with config control_key: "
                f"{escape(yaml_key)}, or run: {escape(command)}"
            )
        return out


# Words that ping a whole channel when a chat client reads them as a mention.
_BROADCAST = re.compile(r"@(?=(channel|here|everyone|all)\b)", re.IGNORECASE)
_ZERO_WIDTH_SPACE = "\u200b"


def escape_slack(text: str) -> str:
    """``text`` shown as written in Slack mrkdwn: ``&``, ``<``, ``>`` as Slack's own escapes
    (no ``<!channel>``, ``<@U…>`` mention, no ``<url|label>`` disguised link), and ``@here``-style
    words broken so they cannot ping."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _BROADCAST.sub("@" + _ZERO_WIDTH_SPACE, text)


# Markdown that changes what Teams shows or links to: links ([t](u)), autolinks and <at>
# mentions (<...>), emphasis and code. Backslash escapes are CommonMark's, which Teams follows.
_TEAMS_SPECIAL = re.compile(r"([\\`*_\[\]()<>~])")


def escape_teams(text: str) -> str:
    """``text`` shown as written in a Teams card (CommonMark subset): markdown punctuation
    backslash-escaped, ``@here``-style words broken."""
    return _BROADCAST.sub("@" + _ZERO_WIDTH_SPACE, _TEAMS_SPECIAL.sub(r"\\\1", text))


@dataclass(frozen=True)
class Notifier:
    """Where alerts go; an empty notifier sends nothing."""

    slack_webhook_url: str | None = field(default=None, repr=False)
    teams_webhook_url: str | None = field(default=None, repr=False)
    environment: str | None = None
    secrets: tuple[str, ...] = field(default=(), repr=False)

    @property
    def enabled(self) -> bool:
        return bool(self.slack_webhook_url or self.teams_webhook_url)

    def send(self, alert: Alert) -> list[str]:
        """Post ``alert`` everywhere configured; returns one redacted error per failed channel."""
        errors = []
        for name, url, post, escape in (
            ("Slack", self.slack_webhook_url, _post_slack, escape_slack),
            ("Teams", self.teams_webhook_url, _post_teams, escape_teams),
        ):
            if not url:
                continue
            # Redacted before escaping, so a secret is masked in the form it was written.
            lines = alert.lines(lambda text, escape=escape: escape(redact(text, self._secrets())))
            lines = [redact(line, self._secrets()) for line in lines]
            if self.environment:
                lines[0] = f"[{self.environment}] {lines[0]}"
            try:
                post(url, lines)
            except Exception as exc:  # noqa: BLE001 - an alert must never break its sender
                message = redact(
                    f"{name} notification failed: {type(exc).__name__}: {exc}", self._secrets()
                )
                _log.warning(message)
                errors.append(message)
        return errors

    def send_all(self, alerts: Iterable[Alert]) -> list[str]:
        return [error for alert in alerts for error in self.send(alert)]

    def _secrets(self) -> list[str]:
        return [*self.secrets, *(u for u in (self.slack_webhook_url, self.teams_webhook_url) if u)]


def _post_slack(url: str, lines: list[str]) -> None:
    from slack_sdk.webhook import WebhookClient

    text = "\n".join(lines)
    blocks = [
        {"type": "header", "text": {"type": "plain_text", "text": lines[0][:150]}},
        {"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines[1:])[:3000]}},
    ]
    response = WebhookClient(url, timeout=_TIMEOUT_SECONDS).send(text=text, blocks=blocks)
    if response.status_code != 200:
        raise RuntimeError(f"HTTP {response.status_code}: {response.body}")


def _post_teams(url: str, lines: list[str]) -> None:
    from dagster_msteams.adaptive_card import AdaptiveCard
    from dagster_msteams.card import Card
    from dagster_msteams.client import TeamsClient

    client = TeamsClient(hook_url=url, timeout=_TIMEOUT_SECONDS)
    card = Card() if client.is_legacy_webhook() else AdaptiveCard()
    card.add_attachment(text_message="\n\n".join(lines))
    client.post_message(payload=card.payload)


def notifier_from_settings(settings: Any) -> Notifier:
    """The notifier the settings describe (``DATALOADER_ALERT_*``)."""
    return Notifier(
        slack_webhook_url=settings.alert_slack_webhook_url,
        teams_webhook_url=settings.alert_teams_webhook_url,
        environment=settings.environment,
        secrets=tuple(settings.secrets),
    )
