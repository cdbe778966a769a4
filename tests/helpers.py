"""Helpers shared by the test modules: control rows, history rows, sensor ticks, a Lakebase resource.

Test modules import builders from here (or use fixtures from conftest.py), never from each other.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import dagster as dg
import psutil
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import Jsonb

from dagsters.control.rows import ClaimedRow, ControlRow, fetch_one
from dagsters.control.source_slots import SourceSlotsSql
from dagsters.control.table_listing import DeclaredTable, TableListingSql
from dagsters.local.embedded_lakebase import (
    EmbeddedServer,
    ensure_database,
    start_embedded_server,
)
from dagsters.partitions import PARTITIONS_NAME
from dagsters.resources.databricks_workspace import DatabricksWorkspaceResource
from dagsters.resources.lakebase import LakebaseResource

# db_config_value of rows no test loads from: well-formed, never connected to.
SOME_SOURCE = {"host": "db1.internal", "port": 5432, "database": "shop"}

# The retry advisor's settings: every DATALOADER_AI_* variable (databricks_scripts.script_env reads
# them by this prefix) and what the openai client reads by itself.
AI_ENV_PREFIX = "DATALOADER_AI_"
OPENAI_ENV = ("OPENAI_API_KEY", "OPENAI_BASE_URL")

# A per-source limit no test's rows reach: for tests that claim due rows but are not about slots.
NO_SOURCE_LIMIT = 1_000_000


def clear_ai_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset every AI setting, so no developer's own model is asked and the rules decide.

    Pipes scripts inherit this environment, so this also holds for the retry script.
    """
    for name in list(os.environ):
        if name.startswith(AI_ENV_PREFIX) or name in OPENAI_ENV:
            monkeypatch.delenv(name, raising=False)


def claim_due(client: SourceSlotsSql, batch_size: int) -> list[ClaimedRow]:
    """Claim up to ``batch_size`` due rows with master_sensor's statement
    (``claim_due_tables_within_source_limit``), the per-source limit out of the way."""
    return client.claim_due_tables_within_source_limit(batch_size, NO_SOURCE_LIMIT)


def lakebase_for(conninfo: str) -> LakebaseResource:
    """A LakebaseResource pointing at the embedded server database ``conninfo`` names."""
    parts = conninfo_to_dict(conninfo)
    return LakebaseResource(
        host=parts["host"],
        port=int(parts["port"]),
        database=parts["dbname"],
        user=parts["user"],
        sslmode="disable",
    )


def pg_config(conninfo: str) -> dict[str, Any]:
    """db_config_value for a postgres source on the embedded server (trust auth: no password)."""
    parts = conninfo_to_dict(conninfo)
    return {
        "host": parts["host"],
        "port": int(parts["port"]),
        "database": parts["dbname"],
        "user": parts["user"],
    }


def insert_control_row(db: psycopg.Connection, values: dict[str, Any]) -> int:
    """INSERT one table_control row from column -> value; its config_id (db yields dict rows)."""
    names = ", ".join(values)
    marks = ", ".join(["%s"] * len(values))
    return db.execute(
        f"INSERT INTO table_control ({names}) VALUES ({marks}) RETURNING config_id",
        list(values.values()),
    ).fetchone()["config_id"]


def add_row(db: psycopg.Connection, key: str, **columns) -> int:
    """A full-load row for public.<key> of SOME_SOURCE (never loaded from); its config_id."""
    values = {
        "control_key": key,
        "source_schema_name": "public",
        "source_table_name": key,
        "destination_catalog": "lake",
        "destination_schema_name": "raw",
        "destination_table_name": key,
        "db_type": "postgresql",
        "db_config_value": Jsonb(SOME_SOURCE),
        "load_strategy": "full",
    }
    values.update(columns)
    return insert_control_row(db, values)


def add_control_row(db: psycopg.Connection, source_db: str, key: str, table: str, **columns) -> int:
    """An hourly incremental postgres row loading public.<table> of ``source_db`` into lake.raw."""
    values = {
        "control_key": key,
        "source_schema_name": "public",
        "source_table_name": table,
        "destination_catalog": "lake",
        "destination_schema_name": "raw",
        "destination_table_name": table,
        "db_type": "postgresql",
        "db_config_value": Jsonb(pg_config(source_db)),
        "load_strategy": "incremental",
        "incremental_column": "updated_at",
        "schedule_interval": "1 hour",
    }
    values.update(columns)
    return insert_control_row(db, values)


def add_history(db: psycopg.Connection, config_id: int, key: str, status: str) -> int:
    """A history row made the row's latest attempt (last_metadata_id); its metadata_id."""
    metadata_id = db.execute(
        "INSERT INTO historical_metadata (config_id, control_key, status) VALUES (%s, %s, %s)"
        " RETURNING metadata_id",
        (config_id, key, status),
    ).fetchone()["metadata_id"]
    db.execute(
        "UPDATE table_control SET last_metadata_id = %s WHERE config_id = %s",
        (metadata_id, config_id),
    )
    return metadata_id


def control_row(db: psycopg.Connection, key: str) -> dict:
    return db.execute("SELECT * FROM table_control WHERE control_key = %s", (key,)).fetchone()


def typed_control_row(db: psycopg.Connection, key: str) -> ControlRow:
    """The row as the code reads it (``ControlRow``); ``control_row`` is the plain dict."""
    row = fetch_one(db, ControlRow, "SELECT * FROM table_control WHERE control_key = %s", (key,))
    assert row is not None, key
    return row


def declared_table(conninfo: str, key: str) -> DeclaredTable:
    """The active row ``key`` as the declared table assets read it (``active_tables``)."""
    listing = TableListingSql(conninfo)
    try:
        [row] = [r for r in listing.active_tables(10_000) if r.control_key == key]
    finally:
        listing.close()
    return row


# A row's values where a test names none: the table's defaults (sql/001 and the migrations) and a
# placeholder table. Every column of ControlRow has one, so a test names only what it is about.
_ROW_DEFAULTS: dict[str, Any] = {
    "config_id": 1,
    "control_key": "demo.orders",
    "source_catalog": None,
    "source_schema_name": "public",
    "source_table_name": "orders",
    "destination_catalog": "main",
    "destination_schema_name": "bronze",
    "destination_table_name": "orders",
    "db_type": "postgresql",
    "db_config_value": {},
    "db_kv_scope": None,
    "load_strategy": "full",
    "incremental_column": None,
    "incremental_value": None,
    "merge_keys": None,
    "lookback_window": timedelta(0),
    "is_active": True,
    "schedule_cron": None,
    "schedule_timezone": "UTC",
    "schedule_interval": None,
    "next_load_date_time": None,
    "force_full_reload": False,
    "last_status": None,
    "last_status_date_time": None,
    "last_load_date_time": None,
    "last_dagster_run": None,
    "last_databricks_run": None,
    "last_message": None,
    "last_metadata_id": None,
    "retry_count": 0,
    "needs_review": False,
    "retry_analysis_requested_at": None,
    "staging_model_processed": False,
    "created_at": datetime(2024, 1, 1, tzinfo=UTC),
    "updated_at": datetime(2024, 1, 1, tzinfo=UTC),
    "connection_name": None,
    "delete_detection": "none",
    "delete_max_fraction": Decimal("0.5"),
    "jdbc_partition_column": None,
    "jdbc_num_partitions": None,
    "verify_depth": "counts",
    "last_failure_kind": None,
    "last_failure_code": None,
    "columns_exclude": None,
    "columns_hash": None,
    "schema_change": "evolve",
}


def make_row(**values: Any) -> ControlRow:
    """A ``ControlRow`` without a database: the given columns, the table's defaults otherwise."""
    return ControlRow(**{**_ROW_DEFAULTS, **values})


def make_declared(**values: Any) -> DeclaredTable:
    """A declared table (``active_tables``' read) without a database: ``make_row``'s defaults."""
    names = {f.name for f in dataclasses.fields(DeclaredTable)}
    defaults = {k: v for k, v in _ROW_DEFAULTS.items() if k in names}
    return DeclaredTable(**{**defaults, "source_host": None, "source_database": None, **values})


def make_claimed(metadata_id: int, **values: Any) -> ClaimedRow:
    """A claimed row (``make_row``) with its attempt's ``metadata_id``."""
    return ClaimedRow.of(make_row(**values), metadata_id)


def history(db: psycopg.Connection, key: str) -> list[dict]:
    return db.execute(
        "SELECT * FROM historical_metadata WHERE control_key = %s ORDER BY metadata_id", (key,)
    ).fetchall()


def failed_row(
    db: psycopg.Connection,
    key: str,
    message: str,
    *,
    retry_count: int = 0,
    kind: str | None = None,
) -> int:
    """A control row whose latest attempt failed with ``message`` and the failure's ``kind``
    (None: a foreign error), as record_failure leaves it.

    Returns the failed history row's metadata_id.
    """
    config_id = db.execute(
        "INSERT INTO table_control (control_key, source_schema_name, source_table_name,"
        " destination_catalog, destination_schema_name, destination_table_name, db_type,"
        " db_config_value, last_status, last_status_date_time, last_message, retry_count,"
        " last_failure_kind) VALUES (%s, 'public', %s, 'lake', 'raw', %s, 'postgresql', %s, 'Failed',"
        " now(), %s, %s, %s) RETURNING config_id",
        (key, key, key, Jsonb(SOME_SOURCE), message, retry_count, kind),
    ).fetchone()["config_id"]
    metadata_id = db.execute(
        "INSERT INTO historical_metadata (config_id, control_key, status, message, ended_at,"
        " failure_kind) VALUES (%s, %s, 'Failed', %s, now(), %s) RETURNING metadata_id",
        (config_id, key, message, kind),
    ).fetchone()["metadata_id"]
    db.execute(
        "UPDATE table_control SET last_metadata_id = %s WHERE config_id = %s",
        (metadata_id, config_id),
    )
    return metadata_id


def failed_under_analysis(
    db: psycopg.Connection, key: str, requested_minutes_ago: int | None, **columns
) -> tuple[int, int]:
    """A Failed row (add_row) whose retry analysis was requested that long ago (None: never).

    Returns (config_id, metadata_id of the failed attempt).
    """
    config_id = add_row(db, key, **columns)
    metadata_id = add_history(db, config_id, key, "Failed")
    db.execute(
        "UPDATE table_control SET last_status = 'Failed', last_status_date_time = now(),"
        " retry_analysis_requested_at = now() - make_interval(mins => %s) WHERE config_id = %s",
        (requested_minutes_ago, config_id),
    )
    return config_id, metadata_id


def read_failed_row(message: str, retry_count: int = 1) -> ControlRow:
    """A Failed table_control row as LakebaseClient.get_table_details returns it (no database).

    Its db_config_value and db_kv_scope hold connection details no analysis request may carry.
    """
    return make_row(
        config_id=7,
        control_key="sales.orders",
        db_config_value={"host": "pg-prod", "user": "loader", "password_secret": "pg_pw"},
        db_kv_scope="jdbc",
        retry_count=retry_count,
        last_status="Failed",
        last_message=message,
        last_metadata_id=41,
    )


def sensor_resources(
    control_db: str, workspace: DatabricksWorkspaceResource | None = None
) -> dict[str, Any]:
    """What the code location gives its sensors: ``lakebase`` on ``control_db`` and the
    ``databricks_workspace`` (``workspace``, else one whose host the SDK resolves itself)."""
    return {
        "lakebase": lakebase_for(control_db),
        "databricks_workspace": workspace or DatabricksWorkspaceResource(),
    }


def tick(
    sensor: dg.SensorDefinition,
    instance: dg.DagsterInstance,
    control_db: str,
    cursor=None,
    workspace: DatabricksWorkspaceResource | None = None,
):
    """One evaluation of ``sensor`` against ``control_db``; what it returned."""
    return evaluate(sensor, instance, sensor_resources(control_db, workspace), cursor=cursor)


def evaluate(
    sensor: dg.SensorDefinition,
    instance: dg.DagsterInstance,
    resources: dict[str, Any],
    cursor: str | None = None,
):
    """One evaluation of ``sensor`` with ``resources``, inside its context as the daemon runs it:
    a resource holding another (``lakebase`` holds the ``databricks_workspace`` its OAuth login
    mints through) is set up and torn down by Dagster like a context manager."""
    with dg.build_sensor_context(instance=instance, resources=resources, cursor=cursor) as context:
        return sensor(context)


class SensorLoop:
    """Ticks a sensor like the daemon does: the cursor carries over, partition requests apply."""

    def __init__(self, sensor: dg.SensorDefinition, instance: dg.DagsterInstance, conninfo: str):
        self.sensor, self.instance, self.conninfo = sensor, instance, conninfo
        self.cursor: str | None = None

    def tick(self):
        with dg.build_sensor_context(
            instance=self.instance,
            resources=sensor_resources(self.conninfo),
            cursor=self.cursor,
        ) as context:
            result = self.sensor(context)
        self.cursor = context.cursor
        for request in getattr(result, "dynamic_partitions_requests", None) or []:
            if isinstance(request, dg.AddDynamicPartitionsRequest):
                self.instance.add_dynamic_partitions(PARTITIONS_NAME, request.partition_keys)
            else:
                for key in request.partition_keys:
                    self.instance.delete_dynamic_partition(PARTITIONS_NAME, key)
        return result


def start_password_enforcing_server(
    pgdata: Path, role: str, database: str, *, superuser: bool = False
) -> EmbeddedServer:
    """A separate embedded server where ``role`` must log in with its scram password.

    The embedded server initialises with trust auth; an hba line for ``role`` placed first makes PostgreSQL
    check that role's password only, so a wrong or stale password really is refused.
    """
    server = start_embedded_server(pgdata, cleanup_mode="stop")
    hba = Path(server.socket_dir) / "pg_hba.conf"
    if not hba.exists():
        hba = pgdata / "pg_hba.conf"
    hba.write_text(f"local all {role} scram-sha-256\n" + hba.read_text())
    ensure_database(server, database)
    create = "CREATE ROLE {} LOGIN SUPERUSER" if superuser else "CREATE ROLE {} LOGIN"
    with psycopg.connect(server.conninfo("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL(create).format(sql.Identifier(role)))
        conn.execute("SELECT pg_reload_conf()")
    return server


# -- `dataloader dev` as a person starts it (the two end-to-end test files) ----------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def embedded_conninfo(home: Path) -> str | None:
    """The control database of the embedded server a ``dataloader dev`` in ``home`` started, or
    None while it is not up yet."""
    # postmaster.pid: line 4 is the port, line 5 the socket directory.
    pid_file = home / "pgdata" / "postmaster.pid"
    if not pid_file.exists():
        return None
    lines = pid_file.read_text().splitlines()
    if len(lines) < 5 or not lines[4].strip():
        return None
    return psycopg.conninfo.make_conninfo(
        host=lines[4].strip(), port=lines[3].strip(), dbname="dataloader", user="postgres"
    )


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (from /proc), children first."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat_line = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat_line.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@contextmanager
def running_dev(
    tmp_path: Path, settings: dict[str, str], *, drop: tuple[str, ...] = ()
) -> Iterator[tuple[Path, subprocess.Popen, Path]]:
    """``dataloader dev`` in its own home and process group, with ``settings`` on top of this
    process's environment (minus LAKEBASE_*/DAGSTER_* and the ``drop`` prefixes); yields
    (home, process, log) and stops the whole group afterwards."""
    home = tmp_path / "home"
    home.mkdir()
    log = tmp_path / "dev.log"
    env = {
        **{
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("LAKEBASE_", "DAGSTER_", *drop))
        },
        "DATALOADER_HOME": str(home),
        "DATALOADER_LAKE_ROOT": str(home / "lake"),
        "DATALOADER_PORT": str(free_port()),
        **settings,
    }
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "dagsters.local.cli", "dev"],
            cwd=Path(__file__).resolve().parents[1],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped as one below
        )
    try:
        yield home, process, log
    finally:
        # dagster dev runs in a process group of its own (the CLI passes each stop on once):
        # whatever of it is left after the stop below is killed by pid.
        tree = descendants(process.pid)
        for sig, grace in ((signal.SIGINT, 30), (signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            if process.poll() is not None:
                break
            os.killpg(process.pid, sig)
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                continue
        # Anything left in the group (webserver, daemon, code server) goes too.
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for pid in tree:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def fresh_code_location_job(job_name: str):
    """``job_name`` of the code location imported afresh in this environment, as a run worker does.

    The load and retry jobs run their step in the run's own process (the in-process executor),
    so ``dg.execute_job`` here runs the step in the pytest process. Another test may already have
    imported ``dagsters.definitions`` (whose ``defs`` are built from the environment at import)
    under other ``LAKEBASE_*`` settings, and Dagster keeps the last reconstructed job in a cache
    of its own; a run worker has neither, so both are dropped before the job is reconstructed.
    """
    from dagster._core.definitions.reconstruct import ReconstructableJob, ReconstructableRepository

    sys.modules.pop("dagsters.definitions", None)
    ReconstructableJob.get_definition.cache_clear()
    ReconstructableJob.get_repository_definition.cache_clear()
    return ReconstructableRepository.for_module(
        "dagsters.definitions", "defs", working_directory=str(Path(__file__).parents[1])
    ).get_reconstructable_job(job_name)


def load_scripts(parent: int | None = None) -> list[psutil.Process]:
    """The running Pipes load scripts under ``parent`` (this process by default). A child that
    exits between the listing and the look, or one not reaped yet (a zombie), has no command line:
    it is skipped, so a poller never dies of it."""
    found = []
    for child in psutil.Process(parent).children(recursive=True):
        try:
            if any("dataloader_pipe.py" in part for part in child.cmdline()):
                found.append(child)
        except psutil.Error:
            continue
    return found


def fail_stuck_queued(client: Any, minutes: int = 60) -> list[Any]:
    """The one production path for rows stuck in Queued (longqueued_monitor's): find them, then
    fail each attempt that is still Queued past the threshold; the rows this call failed, as they
    read afterwards."""
    failed = [
        row.config_id
        for row in client.find_stuck_queued(minutes)
        if client.fail_stuck_queued_attempt(row.config_id, row.last_metadata_id, minutes)
    ]
    return [client.get_table_by_id(config_id) for config_id in failed]
