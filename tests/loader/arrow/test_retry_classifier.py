"""The rules alone (retry.classifier.classify_error, no model, no database): every labelled transient
error goes to retry and every permanent one to review, held-out messages stay above their floors,
and the reason names the cause in one sentence.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from databricks_scripts.retry.classifier import (
    PERMANENT,
    REQUIRES_REVIEW,
    RETRY_RECOMMENDED,
    TRANSIENT,
    UNKNOWN,
    classify_error,
)

LABELLED = json.loads((Path(__file__).parents[2] / "data" / "error_messages.json").read_text())
SOURCES = ("postgresql", "mysql", "sqlserver", "oracle", "spark", "databricks")
# Stated thresholds: every labelled message must be decided right. Lower them only with a reason;
# a wrongly retried permanent error costs three wasted loads, a wrongly reviewed transient one
# costs a person's time.
REQUIRED_ACCURACY = {TRANSIENT: 1.0, PERMANENT: 1.0}


def test_labelled_set_is_broad_enough() -> None:
    assert len(LABELLED) >= 40
    counts = Counter((m["source"], m["label"]) for m in LABELLED)
    for source in SOURCES:
        for label in (TRANSIENT, PERMANENT):
            assert counts[(source, label)] >= 3, f"too few {label} messages from {source}"


@pytest.mark.parametrize("label", [TRANSIENT, PERMANENT])
def test_accuracy_per_class(label: str) -> None:
    expected = RETRY_RECOMMENDED if label == TRANSIENT else REQUIRES_REVIEW
    messages = [m for m in LABELLED if m["label"] == label]
    wrong = [m for m in messages if classify_error(m["message"]).decision != expected]
    accuracy = 1 - len(wrong) / len(messages)
    assert accuracy >= REQUIRED_ACCURACY[label], "\n".join(
        f"{m['source']}: {m['message'][:120]!r}" for m in wrong
    )


def test_permanent_errors_are_recognised_not_just_unknown() -> None:
    # Unknown also means review, so recognising the cause is checked separately: the reason a
    # person reads should name it.
    unrecognised = [
        m["message"][:120]
        for m in LABELLED
        if m["label"] == PERMANENT and classify_error(m["message"]).category != PERMANENT
    ]
    assert unrecognised == []


@pytest.mark.parametrize(
    "message",
    [
        "java.lang.OutOfMemoryError: Java heap space",
        "KeyError: 'amount'",
        "something odd happened",
        "",
        None,
    ],
)
def test_unknown_errors_go_to_review(message: str | None) -> None:
    result = classify_error(message)
    assert (result.category, result.decision, result.rule) == (UNKNOWN, REQUIRES_REVIEW, None)
    assert result.reason.endswith(".")


def test_credentials_win_over_the_connection_failure_that_wraps_them() -> None:
    # pymssql reports a refused login as a failed connection; retrying would only lock the account.
    message = next(m["message"] for m in LABELLED if "Login failed for user" in m["message"])
    result = classify_error(message)
    assert (result.rule, result.decision) == ("authentication", REQUIRES_REVIEW)


def test_reason_is_one_readable_sentence() -> None:
    result = classify_error("ERROR:  deadlock detected")
    # PostgreSQL's own words name their SQLSTATE (40P01), which decides and is named.
    assert result.reason == (
        "Transient lock conflict fault (SQLSTATE 40P01): the source was busy with a conflicting "
        "lock or transaction, which clears by itself."
    )
    result = classify_error("Lock wait timeout exceeded on the source")  # no code: the words
    assert result.reason == (
        "Transient lock conflict fault: the source was busy with a conflicting lock or "
        "transaction, which clears by itself."
    )


# A held-out set: real-world messages written after the rules, never used to tune them (keep it
# that way: a message moved into the rules' reach here no longer measures anything; add it to
# error_messages.json instead and write a new held-out message). Measured when it was written:
# 42/49 decisions right (85.7%); permanent 26/26 (100%, 12 of them recognised, 14 reviewed as
# unknown); transient 16/23 (69.6%, the misses were unknown and went to review, the safe side).
# After the drivers' codes decide first (issue 24, docs/retry-analysis.md): 48/49; permanent 26/26,
# transient 22/23; the floors were raised to keep most of that.
HELD_OUT = json.loads(
    (Path(__file__).parents[2] / "data" / "error_messages_heldout.json").read_text()
)
HELD_OUT_FLOOR = {"overall": 0.90, PERMANENT: 0.95, TRANSIENT: 0.85}


def _held_out_accuracy(messages: list[dict]) -> float:
    right = sum(
        classify_error(m["message"]).decision
        == (RETRY_RECOMMENDED if m["label"] == TRANSIENT else REQUIRES_REVIEW)
        for m in messages
    )
    return right / len(messages)


def test_held_out_set_is_separate_and_broad() -> None:
    assert len(HELD_OUT) >= 20
    assert not {m["message"] for m in HELD_OUT} & {m["message"] for m in LABELLED}
    counts = Counter((m["source"], m["label"]) for m in HELD_OUT)
    for source in SOURCES:
        for label in (TRANSIENT, PERMANENT):
            assert counts[(source, label)] >= 2, f"too few held-out {label} from {source}"


@pytest.mark.parametrize("part", ["overall", TRANSIENT, PERMANENT])
def test_held_out_accuracy_floor(part: str) -> None:
    messages = HELD_OUT if part == "overall" else [m for m in HELD_OUT if m["label"] == part]
    assert _held_out_accuracy(messages) >= HELD_OUT_FLOOR[part]
