"""Sensor tick cost at 100,000 control rows: milliseconds and SQL statements per tick.

Fills ``table_control`` on the project's embedded PostgreSQL with 100,000 rows (10 due), then
times ticks of the real sensors (``build_sensor_context`` + the sensor function, Lakebase client
included) and counts the SQL statements each tick sent, with a psycopg cursor class that counts
``execute`` calls. The pool's connection check (an empty query) is counted apart.

    .venv/bin/python bench/bench_sensor_tick.py [--rows 100000] [--iterations 30]

Target (issue 4): master_sensor <= 50 ms per tick, statements constant whatever the batch size.
master_sensor's steady-state ticks run with a cursor in step with table_control's key version
(every row already a partition); one extra line times the tick that compares the two 100k key sets
(what happens after keys were added or removed, and once an hour).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import dagster as dg
import psycopg
from psycopg import sql

from dagsters.local.embedded_lakebase import (
    ensure_database,
    start_embedded_server,
    stop_embedded_server,
)
from dagsters.local.migrate import apply_migrations
from dagsters.partitions import PARTITIONS_NAME
from dagsters.resources.lakebase import LakebaseResource
from dagsters.sensors.dataloader_failed_monitor import build_failed_monitor
from dagsters.sensors.dataloader_landing_table_monitor import (
    build_landing_table_monitor,
)
from dagsters.sensors.dataloader_longqueued_monitor import build_longqueued_monitor
from dagsters.sensors.dataloader_longrunning_monitor import (
    build_longrunning_monitor,
)
from dagsters.sensors.dataloader_master_sensor import build_master_sensor
from dagsters.settings import Settings
from dagsters.utils.lakebase_client import LakebaseClient

WORK = ROOT / "bench" / ".work"
DATABASE = "bench_sensor_tick"


class _Counter:
    lock = threading.Lock()
    statements = 0
    checks = 0

    @classmethod
    def reset(cls) -> None:
        with cls.lock:
            cls.statements = cls.checks = 0


class CountingCursor(psycopg.Cursor):
    """Counts every statement sent through a cursor (Connection.execute uses one too)."""

    def execute(self, query, params=None, **kwargs):  # type: ignore[override]
        with _Counter.lock:
            if query == "":
                _Counter.checks += 1  # psycopg_pool's connection check
            else:
                _Counter.statements += 1
        return super().execute(query, params, **kwargs)


class BenchLakebase(LakebaseResource):
    """The real resource, handing out one client whose cursors count statements."""

    def get_client(self) -> LakebaseClient:
        return _CLIENT[0]


_CLIENT: list[LakebaseClient] = []


def fill(conn: psycopg.Connection, rows: int, due: int) -> None:
    conn.execute("TRUNCATE historical_metadata, table_control RESTART IDENTITY CASCADE")
    conn.execute(
        """
        INSERT INTO table_control (control_key, source_schema_name, source_table_name,
            destination_catalog, destination_schema_name, destination_table_name, db_type,
            db_config_value, load_strategy, schedule_interval, next_load_date_time,
            last_status, last_status_date_time, last_load_date_time, staging_model_processed)
        SELECT 'bench.t' || g, 'public', 't' || g, 'lake', 'raw', 't' || g, 'postgresql',
            jsonb_build_object('host', 'src' || (g %% 50), 'port', 5432, 'database', 'db'),
            'full', interval '1 day', now() + interval '1 hour' + g * interval '1 second',
            'Succeeded', now() - interval '1 hour', now() - interval '1 hour', true
        FROM generate_series(1, %s) g
        """,
        (rows,),
    )
    reset_due(conn, due)
    conn.execute("ANALYZE table_control")
    conn.execute("ANALYZE historical_metadata")


def reset_due(conn: psycopg.Connection, due: int) -> None:
    conn.execute("DELETE FROM historical_metadata")
    conn.execute(
        "UPDATE table_control SET last_status = NULL, last_metadata_id = NULL,"
        " next_load_date_time = now() - interval '1 minute' WHERE config_id <= %s",
        (due,),
    )


def stage(conn: psycopg.Connection, status: str, extra: str, count: int = 10) -> None:
    """Put ``count`` rows (ids 1001..) in a state a monitor acts on, each with a history row."""
    conn.execute("DELETE FROM historical_metadata")
    conn.execute(
        "UPDATE table_control SET last_status = 'Succeeded', staging_model_processed = true,"
        " needs_review = false, retry_analysis_requested_at = NULL, retry_count = 0,"
        " last_metadata_id = NULL WHERE config_id BETWEEN 1001 AND 1100"
    )
    conn.execute(
        "WITH h AS (INSERT INTO historical_metadata (config_id, control_key, status)"
        " SELECT config_id, control_key, %s FROM table_control"
        " WHERE config_id BETWEEN 1001 AND %s RETURNING config_id, metadata_id)"
        " UPDATE table_control t SET last_metadata_id = h.metadata_id FROM h"
        " WHERE t.config_id = h.config_id",
        (status if status in ("Queued", "In Progress", "Failed") else "Succeeded", 1000 + count),
    )
    conn.execute(
        sql.SQL(
            "UPDATE table_control SET last_status = %s, {} WHERE config_id BETWEEN 1001 AND %s"
        ).format(sql.SQL(extra)),
        (status, 1000 + count),
    )


def measure(
    name: str,
    tick: Callable[[], object],
    prepare: Callable[[], None],
    iterations: int,
) -> dict:
    times, statements, checks = [], set(), set()
    tick_result = None
    for _ in range(iterations):
        prepare()
        _Counter.reset()
        started = time.perf_counter()
        tick_result = tick()
        times.append((time.perf_counter() - started) * 1000)
        statements.add(_Counter.statements)
        checks.add(_Counter.checks)
    times.sort()
    summary = {
        "tick": name,
        "median_ms": round(statistics.median(times), 2),
        "p95_ms": round(times[max(0, int(len(times) * 0.95) - 1)], 2),
        "statements": sorted(statements),
        "pool_checks": sorted(checks),
        "result": _describe(tick_result),
    }
    print(
        f"{name:<44} median {summary['median_ms']:>7.2f} ms  p95 {summary['p95_ms']:>7.2f} ms"
        f"  statements {summary['statements']}  pool checks {summary['pool_checks']}"
        f"  -> {summary['result']}",
        flush=True,
    )
    return summary


def _describe(result: object) -> str:
    if isinstance(result, dg.SkipReason):
        return f"skip: {result.skip_message[:60]}"
    if isinstance(result, dg.SensorResult):
        return f"{len(result.run_requests or [])} run request(s)"
    if isinstance(result, dg.RunRequest):
        return "1 run request"
    return type(result).__name__


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--iterations", type=int, default=30)
    args = parser.parse_args()

    pgdata = WORK / "pgdata"
    server = start_embedded_server(pgdata)
    try:
        ensure_database(server, DATABASE)
        conninfo = server.conninfo(DATABASE)
        apply_migrations(conninfo)
        _CLIENT.append(LakebaseClient(conninfo, connect_kwargs={"cursor_factory": CountingCursor}))
        resource = BenchLakebase()
        with psycopg.connect(conninfo, autocommit=True) as admin, dg.instance_for_test() as inst:
            print(f"filling table_control with {args.rows:,} rows ...", flush=True)
            fill(admin, args.rows, due=10)
            # Steady state: every row is a partition already and the cursor knows the key version.
            started = time.perf_counter()
            inst.add_dynamic_partitions(
                PARTITIONS_NAME, [f"bench.t{i}" for i in range(1, args.rows + 1)]
            )
            print(
                f"added {args.rows:,} partitions to the test instance in "
                f"{time.perf_counter() - started:.1f} s",
                flush=True,
            )
            version = _CLIENT[0].control_keys_version()
            in_step = json.dumps({"keys_version": version, "synced_at": time.time()})
            keys_moved = json.dumps({"keys_version": version - 1, "synced_at": time.time()})

            def ticker(
                sensor: dg.SensorDefinition, cursor: str | None = None
            ) -> Callable[[], object]:
                return lambda: sensor(
                    dg.build_sensor_context(
                        instance=inst, resources={"lakebase": resource}, cursor=cursor
                    )
                )

            settings = Settings()
            results = [
                measure(
                    "master_sensor (10 due, batch 10)",
                    ticker(build_master_sensor(settings), in_step),
                    lambda: reset_due(admin, 10),
                    args.iterations,
                ),
                measure(
                    "master_sensor (100 due, batch 100)",
                    ticker(build_master_sensor(Settings(master_batch_size=100)), in_step),
                    lambda: reset_due(admin, 100),
                    args.iterations,
                ),
                measure(
                    "master_sensor (idle)",
                    ticker(build_master_sensor(settings), in_step),
                    lambda: reset_due(admin, 0),
                    args.iterations,
                ),
                # Keys added/removed since the cursor (or the hourly check): both 100k key sets
                # are read and compared; nothing differs here, so no partition request.
                measure(
                    "master_sensor (10 due, key sets compared)",
                    ticker(build_master_sensor(settings), keys_moved),
                    lambda: reset_due(admin, 10),
                    max(3, args.iterations // 3),
                ),
                measure(
                    "longqueued_monitor (10 stuck)",
                    ticker(build_longqueued_monitor(settings)),
                    lambda: stage(
                        admin, "Queued", "last_status_date_time = now() - interval '2 hours'"
                    ),
                    args.iterations,
                ),
                measure(
                    "longrunning_monitor (10 stuck, runs gone)",
                    ticker(build_longrunning_monitor(settings)),
                    lambda: stage(
                        admin,
                        "In Progress",
                        "last_load_date_time = now() - interval '4 hours',"
                        " last_dagster_run = 'http://127.0.0.1:3000/runs/gone'",
                    ),
                    args.iterations,
                ),
                measure(
                    "failed_monitor (10 failures)",
                    ticker(build_failed_monitor(settings)),
                    lambda: stage(
                        admin, "Failed", "last_status_date_time = now(), last_message = 'reset'"
                    ),
                    args.iterations,
                ),
                measure(
                    "landing_table_monitor (10 new tables)",
                    ticker(build_landing_table_monitor(settings)),
                    lambda: stage(admin, "Succeeded", "staging_model_processed = false"),
                    args.iterations,
                ),
            ]
        master = results[0]
        ok = master["median_ms"] <= 50 and results[0]["statements"] == results[1]["statements"]
        print(
            f"\nmaster_sensor target (<= 50 ms, same statements for batch 10 and 100): "
            f"{'met' if ok else 'NOT met'}"
        )
        _CLIENT[0].close()
        return 0
    finally:
        stop_embedded_server(pgdata)


if __name__ == "__main__":
    sys.exit(main())
