"""`make dev`'s terminal shows what a person should act on: no warning noise, and a failed load
as one line per event, with its stack trace kept in the run's logs.

A real `dataloader dev` (its whole output is the terminal a person watches), the demo rows and
one row added with SQL whose source table does not exist. Waits are bounds on "until it happened".
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from helpers import embedded_conninfo, running_dev
from psycopg.rows import dict_row

WAIT_SECONDS = 300  # a bound, not a timing assertion
NOISE = ("RuntimeDirWarning", "PreviewWarning", "SupersessionWarning", "XDG_RUNTIME_DIR")


def _rows(home: Path, sql: str) -> list[dict]:
    conninfo = embedded_conninfo(home)
    if conninfo is None:
        return []
    try:
        with psycopg.connect(conninfo, row_factory=dict_row, connect_timeout=5) as conn:
            return conn.execute(sql).fetchall()
    except psycopg.Error:
        return []


def _wait(what: str, predicate, process, log: Path) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        if predicate():
            return
        if process.poll() is not None:
            pytest.fail(f"dataloader dev exited:\n{log.read_text()[-3000:]}")
        time.sleep(1)
    pytest.fail(f"timed out waiting for {what}:\n{log.read_text()[-3000:]}")


def test_the_terminal_has_no_warning_noise_and_a_failed_load_has_no_stack_trace(tmp_path):
    settings = {"DATALOADER_MASTER_SENSOR_INTERVAL_SECONDS": "5", "XDG_RUNTIME_DIR": "/tmp"}
    with running_dev(tmp_path, settings, drop=("PYTHONWARNINGS",)) as (home, process, log):
        _wait(
            "the demo rows",
            lambda: (
                len(_rows(home, "SELECT 1 FROM table_control WHERE control_key LIKE 'demo.%'")) == 3
            ),
            process,
            log,
        )
        with psycopg.connect(embedded_conninfo(home), autocommit=True) as conn:
            conn.execute(
                "INSERT INTO table_control (control_key, source_catalog, source_schema_name,"
                " source_table_name, destination_catalog, destination_schema_name,"
                " destination_table_name, db_type, db_config_value, load_strategy)"
                " SELECT 'bad.missing', source_catalog, 'shop', 'no_such_table', 'demo_lake',"
                " 'shop', 'bad_missing', db_type, db_config_value, 'full' FROM table_control"
                " WHERE control_key = 'demo.customers'"
            )

        def failed_and_demo_loaded() -> bool:
            rows = _rows(home, "SELECT control_key, last_status FROM table_control")
            status = {r["control_key"]: r["last_status"] for r in rows}
            # The row is Failed before its run ends (the asset records it, then raises): wait for
            # the run's end in the terminal too, or the stop below interrupts the run's last events.
            return (
                status.get("bad.missing") == "Failed"
                and all(status.get(k) == "Succeeded" for k in ("demo.customers", "demo.orders"))
                and "RUN_FAILURE" in log.read_text()
            )

        _wait("the bad row to fail and the demo to load", failed_and_demo_loaded, process, log)
        [bad] = _rows(
            home, "SELECT last_message FROM table_control WHERE control_key = 'bad.missing'"
        )
        os.kill(process.pid, signal.SIGINT)
        assert process.wait(timeout=120) == 0
    text = log.read_text()
    lines = text.splitlines()

    assert not [n for n in NOISE if n in text], [
        line for line in lines if any(n in line for n in NOISE)
    ]
    assert "Traceback (most recent call last)" not in text
    assert "Stack Trace:" not in text
    assert not [line for line in lines if line.lstrip().startswith('File "')]
    # The failed load is in the terminal, one line per event, with the row's own cause. The run
    # worker writes RUN_FAILURE itself; STEP_FAILURE comes through Dagster's tail of the step's
    # compute log, which a loaded machine can still stop before it is copied (dev waits 1 s).
    failure = [line for line in lines if "STEP_FAILURE" in line or "RUN_FAILURE" in line]
    assert failure, text[-3000:]
    assert any(
        "no_such_table" in line and "stack trace in the run's logs" in line for line in failure
    )
    assert "no_such_table" in bad["last_message"]

    # The stack trace is kept in the run's event log (what the run's page shows).
    with dg.DagsterInstance.from_config(str(home / "dagster_home")) as instance:
        runs = instance.get_runs(dg.RunsFilter(tags={"dagster/partition": "bad.missing"}))
        assert runs
        errors = [
            e.dagster_event.event_specific_data.error
            for run in runs
            for e in instance.all_logs(run.run_id)
            if e.dagster_event and e.dagster_event.event_type_value == "STEP_FAILURE"
        ]
    assert errors and any(
        "no_such_table" in e.to_string() and (e.stack or e.cause is not None) for e in errors
    )
