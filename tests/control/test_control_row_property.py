"""Property: whatever an operator writes into table_control (any value of each column's type),
the row ends refused by the database, waiting, or Failed with a message, and no sensor raises.

Each example writes one row next to a healthy one, then runs one tick of each of the five sensors
and, when master_sensor claimed the row, one real load attempt (the asset and the Pipes script).
Bounded and derandomized: the same examples on every run, in CI too.
"""

from __future__ import annotations

import string
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from helpers import add_row, lakebase_for, pg_config, tick
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from psycopg.types.json import Jsonb

from dagsters.assets.dataloader_pipes_asset import build_load_asset
from dagsters.partitions import PARTITIONS_NAME
from dagsters.resources.pipes_databricks import PipesDatabricksResource
from dagsters.sensors.dataloader_failed_monitor import build_failed_monitor
from dagsters.sensors.dataloader_landing_table_monitor import build_landing_table_monitor
from dagsters.sensors.dataloader_longqueued_monitor import build_longqueued_monitor
from dagsters.sensors.dataloader_longrunning_monitor import build_longrunning_monitor
from dagsters.sensors.dataloader_master_sensor import build_master_sensor
from dagsters.settings import Settings, load_settings

# Text PostgreSQL can store (no NUL), from a small alphabet plus any character now and then.
_CHARS = st.one_of(
    st.sampled_from(string.ascii_letters + string.digits + " _-.*/,#@'\"\\;"),
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
)
TEXT = st.one_of(
    st.text(_CHARS, max_size=12),
    st.integers(190, 1100).map(lambda n: "k" * n),  # around every length bound
)
OPT_TEXT = st.one_of(st.none(), TEXT)
TIMESTAMP = st.one_of(
    st.none(),
    st.sampled_from(["infinity", "-infinity", "294276-12-31 00:00+00", "4713-01-01 00:00+00 BC"]),
    st.datetimes(timezones=st.just(UTC)),
    st.integers(-(10**6), 10**6).map(lambda m: datetime.now(UTC) + timedelta(minutes=m)),
)
INTERVAL = st.one_of(
    st.none(),
    st.sampled_from(
        [
            "100000 years",
            "1 microsecond",
            "-5 minutes",
            "178000000 years",
            "1 mon -29 days",
            "0",
            "1 minute",
            "366 days",
            "1 year",
        ]
    ),
    st.timedeltas(min_value=timedelta(days=-(10**6)), max_value=timedelta(days=10**6)),
)
CRON = st.one_of(
    st.none(),
    st.sampled_from(
        [
            "0 * * * *",
            "*/1 * * * *",
            "61 * * * *",
            "0 0 30 2 *",
            "@hourly",
            "@often",
            ",".join(["0-59"] * 18) + " * * * *",
            "0 " * 60,
        ]
    ),
    TEXT,
)
STATUS = st.sampled_from([None, "Queued", "In Progress", "Succeeded", "Failed", "Running"])


def _wild(source_config: dict) -> dict[str, st.SearchStrategy]:
    """Any value of each column's type (and a few of the wrong shape the database must refuse)."""
    return {
        "control_key": TEXT,
        "source_catalog": OPT_TEXT,
        "source_schema_name": OPT_TEXT,
        "source_table_name": TEXT,
        "destination_catalog": TEXT,
        "destination_schema_name": TEXT,
        "destination_table_name": TEXT,
        "db_type": st.sampled_from(["postgresql", "mysql", "databricks", "db2"]),
        "db_config_value": st.sampled_from(
            [{}, {"port": "x"}, {"unknown": 1}, {"password": "p"}, {**source_config, "port": 1}]
        ).map(Jsonb),
        "db_kv_scope": OPT_TEXT,
        "load_strategy": st.sampled_from(["full", "incremental", "merge", "scd2", "append"]),
        "incremental_column": OPT_TEXT,
        "incremental_value": st.one_of(st.just("-infinity"), st.just("99999-01-01"), OPT_TEXT),
        "merge_keys": st.one_of(st.none(), st.lists(st.one_of(st.none(), TEXT), max_size=4)),
        "lookback_window": INTERVAL,
        "is_active": st.booleans(),
        "schedule_cron": CRON,
        "schedule_timezone": st.one_of(st.sampled_from(["UTC+3", "", "Mars/Base"]), TEXT),
        "schedule_interval": INTERVAL,
        "next_load_date_time": TIMESTAMP,
        "force_full_reload": st.booleans(),
        "last_status": STATUS,
        "last_status_date_time": TIMESTAMP,
        "last_load_date_time": TIMESTAMP,
        "last_dagster_run": OPT_TEXT,
        "last_databricks_run": OPT_TEXT,
        "last_message": OPT_TEXT,
        "last_metadata_id": st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)),
        "retry_count": st.integers(-(2**31), 2**31 - 1),
        "needs_review": st.booleans(),
        "retry_analysis_requested_at": TIMESTAMP,
        "staging_model_processed": st.booleans(),
        "delete_detection": st.sampled_from(["none", "soft", "hard", "maybe"]),
        "delete_max_fraction": st.sampled_from(
            [Decimal("0.5"), Decimal(1), Decimal(0), Decimal("NaN"), Decimal(2)]
        ),
        "jdbc_partition_column": OPT_TEXT,
        "jdbc_num_partitions": st.one_of(st.none(), st.integers(-(2**31), 2**31 - 1)),
        "created_at": TIMESTAMP.filter(lambda v: v is not None),
    }


def _loadable(source_config: dict, **columns) -> dict:
    """The row _rows starts from (an incremental load of the orders table), with ``columns``."""
    return {
        "control_key": "p.known",
        "source_schema_name": "public",
        "source_table_name": "orders",
        "destination_catalog": "lake",
        "destination_schema_name": "raw",
        "destination_table_name": "known",
        "db_type": "postgresql",
        "db_config_value": Jsonb(source_config),
        "load_strategy": "incremental",
        "incremental_column": "updated_at",
        "merge_keys": None,
        "schedule_interval": timedelta(hours=1),
        "next_load_date_time": datetime.now(UTC) - timedelta(minutes=1),
        **columns,
    }


# The values issue 23 found, always tried besides the generated ones.
KNOWN = [
    {"next_load_date_time": "-infinity"},
    {"next_load_date_time": "infinity", "last_status": "Failed", "last_message": "boom"},
    {"next_load_date_time": "infinity", "last_status": "Queued"},
    {"last_status_date_time": "infinity", "last_status": "In Progress"},
    {"schedule_interval": "100000 years"},
    {"schedule_interval": "1 microsecond"},
    {"lookback_window": "100000 years"},
    {"load_strategy": "merge", "merge_keys": ["order_id", "order_id"]},
    {"control_key": "k" * 1_000_000},
    {"retry_count": 2**31 - 1, "last_status": "Failed", "last_message": "boom"},
    # Plain loadable rows: how many generated rows are due depends on the wall clock (a drawn
    # time against now), so these keep the count of examples that reach the loader independent
    # of when the test runs.
    {},
    {"load_strategy": "full", "incremental_column": None},
    {"load_strategy": "merge", "merge_keys": ["order_id"]},
]


@st.composite
def _rows(draw, source_config: dict) -> dict:
    """A row that would load (the orders table of the source), then one to four of its columns
    given arbitrary values: every column gets wild values across the examples, and most rows
    still pass the other rules, so the sensors and the loader meet the wild value."""
    strategy = draw(st.sampled_from(["full", "incremental", "merge"]))
    row = {
        "control_key": "p." + draw(st.text(string.ascii_lowercase, min_size=1, max_size=8)),
        "source_schema_name": "public",
        "source_table_name": "orders",
        "destination_catalog": "lake",
        "destination_schema_name": "raw",
        "destination_table_name": draw(st.text(string.ascii_lowercase, min_size=1, max_size=8)),
        "db_type": "postgresql",
        "db_config_value": Jsonb(source_config),
        "load_strategy": strategy,
        "incremental_column": "updated_at" if strategy != "full" else None,
        "merge_keys": ["order_id"] if strategy == "merge" else None,
        "schedule_interval": timedelta(hours=1),
        "next_load_date_time": datetime.now(UTC) - timedelta(minutes=1),
    }
    wild = _wild(source_config)
    for column in draw(st.sets(st.sampled_from(sorted(wild)), min_size=1, max_size=4)):
        row[column] = draw(wild[column])
    return row


SENSORS = [
    build_master_sensor,
    build_longqueued_monitor,
    build_longrunning_monitor,
    build_failed_monitor,
    build_landing_table_monitor,
]


def _insert(conn: psycopg.Connection, values: dict) -> bool:
    """True when the database accepted the row; False when it refused it (a check or a type)."""
    names = ", ".join(values)
    marks = ", ".join(["%s"] * len(values))
    try:
        with conn.transaction():
            conn.execute(
                f"INSERT INTO table_control ({names}) VALUES ({marks})", list(values.values())
            )
    except (psycopg.IntegrityError, psycopg.DataError, psycopg.errors.ProgramLimitExceeded):
        return False
    return True


def _load(control_db: str, lake_root: Path, instance, request: dg.RunRequest) -> None:
    instance.add_dynamic_partitions(PARTITIONS_NAME, [request.partition_key])
    dg.materialize(
        [build_load_asset(load_settings())],
        partition_key=request.partition_key,
        run_config=request.run_config,
        resources={
            "lakebase": lakebase_for(control_db),
            "pipes_databricks": PipesDatabricksResource.from_settings(
                load_settings({"DATALOADER_LAKE_ROOT": str(lake_root)}),
                termination_grace_seconds=3,
            ),
        },
        instance=instance,
        raise_on_error=False,
    )


@pytest.mark.timeout(900)
def test_any_operator_value_ends_refused_waiting_or_failed_and_no_sensor_raises(
    control_db, source_db, source, lake_root, instance, no_ai_model
):
    source_config = pg_config(source_db)
    outcomes: list[str] = []

    @settings(
        max_examples=30,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(values=_rows(source_config))
    def check(values: dict) -> None:
        _check(values)

    for known in KNOWN:
        check = example(values=_loadable(source_config, **known))(check)

    def _check(values: dict) -> None:
        with psycopg.connect(control_db, autocommit=True) as conn:
            conn.execute("DELETE FROM historical_metadata; DELETE FROM table_control")
            conn.row_factory = psycopg.rows.dict_row
            add_row(conn, "healthy")
            if not _insert(conn, values):
                outcomes.append("refused")
                return  # refused: the database named the rule
            outcomes.append("accepted")
            claimed = []
            for build in SENSORS:
                result = tick(build(Settings()), instance, control_db)  # must not raise
                if build is build_master_sensor:
                    claimed = [
                        r
                        for r in getattr(result, "run_requests", None) or []
                        if r.partition_key != "healthy"
                    ]
            if claimed:
                outcomes.append("loaded")
                _load(control_db, lake_root, instance, claimed[0])
            # Every row is readable, and the healthy one was not held up.
            rows = conn.execute("SELECT * FROM table_control").fetchall()
            healthy = next(r for r in rows if r["control_key"] == "healthy")
            assert healthy["last_status"] == "Queued"
            [row] = [r for r in rows if r["control_key"] != "healthy"]
            if claimed:
                # The attempt ended: Succeeded, or Failed saying why; its history too.
                assert row["last_status"] in ("Succeeded", "Failed"), row
                if row["last_status"] == "Failed":
                    assert row["last_message"], row
                attempt = conn.execute(
                    "SELECT status FROM historical_metadata WHERE metadata_id = %s",
                    (row["last_metadata_id"],),
                ).fetchone()
                assert attempt["status"] in ("Succeeded", "Failed"), attempt
            elif row["last_status"] == "Failed" and row["needs_review"]:
                assert row["last_message"], row

    check()
    # The examples reach the sensors and the loader, not only the database's refusals.
    assert outcomes.count("loaded") >= 5 and outcomes.count("refused") >= 5, outcomes
