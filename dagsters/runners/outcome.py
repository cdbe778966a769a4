"""What one script execution produced, and how a failed script's own error text is found.

Shared by both runners. The error channel itself (the custom message key and the stderr prefix)
is the wire contract's (``databricks_scripts.contract``); this module only picks the best text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from databricks_scripts.contract import (
    code_from_message,
    code_from_stderr,
    error_from_message,
    error_from_stderr,
    kind_from_message,
    kind_from_stderr,
)


@dataclass
class ScriptOutcome:
    """What one script execution produced."""

    results: Sequence[Any] = ()
    custom_messages: Sequence[Any] = ()
    error: str | None = None  # the script's own error text when it failed, else None
    # The failure kind the script reported with its error (contract.FAILURE_KINDS); None for a
    # foreign error, or when the script said nothing.
    error_kind: str | None = None
    # A foreign error's code as the script read it from the driver (contract.known_code), or None.
    error_code: str | None = None
    external_run_url: str | None = None
    external_run_id: str | None = None
    extra_metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def succeeded(self) -> bool:
        return self.error is None


class ScriptInterrupted(dg.DagsterExecutionInterruptedError):
    """The Dagster run was terminated and the script stopped; ``said`` is what the script
    reported about its stop (what it committed, what it removed), when it said anything."""

    def __init__(self, said: str | None):
        super().__init__(said or "terminated")
        self.said = said


def error_from_custom_messages(messages: Sequence[Any]) -> str | None:
    """The last error message (``contract.error_message``) the script reported, if any."""
    for message in reversed(list(messages)):
        text = error_from_message(message)
        if text:
            return text
    return None


def error_kind_from(messages: Sequence[Any], stderr_tail: Sequence[str] = ()) -> str | None:
    """The kind of the script's error, from where its text is taken: the last error message if
    there is one, else the last ``STDERR_ERROR_PREFIX`` line; None when neither names a kind."""
    for message in reversed(list(messages)):
        if error_from_message(message):
            return kind_from_message(message)
    return kind_from_stderr(list(stderr_tail))


def error_code_from(messages: Sequence[Any], stderr_tail: Sequence[str] = ()) -> str | None:
    """The code of the script's error, from where its text is taken (as :func:`error_kind_from`)."""
    for message in reversed(list(messages)):
        if error_from_message(message):
            return code_from_message(message)
    return code_from_stderr(list(stderr_tail))


def error_from_stderr_tail(lines: Sequence[str]) -> str | None:
    """The script's ``STDERR_ERROR_PREFIX`` line; else the last non-empty stderr line."""
    text = error_from_stderr(list(lines))
    if text is not None:
        return text
    for line in reversed(lines):
        if line.strip():
            return line.strip()
    return None
