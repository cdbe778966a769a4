"""DataLoader's own failures: one root class carrying a kind, and what each kind decides.

Every exception the load scripts raise on purpose derives from :class:`DataLoaderFailure` and
names its ``kind`` (one of ``contract.FAILURE_KINDS``). The kind travels with the error text over
the wire (``contract.error_message`` / ``stderr_error_line``) to ``table_control.last_failure_kind``
and the attempt's ``historical_metadata.failure_kind``; the code location's monitors give their
own failures (stuck in queue, run timeout, orphaned run, a person's terminate) a kind the same way.

A failure with a kind is decided by :data:`KIND_RULES` alone: no chat model is asked and the
message text is not classified. Only a foreign error (no kind: a driver's, a cluster's, the
cloud's) goes to ``retry.classifier`` and the model.

Standard library only: shipped to Databricks with the scripts.
"""

from __future__ import annotations

from databricks_scripts.contract import (
    FAILURE_KINDS,
    KIND_BAD_CONFIG,
    KIND_CANCELLED,
    KIND_DATA_MISMATCH,
    KIND_INTERNAL,
    KIND_ORPHANED,
    KIND_RUN_TIMEOUT,
    KIND_SCHEMA_CONFLICT,
    KIND_SOURCE_AUTH,
    KIND_STALE_ATTEMPT,
    KIND_STUCK_QUEUED,
    REQUIRES_REVIEW,
    RETRY_RECOMMENDED,
    Decision,
    FailureKind,
    known_kind,
)

KIND_DECIDER = "rules"


class DataLoaderFailure(Exception):
    """The root of DataLoader's own errors. ``kind`` is one of ``contract.FAILURE_KINDS``, or None
    for a wrapper whose cause is foreign (``LoadStepError`` around a driver error): then the
    cause's own kind, if it has one, is the failure's (:func:`failure_kind`)."""

    kind: FailureKind | None = KIND_INTERNAL

    def __init__(self, *args: object, kind: FailureKind | None = None) -> None:
        super().__init__(*args)
        if kind is not None:
            known = known_kind(kind)
            if known is None:
                raise ValueError(f"unknown failure kind {kind!r}; one of {FAILURE_KINDS}")
            self.kind = known


class BadConfig(DataLoaderFailure, ValueError):
    """The row's or the deployment's settings cannot work (a person changes them)."""

    kind = KIND_BAD_CONFIG


class SchemaConflict(DataLoaderFailure, ValueError):
    """The source's columns do not fit the destination's (a person decides)."""

    kind = KIND_SCHEMA_CONFLICT


class DataMismatch(DataLoaderFailure, ValueError):
    """The source's rows break a rule the load keeps (NULL or duplicate keys, the delete floor)."""

    kind = KIND_DATA_MISMATCH


def failure_kind(exc: BaseException | None) -> FailureKind | None:
    """The kind of ``exc``: its own, else that of the first cause in its chain that has one
    (``raise LoadStepError(...) from exc`` keeps the cause); None when all are foreign."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        kind = (
            known_kind(getattr(exc, "kind", None)) if isinstance(exc, DataLoaderFailure) else None
        )
        if kind is not None:
            return kind
        exc = exc.__cause__
    return None


# What each kind decides. Retry only where nothing was read or a new attempt plainly gets past it.
KIND_RULES: dict[FailureKind, tuple[str, str]] = {
    KIND_BAD_CONFIG: (
        REQUIRES_REVIEW,
        "DataLoader refused the row's configuration, which a retry does not change",
    ),
    KIND_SOURCE_AUTH: (
        REQUIRES_REVIEW,
        "the source's secret is missing or unusable, which needs a person to set it",
    ),
    KIND_SCHEMA_CONFLICT: (
        REQUIRES_REVIEW,
        "the source's columns no longer fit the destination, which a person decides",
    ),
    KIND_DATA_MISMATCH: (
        REQUIRES_REVIEW,
        "the source's rows break a rule the load keeps, which a retry would break again",
    ),
    KIND_STALE_ATTEMPT: (
        REQUIRES_REVIEW,
        "another attempt of the row took over while this one loaded; this one committed nothing",
    ),
    KIND_CANCELLED: (
        REQUIRES_REVIEW,
        (
            "a person terminated the run, so it is not retried; it loads again when someone reruns "
            "it or clears the row"
        ),
    ),
    KIND_STUCK_QUEUED: (
        RETRY_RECOMMENDED,
        (
            "the run waited in the queue past the long-queued threshold and never started, so "
            "nothing was read and a later attempt usually gets a slot"
        ),
    ),
    KIND_RUN_TIMEOUT: (
        REQUIRES_REVIEW,
        (
            "the load ran past the long-running threshold and was cancelled; it will most likely "
            "run as long again, so a person decides (more compute, a higher threshold, an "
            "incremental strategy)"
        ),
    ),
    KIND_ORPHANED: (
        RETRY_RECOMMENDED,
        (
            "the attempt's run ended before the load started, so nothing was read and a new run "
            "usually starts"
        ),
    ),
    KIND_INTERNAL: (
        REQUIRES_REVIEW,
        "DataLoader broke one of its own rules, which a person should look at",
    ),
}


def decision_for_kind(kind: str | None) -> Decision | None:
    """The rule's decision for one of our own kinds (confidence 1.0); None for a foreign error."""
    known = known_kind(kind)
    if known is None:
        return None
    rule = KIND_RULES[known]
    decision, why = rule
    word = "Transient" if decision == RETRY_RECOMMENDED else "Known"
    return Decision(decision, 1.0, f"{word} {kind} failure: {why}.", KIND_DECIDER)
