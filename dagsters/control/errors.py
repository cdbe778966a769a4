"""Errors the control-database client raises (messages already redacted)."""

from __future__ import annotations


class LakebaseError(RuntimeError):
    """The control database refused or failed an operation (message already redacted)."""

    def __init__(self, message: str, *, sqlstate: str | None = None):
        super().__init__(message)
        self.sqlstate = sqlstate


class UnknownControlKey(LakebaseError):
    """No table_control row has this control_key."""


class LoadAlreadyActive(LakebaseError):
    """The row is already Queued or In Progress, so another load cannot be queued."""
