"""One set of schedule rules for the database and the scheduler (issue 16, items 3, 4 and 13).

- ``dataloader_cron_problem`` (sql/005) and ``cron_rules.cron_problem`` give the same answer for
  a corpus of hand-picked and generated expressions, and ``next_load_time`` computes a slot for
  every expression they accept;
- the database refuses ``61 * * * *``, ``0 0 30 2 *`` and ``UTC+3`` with a message naming the
  row and what is wrong; every zone it accepts is one the scheduler knows;
- rows written before sql/005 that the scheduler cannot compute are paused by the migration with
  the reason and the old value in last_message;
- a NULL lookback_window is stored as no look-back.
"""

from __future__ import annotations

import random
import shutil
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from helpers import SOME_SOURCE, control_row, insert_control_row
from psycopg.types.json import Jsonb

from dagsters.local.migrate import SQL_DIR, apply_migrations
from dagsters.policy.cron_rules import cron_problem
from dagsters.policy.schedule import next_load_time, validate_timezone

HAND_PICKED = [
    "* * * * *",
    "*/15 * * * *",
    "0/15 * * * *",
    "5/15 0 * * *",
    "0 2 * * *",
    "30 2 * * 1-5",
    "0 0 * * MON-FRI",
    "0 0 * jan-mar *",
    "0 0 * * 7",
    "0 0 * * sun-sat",
    "0 0 * * 1#5",
    "0 0 * * mon#2",
    "0 0 L * *",
    "0 0 L 2 *",
    "0 0 29 2 *",
    "0 0 30 2 1",
    "0 0 1-31/2 * *",
    "1,2-5,*/7 * * * *",
    "00 00 * * *",
    "  0 3 * * *  ",
    "@daily",
    "@HOURLY",
    "@weekly",
    # refused
    "61 * * * *",
    "0 24 * * *",
    "0 0 0 * *",
    "0 0 * 0 *",
    "0 0 * 13 *",
    "0 0 * * 8",
    "0 0 30 2 *",
    "0 0 31 2,4,6,9,11 *",
    "0 0 31 4 *",
    "*/0 * * * *",
    "5-2 * * * *",
    "? * * * *",
    "0 0 * * 5L",
    "0 0 LW * *",
    "0 0 15W * *",
    "0 0 * * 1#6",
    "0 0 * * MON#1,fri",
    "H * * * *",
    "0 0 * * * *",
    "0 0 * *",
    "@reboot",
    "@every 5m",
    "",
    "   ",
    "1,,2 * * * *",
    "0 0 * foo *",
    "99999999999 * * * *",
]

_TOKENS = {
    0: ["*", "0", "59", "60", "*/5", "0-30", "30-0", "5/10", "*/0", "1,2", "x", "-1"],
    1: ["*", "0", "23", "24", "*/6", "1-5", "2/3", "3,4"],
    2: ["*", "1", "29", "30", "31", "32", "0", "L", "1-7", "30,31", "*/10", "31/2"],
    3: ["*", "2", "4", "12", "13", "0", "feb", "2,4", "4-6", "jan-feb", "*/2", "2/12", "Apr"],
    4: ["*", "0", "7", "8", "mon", "1-5", "1#5", "1#6", "sun,sat", "5-1", "*/2"],
}


def _generated(count: int) -> list[str]:
    rng = random.Random(16)
    return [" ".join(rng.choice(_TOKENS[i]) for i in range(5)) for _ in range(count)]


def _sql_problems(db: psycopg.Connection, expressions: list[str]) -> dict[str, str | None]:
    rows = db.execute(
        "SELECT e, dataloader_cron_problem(e) AS problem FROM unnest(%s::text[]) AS e",
        (expressions,),
    ).fetchall()
    return {r["e"]: r["problem"] for r in rows}


def test_database_and_scheduler_accept_exactly_the_same_crons(db):
    corpus = list(dict.fromkeys(HAND_PICKED + _generated(3000)))
    in_sql = _sql_problems(db, corpus)
    now = datetime(2026, 3, 29, 0, 30, tzinfo=UTC)
    accepted = 0
    for expr in corpus:
        python = cron_problem(expr)
        assert (python is None) == (in_sql[expr] is None), (expr, python, in_sql[expr])
        if python is None:
            accepted += 1
            slot = next_load_time(now, cron=expr, timezone="Europe/Berlin")
            assert slot is not None and slot > now, expr
    # The corpus exercises both answers.
    assert 50 < accepted < len(corpus) - 50


def test_the_database_refuses_what_the_scheduler_cannot_compute_and_says_why(db):
    base = {
        "source_schema_name": "erp",
        "source_table_name": "t",
        "destination_catalog": "lake",
        "destination_schema_name": "raw",
        "destination_table_name": "t",
        "db_type": "postgresql",
        "db_config_value": Jsonb(SOME_SOURCE),
    }
    cases = [
        ({"schedule_cron": "61 * * * *"}, "minute '61' is outside 0-59"),
        ({"schedule_cron": "0 0 30 2 *"}, "never fires"),
        ({"schedule_timezone": "UTC+3"}, "schedule_timezone 'UTC+3' is not a zone name"),
        ({"schedule_timezone": "Mars/Olympus_Mons"}, "is not a zone name"),
    ]
    for number, (columns, words) in enumerate(cases):
        key = f"bad.{number}"
        with pytest.raises(psycopg.errors.CheckViolation) as refused:
            insert_control_row(db, {**base, "control_key": key, **columns})
        assert key in str(refused.value) and words in str(refused.value)
    ok = insert_control_row(db, {**base, "control_key": "good", "schedule_cron": "0 2 * * *"})
    # An UPDATE is refused the same way, and the row keeps its schedule.
    with pytest.raises(psycopg.errors.CheckViolation, match="outside 0-23"):
        db.execute(
            "UPDATE table_control SET schedule_cron = '0 24 * * *' WHERE config_id = %s", (ok,)
        )
    assert control_row(db, "good")["schedule_cron"] == "0 2 * * *"


def test_every_zone_the_database_accepts_is_one_the_scheduler_knows(db):
    names = [r["name"] for r in db.execute("SELECT name FROM pg_timezone_names").fetchall()]
    assert len(names) > 300
    for name in names:
        validate_timezone(name)
    assert db.execute("SELECT dataloader_is_valid_timezone('Europe/Berlin') AS ok").fetchone()["ok"]
    assert not db.execute("SELECT dataloader_is_valid_timezone('utc+3') AS ok").fetchone()["ok"]


def test_migration_pauses_rows_written_before_the_rules(source_db, tmp_path):
    older = tmp_path / "sql"
    older.mkdir()
    for path in sorted(SQL_DIR.glob("00[1-4]_*.sql")):
        shutil.copy(path, older / path.name)
    apply_migrations(source_db, older)
    with psycopg.connect(source_db, autocommit=True) as conn:
        for key, cron, zone in [
            ("legacy.minute", "61 * * * *", "UTC"),
            ("legacy.zone", "0 2 * * *", "UTC+3"),
            ("legacy.fine", "0 2 * * *", "Europe/Berlin"),
        ]:
            conn.execute(
                "INSERT INTO table_control (control_key, source_table_name, destination_catalog,"
                " destination_schema_name, destination_table_name, db_type, schedule_cron,"
                " schedule_timezone, last_message) VALUES (%s, 't', 'l', 'r', %s, 'postgresql',"
                " %s, %s, 'Loaded 5 rows')",
                (key, key, cron, zone),
            )
    assert apply_migrations(source_db) == [
        p.name for p in sorted(SQL_DIR.glob("*.sql")) if p.name >= "005"
    ]
    with psycopg.connect(source_db) as conn:
        rows = {
            r[0]: r[1:]
            for r in conn.execute(
                "SELECT control_key, is_active, schedule_cron, schedule_timezone, last_message"
                " FROM table_control"
            ).fetchall()
        }
    active, cron, zone, message = rows["legacy.minute"]
    assert (active, cron, zone) == (False, None, "UTC")
    assert "'61 * * * *'" in message and "outside 0-59" in message
    assert message.endswith("Previous message: Loaded 5 rows")
    active, cron, zone, message = rows["legacy.zone"]
    assert (active, cron, zone) == (False, "0 2 * * *", "UTC")
    assert "'UTC+3'" in message
    assert rows["legacy.fine"] == (True, "0 2 * * *", "Europe/Berlin", "Loaded 5 rows")


def test_null_lookback_window_means_no_look_back(db):
    insert_control_row(
        db,
        {
            "control_key": "erp.lookback",
            "source_table_name": "t",
            "destination_catalog": "lake",
            "destination_schema_name": "raw",
            "destination_table_name": "t",
            "db_type": "postgresql",
            "load_strategy": "incremental",
            "incremental_column": "updated_at",
            "lookback_window": None,
        },
    )
    assert control_row(db, "erp.lookback")["lookback_window"] == timedelta(0)
    db.execute("UPDATE table_control SET lookback_window = NULL")
    assert control_row(db, "erp.lookback")["lookback_window"] == timedelta(0)
