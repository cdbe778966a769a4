"""Failure kinds on the wire (issue 24, item 3): our own failures name their kind, the kind reaches
the control row and the attempt's history row, and retry rules decide it by kind.

- every exception class of databricks_scripts/ derives from ``DataLoaderFailure`` with a kind in
  ``contract.FAILURE_KINDS``; a wrapper (``LoadStepError``) takes its cause's;
- the kind travels in the error custom message and on the last stderr line, and only known kinds;
- the real load script's failures (a bad configuration, a missing secret, a schema conflict, keys
  that break the merge) carry their kind, and through the load asset it lands on
  ``table_control.last_failure_kind`` and ``historical_metadata.failure_kind``; a foreign error
  (a missing source table) lands as NULL; a later success clears it;
- each monitor (long-queued, long-running, orphaned claim, uncomputable row) writes its kind
  through the guarded transition, which refuses a running row's failure without one.
The retry side (decisions by kind, no classifier and no model asked) is test_failure_kind_rules.py.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import dagster as dg
import psycopg
import pytest
import test_loader_pipe as pipe
from dagster._core.test_utils import create_run_for_test
from helpers import add_control_row, add_history, add_row, claim_due, control_row, history, tick
from psycopg import sql
from test_load_asset import claim_and_materialize

import databricks_scripts
from dagsters.control.rows import FAILED, IN_PROGRESS, QUEUED
from dagsters.control.transitions import guarded_transition
from dagsters.policy.run_requests import TAG_METADATA_ID
from dagsters.runners.outcome import error_kind_from
from dagsters.sensors.dataloader_longqueued_monitor import build_longqueued_monitor
from dagsters.sensors.dataloader_longrunning_monitor import build_longrunning_monitor
from dagsters.sensors.dataloader_master_sensor import LOAD_JOB, build_master_sensor
from dagsters.settings import Settings
from dagsters.utils.lakebase_client import LakebaseClient
from databricks_scripts.contract import (
    ERROR_KIND_KEY,
    FAILURE_KINDS,
    STDERR_ERROR_PREFIX,
    error_from_stderr,
    error_message,
    kind_from_message,
    kind_from_stderr,
    stderr_error_line,
)
from databricks_scripts.failures import KIND_RULES, DataLoaderFailure, failure_kind
from databricks_scripts.load.plan import LoadStepError
from databricks_scripts.load.types import IncompatibleSchemaError

REPO = Path(__file__).resolve().parents[3]


# -- the classes and the wire -------------------------------------------------------------------


def _script_exception_classes() -> list[type[BaseException]]:
    import importlib

    found = []
    for path in sorted((REPO / "databricks_scripts").rglob("*.py")):
        text = path.read_text()
        names = re.findall(
            r"^class (\w+)\((?:[\w.]+, )*[\w.]*(?:Error|Exception)\b", text, re.MULTILINE
        )
        names += re.findall(
            r"^class (\w+)\((?:BadConfig|SchemaConflict|DataMismatch)\)", text, re.MULTILINE
        )
        if names and path.stem not in ("dataloader_pipe", "dataloader_retry_pipe"):
            dotted = ".".join(path.relative_to(REPO).with_suffix("").parts)
            module = importlib.import_module(dotted)
            found += [getattr(module, n) for n in names]
    return found


def test_every_exception_class_of_the_scripts_is_a_dataloader_failure_with_a_kind():
    classes = _script_exception_classes()
    assert len(classes) >= 11, classes  # the loader's own, as counted when this was written
    wrappers = {"LoadStepError"}  # its kind is its cause's
    for cls in classes:
        assert issubclass(cls, DataLoaderFailure), cls
        if cls.__name__ in wrappers:
            assert cls.kind is None
        else:
            assert cls.kind in FAILURE_KINDS, cls
    assert inspect.getmodule(DataLoaderFailure).__name__ == "databricks_scripts.failures"
    assert databricks_scripts  # the package the classes were found in


def test_a_wrapper_takes_its_causes_kind_and_a_foreign_cause_has_none():
    def wrapped(cause: BaseException) -> LoadStepError:
        try:
            raise cause
        except (IncompatibleSchemaError, OSError) as exc:
            try:
                raise LoadStepError("reconcile schema", f"{type(exc).__name__}: {exc}") from exc
            except LoadStepError as step:
                return step

    assert failure_kind(wrapped(IncompatibleSchemaError("price: text"))) == "schema_conflict"
    assert failure_kind(wrapped(OSError("connection reset by peer"))) is None
    assert failure_kind(ValueError("anything")) is None
    with pytest.raises(ValueError, match="unknown failure kind"):
        DataLoaderFailure("x", kind="transient")


@pytest.mark.parametrize("kind", [*FAILURE_KINDS, None])
def test_the_error_channel_carries_each_kind_and_only_known_ones(kind):
    text = "load of public.t failed at step 'load': boom\nsecond line"
    message = error_message(text, kind)
    assert kind_from_message(message) == kind
    line = stderr_error_line(text, kind)
    assert line.startswith(STDERR_ERROR_PREFIX) and line.endswith("\n")
    lines = ["noise", line.rstrip("\n")]
    assert error_from_stderr(lines) == "load of public.t failed at step 'load': boom | second line"
    assert kind_from_stderr(lines) == kind
    # The runners take the kind from where they take the text: the message, else stderr.
    assert error_kind_from([message], ["DATALOADER_ERROR: [kind=internal] other"]) == kind
    assert error_kind_from([], lines) == kind


def test_an_unknown_kind_never_crosses_the_wire():
    assert ERROR_KIND_KEY not in error_message("x", "transient")
    assert kind_from_message({"dataloader_error": "x", ERROR_KIND_KEY: "transient"}) is None
    forged = ["DATALOADER_ERROR: [kind=transient] x"]
    assert kind_from_stderr(forged) is None
    assert error_from_stderr(forged) == "[kind=transient] x"  # a foreign text is kept whole


def test_every_kind_has_a_rule_and_the_database_accepts_exactly_these_kinds():
    assert set(KIND_RULES) == set(FAILURE_KINDS)
    migration = (REPO / "sql" / "014_failure_kinds.sql").read_text()
    checks = re.findall(r"CHECK \((\w+) IN \(([^)]*)\)\)", migration)
    assert [column for column, _ in checks] == ["last_failure_kind", "failure_kind"]
    for _, listed in checks:
        assert re.findall(r"'(\w+)'", listed) == list(FAILURE_KINDS)


# -- the real load script -----------------------------------------------------------------------


def _script_failure(params: dict, tmp_path: Path, env: dict | None = None) -> tuple[str, str]:
    """Run the real script; (the kind on its last stderr line, the kind of its error message)."""
    proc, messages = pipe.run_raw(params, tmp_path, env)
    assert proc.returncode == 1, proc.stderr
    [payload] = [
        m["params"]["payload"]
        for m in messages
        if m["method"] == "report_custom_message" and "dataloader_error" in m["params"]["payload"]
    ]
    return kind_from_stderr(proc.stderr.strip().splitlines()), kind_from_message(payload)


def test_the_real_script_reports_a_missing_secret_as_source_auth(source_db, lake_root, tmp_path):
    config = {**pipe.make_params(source_db, "x")["db_config_value"], "password_secret": "pg-pass"}
    params = pipe.make_params(source_db, "events", db_kv_scope="kv-none", db_config_value=config)
    assert _script_failure(params, tmp_path) == ("source_auth", "source_auth")


def test_the_real_script_reports_an_incompatible_type_change_as_schema_conflict(
    source_db, lake_root, tmp_path
):
    pipe.execute(source_db, "CREATE TABLE shifty (id int, price numeric(8,2))")
    pipe.execute(source_db, "INSERT INTO shifty VALUES (1, 9.99)")
    params = pipe.make_params(source_db, "shifty", load_strategy="merge", merge_keys=["id"])
    pipe.materialize_load(params)
    pipe.execute(source_db, "ALTER TABLE shifty ALTER COLUMN price TYPE text")
    assert _script_failure(params, tmp_path) == ("schema_conflict", "schema_conflict")


def test_the_real_script_reports_an_engine_it_does_not_have_as_bad_config(
    source_db, lake_root, tmp_path
):
    params = pipe.make_params(source_db, "anything")
    found = _script_failure(params, tmp_path, {"DATALOADER_ENGINE": "pandas"})
    assert found == ("bad_config", "bad_config")


def _due_again(db: psycopg.Connection, key: str) -> None:
    """Due now, and ready if it failed (what a person's SQL in the README does)."""
    db.execute(
        "UPDATE table_control SET next_load_date_time = now(),"
        " last_status = CASE WHEN last_status = 'Failed' THEN NULL ELSE last_status END"
        " WHERE control_key = %s",
        (key,),
    )


def _kinds(db: psycopg.Connection, key: str) -> tuple[str | None, str | None]:
    row = control_row(db, key)
    latest = [h for h in history(db, key) if h["metadata_id"] == row["last_metadata_id"]]
    return row["last_failure_kind"], latest[0]["failure_kind"]


def test_the_scripts_kinds_reach_the_row_and_history_and_a_success_clears_them(
    control_db, source_db, source, lake_root, db, instance
):
    # Keys that break the merge: loaded once, then a duplicate key arrives.
    source.execute("CREATE TABLE keyed (id int, name text, updated_at timestamptz)")
    source.execute("INSERT INTO keyed VALUES (1, 'a', now()), (2, 'b', now())")
    add_control_row(
        db,
        source_db,
        "pg.keyed",
        "keyed",
        load_strategy="merge",
        merge_keys=["id"],
        incremental_column=None,
    )
    first, _ = claim_and_materialize(control_db, lake_root, instance, "pg.keyed")
    assert first.success
    source.execute("INSERT INTO keyed VALUES (1, 'dup', now() + interval '1 hour')")
    _due_again(db, "pg.keyed")
    failed, _ = claim_and_materialize(control_db, lake_root, instance, "pg.keyed")
    assert not failed.success
    assert control_row(db, "pg.keyed")["last_status"] == FAILED
    assert _kinds(db, "pg.keyed") == ("data_mismatch", "data_mismatch")
    # A configuration the source cannot serve (a wrapper around our own refusal: its cause's).
    add_control_row(db, source_db, "pg.nocol", "orders", incremental_column="no_such_column")
    claim_and_materialize(control_db, lake_root, instance, "pg.nocol")
    assert _kinds(db, "pg.nocol") == ("bad_config", "bad_config")
    # A foreign error (the source's own): no kind, so its text is classified.
    add_control_row(db, source_db, "pg.missing", "no_such_table")
    claim_and_materialize(control_db, lake_root, instance, "pg.missing")
    assert control_row(db, "pg.missing")["last_status"] == FAILED
    assert _kinds(db, "pg.missing") == (None, None)
    # Fixed at the source: the next load succeeds and the row has no failure kind any more.
    source.execute("DELETE FROM keyed WHERE name = 'dup'")
    _due_again(db, "pg.keyed")
    again, _ = claim_and_materialize(control_db, lake_root, instance, "pg.keyed")
    assert again.success
    assert _kinds(db, "pg.keyed") == (None, None)
    first_failure = history(db, "pg.keyed")[1]
    assert (first_failure["status"], first_failure["failure_kind"]) == (FAILED, "data_mismatch")


# -- the monitors -------------------------------------------------------------------------------


def _queued(db: psycopg.Connection, key: str, minutes: int) -> int:
    config_id = add_row(db, key)
    add_history(db, config_id, key, QUEUED)
    db.execute(
        "UPDATE table_control SET last_status = 'Queued',"
        " last_status_date_time = now() - make_interval(mins => %s) WHERE config_id = %s",
        (minutes, config_id),
    )
    return config_id


def test_the_long_queued_monitor_writes_stuck_queued(control_db, db, instance):
    _queued(db, "stuck", 61)
    tick(build_longqueued_monitor(Settings()), instance, control_db)
    assert control_row(db, "stuck")["last_status"] == FAILED
    assert _kinds(db, "stuck") == ("stuck_queued", "stuck_queued")


def test_the_long_running_monitor_writes_run_timeout(control_db, db, instance):
    config_id = add_row(db, "slow")
    add_history(db, config_id, "slow", IN_PROGRESS)
    db.execute(
        "UPDATE table_control SET last_status = 'In Progress',"
        " last_load_date_time = now() - interval '181 minutes' WHERE config_id = %s",
        (config_id,),
    )
    tick(build_longrunning_monitor(Settings()), instance, control_db)
    assert control_row(db, "slow")["last_status"] == FAILED
    assert _kinds(db, "slow") == ("run_timeout", "run_timeout")


def test_an_orphaned_claim_writes_orphaned(control_db, db, instance):
    add_row(db, "crashed", schedule_interval="1 hour")
    add_row(db, "lost", schedule_interval="1 hour")
    with LakebaseClient(control_db) as client:
        claimed = {r.control_key: r for r in claim_due(client, 10)}
    create_run_for_test(
        instance,
        job_name=LOAD_JOB,
        status=dg.DagsterRunStatus.FAILURE,
        tags={TAG_METADATA_ID: str(claimed["crashed"].metadata_id)},
    )
    db.execute(
        "UPDATE table_control SET last_status_date_time = now() - interval '10 minutes'"
        " WHERE last_status = 'Queued'"
    )
    tick(build_master_sensor(Settings()), instance, control_db)
    assert control_row(db, "crashed")["last_status"] == FAILED
    assert _kinds(db, "crashed") == ("orphaned", "orphaned")
    # A claim whose run never existed is released (ready, not Failed); its attempt says why.
    released = db.execute(
        "SELECT status, failure_kind FROM historical_metadata WHERE metadata_id = %s",
        (claimed["lost"].metadata_id,),
    ).fetchone()
    assert (released["status"], released["failure_kind"]) == (FAILED, "orphaned")


def test_an_uncomputable_row_is_failed_as_bad_config(control_db, db, instance):
    _queued(db, "broken", 1)
    db.execute("ALTER TABLE table_control DROP CONSTRAINT retry_count_must_stay_within_0_and_1000")
    db.execute("UPDATE table_control SET retry_count = 5000 WHERE control_key = 'broken'")
    tick(build_longqueued_monitor(Settings()), instance, control_db)
    assert control_row(db, "broken")["last_status"] == FAILED
    assert _kinds(db, "broken") == ("bad_config", "bad_config")


def test_a_running_rows_failure_without_a_kind_is_refused_by_the_transition():
    where = sql.SQL("t.config_id = 1")
    with pytest.raises(ValueError, match="names its failure_kind"):
        guarded_transition(None, FAILED, {IN_PROGRESS}, where=where, params={}, execute=False)
    with pytest.raises(ValueError, match="unknown failure kind"):
        guarded_transition(
            None, FAILED, {QUEUED}, where=where, params={}, execute=False, failure_kind="flaky"
        )
    # A foreign error is named as such (None); a decision on a Failed row keeps the kind.
    guarded_transition(
        None, FAILED, {QUEUED}, where=where, params={}, execute=False, failure_kind=None
    )
    guarded_transition(None, FAILED, {FAILED}, where=where, params={}, execute=False)
