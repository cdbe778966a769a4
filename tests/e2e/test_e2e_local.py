"""`dataloader dev` from scratch: embedded Lakebase, demo rows loaded by the daemon, a reload on demand."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from deltalake import DeltaTable
from helpers import embedded_conninfo, running_dev
from psycopg.rows import dict_row

ROOT = Path(__file__).resolve().parents[2]
DEMO_KEYS = {"demo.customers", "demo.orders", "demo.products"}
WAIT_SECONDS = 240  # a bound, not a timing assertion: the run fails only if nothing happens


_last_error: list[str] = [""]


def _query(home: Path, sql: str, params: tuple = ()) -> list[dict]:
    conninfo = embedded_conninfo(home)
    if conninfo is None:
        _last_error[0] = "embedded server not started yet"
        return []
    try:
        with psycopg.connect(conninfo, row_factory=dict_row, connect_timeout=5) as conn:
            return conn.execute(sql, params or None).fetchall()
    except psycopg.Error as exc:
        _last_error[0] = str(exc)  # not migrated yet, or the server is still starting
        return []


def _wait_for(predicate, what: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        if predicate():
            return
        if process.poll() is not None:
            pytest.fail(f"dataloader dev exited ({process.returncode}):\n{log.read_text()[-4000:]}")
        time.sleep(1)
    pytest.fail(
        f"timed out waiting for {what} (last error: {_last_error[0]}):\n{log.read_text()[-4000:]}"
    )


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen, Path]]:
    with running_dev(tmp_path, {"DATALOADER_MASTER_SENSOR_INTERVAL_SECONDS": "5"}) as started:
        yield started


def test_dev_loads_the_demo_and_reloads_a_row_set_due_with_sql(dev):
    home, process, log = dev

    def demo_loaded() -> bool:
        rows = _query(
            home,
            "SELECT control_key, last_status FROM table_control WHERE control_key LIKE 'demo.%'",
        )
        return {r["control_key"] for r in rows if r["last_status"] == "Succeeded"} == DEMO_KEYS

    _wait_for(demo_loaded, "the demo rows to reach Succeeded", process, log)
    history = _query(home, "SELECT * FROM historical_metadata ORDER BY metadata_id")
    assert {h["control_key"] for h in history} == DEMO_KEYS
    assert all(h["status"] == "Succeeded" and h["triggered_by"] == "sensor" for h in history)
    orders = DeltaTable(str(home / "lake" / "demo_lake" / "shop" / "orders"))
    assert orders.to_pyarrow_table().num_rows > 0

    # What a person does to load a table again: make it due with SQL.
    _query(
        home,
        "UPDATE table_control SET next_load_date_time = now()"
        " WHERE control_key = 'demo.customers' RETURNING config_id",
    )

    def reloaded() -> bool:
        rows = _query(
            home,
            "SELECT status FROM historical_metadata WHERE control_key = 'demo.customers'"
            " ORDER BY metadata_id",
        )
        return len(rows) == 2 and rows[-1]["status"] == "Succeeded"

    _wait_for(reloaded, "demo.customers to load a second time", process, log)
