"""The control database goes away while a load runs: nothing is loaded twice, nothing strands.

The control database here is a second embedded PostgreSQL of its own (the source stays on the
session's server), stopped and restarted mid-run with the project's own embedded-server code.

Pins down (issue 16, items 1 and 6):
- a load whose Delta commit lands while the control database is down writes its result once the
  database is back (bounded write-back retries): exactly the source's rows, the row Succeeded;
- when the database stays down past the write-back bound, the commit is not lost: the row's next
  load finds the attempt in the destination's commit, records it and loads nothing again;
- a master_sensor tick while the database refuses connections fails with a clear error and
  claims nothing; the next tick after the restart claims the row.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from deltalake import DeltaTable
from helpers import (
    add_control_row,
    claim_due,
    control_row,
    evaluate,
    history,
    lakebase_for,
    load_scripts,
)
from psycopg.rows import dict_row

from dagsters.assets.dataloader_pipes_asset import build_load_asset
from dagsters.local.embedded_lakebase import (
    ensure_database,
    start_embedded_server,
    stop_embedded_server,
)
from dagsters.local.migrate import apply_migrations
from dagsters.partitions import PARTITIONS_NAME
from dagsters.policy.run_requests import LOAD_ASSET, load_run_config
from dagsters.resources.lakebase import LakebaseResource
from dagsters.resources.pipes_databricks import PipesDatabricksResource
from dagsters.sensors.dataloader_master_sensor import build_master_sensor
from dagsters.settings import load_settings
from dagsters.utils.lakebase_client import LakebaseClient, LakebaseError

DEADLINE_SECONDS = 120


@dataclasses.dataclass
class ControlServer:
    pgdata: Path
    conninfo: str

    def stop(self) -> None:
        stop_embedded_server(self.pgdata)

    def start(self) -> None:
        start_embedded_server(self.pgdata, cleanup_mode="stop")


@pytest.fixture
def control() -> Iterator[ControlServer]:
    """A migrated control database on an embedded server of its own (so it can be stopped)."""
    top = Path(tempfile.mkdtemp(prefix="dataloader-test-outage-"))
    pgdata = top / "pgdata"
    server = start_embedded_server(pgdata, cleanup_mode="stop")
    ensure_database(server, "control")
    conninfo = server.conninfo("control")
    apply_migrations(conninfo)
    yield ControlServer(pgdata, conninfo)
    stop_embedded_server(pgdata)
    shutil.rmtree(top, ignore_errors=True)


def quick_lakebase(conninfo: str) -> LakebaseResource:
    """The test's lakebase resource, waiting at most 3 s for a connection (30 s by default)."""
    return LakebaseResource(**{**lakebase_for(conninfo).model_dump(), "pool_timeout_seconds": 3})


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def delta_version(path: Path) -> int:
    try:
        return DeltaTable(str(path)).version()
    except Exception:  # noqa: BLE001 - not a table yet
        return -1


def materialize(control: ControlServer, lake_root: Path, instance, key: str, *, bound: int):
    """What master_sensor + a run worker do: claim the due row, run its partition."""
    with LakebaseClient(control.conninfo) as client:
        [claimed] = [r for r in claim_due(client, 10) if r.control_key == key]
    instance.add_dynamic_partitions(PARTITIONS_NAME, [key])
    settings = dataclasses.replace(
        load_settings({"DATALOADER_LAKE_ROOT": str(lake_root)}), writeback_retry_seconds=bound
    )
    lakebase = quick_lakebase(control.conninfo)
    result = dg.materialize(
        [build_load_asset(settings)],
        partition_key=key,
        run_config=load_run_config(claimed),
        resources={
            "lakebase": lakebase,
            "pipes_databricks": PipesDatabricksResource.from_settings(
                settings, termination_grace_seconds=3
            ),
        },
        instance=instance,
        raise_on_error=False,
    )
    return result, claimed


@pytest.fixture
def slow_source(source):
    """public.orders behind a view whose every read sleeps public.delay.seconds (0 at first)."""
    source.execute("CREATE TABLE public.delay (seconds float8 NOT NULL)")
    source.execute("INSERT INTO public.delay VALUES (0)")
    source.execute(
        "CREATE VIEW public.slow_orders AS SELECT o.* FROM public.orders o"
        " WHERE (SELECT count(*) FROM pg_sleep((SELECT seconds FROM public.delay))) > 0"
    )
    return source


def destination_rows(lake_root: Path) -> tuple[int, int]:
    table = DeltaTable(str(lake_root / "lake" / "raw" / "slow_orders")).to_pyarrow_table()
    return table.num_rows, len(set(table.column("order_id").to_pylist()))


def first_load_then_new_rows(control, source_db, slow_source, lake_root, instance) -> None:
    with psycopg.connect(control.conninfo, autocommit=True, row_factory=dict_row) as db:
        add_control_row(db, source_db, "pg.slow", "slow_orders")
    result, _ = materialize(control, lake_root, instance, "pg.slow", bound=5)
    assert result.success
    slow_source.execute(
        "INSERT INTO public.orders SELECT g, g, timestamptz '2024-03-01' + g * interval '1 hour'"
        " FROM generate_series(26, 30) g"
    )
    slow_source.execute("UPDATE public.delay SET seconds = 2")
    with psycopg.connect(control.conninfo, autocommit=True) as db:
        db.execute(
            "UPDATE table_control SET last_status = NULLIF(last_status, 'Failed'),"
            " next_load_date_time = now()"
        )


def write_back_retried(instance) -> bool:
    """Has the running load logged that its write-back found the control database unreachable?"""
    [record] = instance.get_run_records(limit=1)
    return any(
        "control database unreachable" in (entry.user_message or "")
        for entry in instance.all_logs(record.dagster_run.run_id)
    )


def stop_during_load_then(
    control: ControlServer, destination: Path, instance, restart_after_commit: bool
):
    """Stop the control database once the load script runs; restart it after the commit landed
    and the asset's write-back found the database down at least once."""
    before = delta_version(destination)
    stopped = threading.Event()

    def run() -> None:
        wait_for(lambda: bool(load_scripts()), "the load script to start")
        control.stop()
        stopped.set()
        if restart_after_commit:
            wait_for(lambda: delta_version(destination) > before, "the Delta commit")
            wait_for(lambda: write_back_retried(instance), "a failed write-back")
            control.start()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, stopped


def test_a_commit_made_while_the_control_database_is_down_is_recorded_when_it_returns(
    control, source_db, slow_source, lake_root, instance
):
    first_load_then_new_rows(control, source_db, slow_source, lake_root, instance)
    destination = lake_root / "lake" / "raw" / "slow_orders"
    thread, stopped = stop_during_load_then(
        control, destination, instance, restart_after_commit=True
    )

    result, claimed = materialize(control, lake_root, instance, "pg.slow", bound=120)
    thread.join(timeout=DEADLINE_SECONDS)

    assert stopped.is_set()
    assert result.success
    assert destination_rows(lake_root) == (30, 30)  # exactly the source's rows
    with psycopg.connect(control.conninfo, autocommit=True, row_factory=dict_row) as db:
        row = control_row(db, "pg.slow")
        assert row["last_status"] == "Succeeded"
        assert row["incremental_value"].startswith("2024-03-02T06:00")
        _first, second = history(db, "pg.slow")
    assert (second["metadata_id"], second["status"]) == (claimed.metadata_id, "Succeeded")
    assert second["rows_written"] == 5
    assert write_back_retried(instance)  # the write-back did meet the outage


def test_a_commit_never_recorded_is_recorded_by_the_next_load_not_loaded_again(
    control, source_db, slow_source, lake_root, instance
):
    first_load_then_new_rows(control, source_db, slow_source, lake_root, instance)
    destination = lake_root / "lake" / "raw" / "slow_orders"
    thread, stopped = stop_during_load_then(
        control, destination, instance, restart_after_commit=False
    )

    result, lost = materialize(control, lake_root, instance, "pg.slow", bound=1)
    thread.join(timeout=DEADLINE_SECONDS)

    # The commit landed; its success could not be written: the row still says In Progress.
    assert stopped.is_set() and not result.success
    failure = result.failure_data_for_node(LOAD_ASSET).error.message
    assert "recorded by the row's next load, never loaded again" in failure
    assert destination_rows(lake_root) == (30, 30)
    control.start()
    with LakebaseClient(control.conninfo) as client:
        assert client.get_table_details("pg.slow").last_status == "In Progress"
        # What longrunning_monitor does once the run is known dead; then a person (or the retry
        # decision) makes the Failed row ready again: its schedule alone does not.
        assert client.fail_stuck_running(lost.config_id, lost.metadata_id, 0)
    with psycopg.connect(control.conninfo, autocommit=True) as db:
        db.execute(
            "UPDATE table_control SET last_status = NULLIF(last_status, 'Failed'),"
            " next_load_date_time = now()"
        )

    result, claimed = materialize(control, lake_root, instance, "pg.slow", bound=5)

    assert result.success
    assert destination_rows(lake_root) == (30, 30)  # not appended a second time
    with psycopg.connect(control.conninfo, autocommit=True, row_factory=dict_row) as db:
        row = control_row(db, "pg.slow")
        _, earlier, now = history(db, "pg.slow")
    assert row["last_status"] == "Succeeded"
    assert row["incremental_value"].startswith("2024-03-02T06:00")
    assert f"attempt {lost.metadata_id} had committed" in row["last_message"]
    assert (now["metadata_id"], now["status"], now["rows_written"]) == (
        claimed.metadata_id,
        "Succeeded",
        0,
    )
    assert earlier["status"] == "Succeeded"
    assert "success recorded late" in earlier["message"]

    # The next load appends only what is new since the recorded watermark.
    slow_source.execute("UPDATE public.delay SET seconds = 0")
    slow_source.execute("INSERT INTO public.orders VALUES (31, 1, '2024-04-01')")
    with psycopg.connect(control.conninfo, autocommit=True) as db:
        db.execute(
            "UPDATE table_control SET last_status = NULLIF(last_status, 'Failed'),"
            " next_load_date_time = now()"
        )
    result, _ = materialize(control, lake_root, instance, "pg.slow", bound=5)
    assert result.success
    assert destination_rows(lake_root) == (31, 31)


def test_a_sensor_tick_while_the_control_database_is_down_claims_nothing(control, instance):
    with psycopg.connect(control.conninfo, autocommit=True, row_factory=dict_row) as db:
        add_control_row(db, "host=db1.internal port=5432 dbname=shop user=u", "pg.orders", "orders")
    sensor = build_master_sensor(load_settings({}))
    lakebase = quick_lakebase(control.conninfo)

    control.stop()
    with pytest.raises(LakebaseError, match="control database|connection"):
        evaluate(sensor, instance, {"lakebase": lakebase})
    control.start()

    # Ticks go on as the daemon runs them; until the pool has reconnected a tick may still fail,
    # and a failed tick never leaves a partial claim behind.
    deadline = time.monotonic() + DEADLINE_SECONDS
    while True:
        with psycopg.connect(control.conninfo, autocommit=True, row_factory=dict_row) as db:
            assert control_row(db, "pg.orders")["last_status"] is None
            assert history(db, "pg.orders") == []
        try:
            result = evaluate(sensor, instance, {"lakebase": lakebase})
            break
        except LakebaseError:
            assert time.monotonic() < deadline, "no tick succeeded after the restart"
    assert [r.partition_key for r in result.run_requests] == ["pg.orders"]
