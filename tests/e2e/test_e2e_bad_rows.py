"""`dataloader dev` with short sensor intervals: healthy rows load next to bad ones (issue 16).

The demo rows are the healthy ones. Bad input is added with plain SQL as a person would:
- an uncomputable cron and a zone outside the zone database: refused by the database, saying why;
- a missing source table, an injection attempt in a table name, a destination climbing out of
  the lake: each ends Failed, retry analysis (the rules: no model configured) decides, and the
  row's own cause is still readable in last_message after the decision.
The healthy rows end Succeeded; nothing stays Queued or In Progress; the injected statement
never ran.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from helpers import running_dev
from psycopg.rows import dict_row

ROOT = Path(__file__).resolve().parents[2]
WAIT_SECONDS = 300  # a bound, not a timing assertion: the test fails only if nothing happens
DEMO = ("demo.customers", "demo.orders", "demo.products")
BAD = {
    # control_key: (source table, destination schema, words of the cause on the row)
    "bad.missing": ("no_such_table", "shop", "no_such_table"),
    "bad.injection": ("customers; DROP TABLE shop.products; --", "shop", "DROP TABLE"),
    "bad.escape": ("customers", "../../outside", "outside"),
}


def _conninfo(home: Path, dbname: str = "dataloader") -> str | None:
    pid_file = home / "pgdata" / "postmaster.pid"  # line 4: port, line 5: socket directory
    lines = pid_file.read_text().splitlines() if pid_file.exists() else []
    if len(lines) < 5 or not lines[4].strip():
        return None
    return psycopg.conninfo.make_conninfo(
        host=lines[4].strip(), port=lines[3].strip(), dbname=dbname, user="postgres"
    )


def _query(home: Path, sql: str, params: tuple = (), dbname: str = "dataloader") -> list[dict]:
    conninfo = _conninfo(home, dbname)
    if conninfo is None:
        return []
    try:
        with psycopg.connect(conninfo, row_factory=dict_row, connect_timeout=5) as conn:
            return conn.execute(sql, params or None).fetchall()
    except psycopg.Error:
        return []  # not migrated or seeded yet


def _wait_for(predicate, what: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        if predicate():
            return
        if process.poll() is not None:
            pytest.fail(f"dataloader dev exited ({process.returncode}):\n{log.read_text()[-4000:]}")
        time.sleep(1)
    pytest.fail(f"timed out waiting for {what}:\n{log.read_text()[-4000:]}")


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen, Path]]:
    with running_dev(
        tmp_path,
        {
            "DATALOADER_MASTER_SENSOR_INTERVAL_SECONDS": "5",
            "DATALOADER_FAILED_INTERVAL_SECONDS": "5",
        },
        drop=("DATALOADER_AI_", "OPENAI_"),
    ) as started:
        yield started


def _add_bad_rows(home: Path) -> None:
    with psycopg.connect(_conninfo(home), autocommit=True) as conn:
        for key, (table, schema, _) in BAD.items():
            conn.execute(
                "INSERT INTO table_control (control_key, source_catalog, source_schema_name,"
                " source_table_name, destination_catalog, destination_schema_name,"
                " destination_table_name, db_type, db_config_value, load_strategy)"
                " SELECT %s, source_catalog, 'shop', %s, 'demo_lake', %s, %s, db_type,"
                " db_config_value, 'full' FROM table_control WHERE control_key = 'demo.customers'",
                (key, table, schema, key.replace(".", "_")),  # one destination per row
            )
        for column, value, words in [
            ("schedule_cron", "61 * * * *", "minute '61' is outside 0-59"),
            ("schedule_cron", "0 0 30 2 *", "never fires"),
            ("schedule_timezone", "UTC+3", "is not a zone name"),
        ]:
            with pytest.raises(psycopg.errors.CheckViolation, match=words):
                conn.execute(
                    f"UPDATE table_control SET {column} = %s WHERE control_key = 'demo.orders'",
                    (value,),
                )


def test_healthy_rows_load_and_bad_rows_fail_with_their_cause_kept(dev):
    home, process, log = dev
    _wait_for(
        lambda: (
            len(_query(home, "SELECT 1 FROM table_control WHERE control_key LIKE 'demo.%'")) == 3
        ),
        "the demo rows",
        process,
        log,
    )
    _add_bad_rows(home)

    def settled() -> bool:
        rows = _query(
            home,
            "SELECT t.control_key, t.last_status, h.retry_decision FROM table_control t"
            " LEFT JOIN historical_metadata h ON h.metadata_id = t.last_metadata_id",
        )
        state = {r["control_key"]: r for r in rows}
        healthy = all(state.get(k, {}).get("last_status") == "Succeeded" for k in DEMO)
        decided = all(state.get(k, {}).get("retry_decision") for k in BAD)
        return healthy and decided

    _wait_for(settled, "healthy rows Succeeded and every bad row decided", process, log)

    rows = {
        r["control_key"]: r
        for r in _query(home, "SELECT control_key, last_status, last_message FROM table_control")
    }
    for key, (_, _, words) in BAD.items():
        message = rows[key]["last_message"]
        assert message.startswith("[AI Analysis - "), message
        assert "(decided by rules)" in message and "| Cause: " in message, message
        assert words in message.split("| Cause: ", 1)[1], message
        # Permanent causes: reviewed, Failed, waiting for a person (never Queued/In Progress).
        assert message.startswith("[AI Analysis - Requires Review]"), message
        assert rows[key]["last_status"] == "Failed"
    # The injected statement never ran.
    assert (
        _query(home, "SELECT count(*) AS n FROM shop.products", dbname="demo_source")[0]["n"] == 4
    )
