"""The queue timeout does not fight the per-source limit.

master_sensor claims a row only when its source system has a free slot, so 50 tables of one source
behind a limit of 2 load one pair after another and none is failed for waiting; longqueued_monitor
cancels a really stuck queued run (Dagster and Databricks) before failing its row, and the failure
reads as transient to retry analysis.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from dagster._core.remote_origin import (
    InProcessCodeLocationOrigin,
    RemoteJobOrigin,
    RemoteRepositoryOrigin,
)
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from databricks.sdk.service.jobs import SubmitTask
from databricks_standin import CLUSTER, DatabricksStandin, databricks_standin  # noqa: F401
from helpers import (
    SOME_SOURCE,
    add_history,
    claim_due,
    control_row,
    evaluate,
    insert_control_row,
    make_row,
    sensor_resources,
)
from psycopg import sql
from psycopg.types.json import Jsonb

from dagsters.control.rows import ControlRow, fetch_all
from dagsters.control.source_slots import SOURCE_SYSTEM_SQL
from dagsters.policy.run_requests import (
    TAG_CONTROL_KEY,
    TAG_METADATA_ID,
    TAG_SOURCE_SYSTEM,
    source_system,
)
from dagsters.sensors.dataloader_longqueued_monitor import (
    build_longqueued_monitor,
    databricks_run_id,
)
from dagsters.sensors.dataloader_master_sensor import LOAD_JOB, build_master_sensor
from dagsters.settings import Settings
from dagsters.utils.lakebase_client import LakebaseClient
from databricks_scripts.contract import LoadReport
from databricks_scripts.retry.classifier import TRANSIENT, classify_error

OTHER_SOURCE = {"host": "db2.internal", "port": 5432, "database": "crm"}
STEP_MINUTES = 10  # one simulated step: a load takes this long; monitors and sensor tick once


# Queued runs need an origin (the run coordinator cancels them without a code server).
ORIGIN = RemoteJobOrigin(
    repository_origin=RemoteRepositoryOrigin(
        code_location_origin=InProcessCodeLocationOrigin(
            loadable_target_origin=LoadableTargetOrigin(module_name="dagsters.definitions")
        ),
        repository_name="__repository__",
    ),
    job_name=LOAD_JOB,
)


def add_row(conn: psycopg.Connection, key: str, source: dict = SOME_SOURCE, **columns) -> int:
    values = {
        "control_key": key,
        "source_schema_name": "public",
        "source_table_name": key,
        "destination_catalog": "lake",
        "destination_schema_name": "raw",
        "destination_table_name": key,
        "db_type": "postgresql",
        "db_config_value": Jsonb(source),
        "load_strategy": "full",
        **columns,
    }
    return insert_control_row(conn, values)


def tick(sensor: dg.SensorDefinition, instance: dg.DagsterInstance, control_db: str):
    return evaluate(sensor, instance, sensor_resources(control_db))


def test_the_sql_source_system_is_the_run_tag(db):
    configs = {
        "plain": ("postgresql", SOME_SOURCE),
        "no_port": ("mysql", {"host": "maria.internal", "database": "x"}),
        "odd_host": ("sqlserver", {"host": "sql server/01:x", "port": "1433", "database": "d"}),
        "hostname": ("databricks", {"server_hostname": "adb-1.azuredatabricks.net"}),
        "empty_host": ("oracle", {"host": "", "port": 1521, "service_name": "ORCL"}),
        "long": ("postgresql", {"host": "h" * 300, "port": 5432, "database": "d"}),
    }
    for key, (db_type, config) in configs.items():
        extra = {"source_catalog": "c"} if db_type == "databricks" else {}
        add_row(db, key, config, db_type=db_type, **extra)
    # A row naming a source connection: the connection is the source system.
    db.execute(
        "INSERT INTO source_connection (connection_name, db_type, host, port, database)"
        " VALUES ('erp-pg.main', 'postgresql', 'erp.internal', 5432, 'erp')"
    )
    add_row(db, "by_connection", {}, connection_name="erp-pg.main")
    query = psycopg.sql.SQL(
        "SELECT t.*, {src} AS sql_source FROM table_control t ORDER BY config_id"
    ).format(src=SOURCE_SYSTEM_SQL)
    rows = db.execute(query).fetchall()
    typed = fetch_all(db, ControlRow, query)  # the same rows as the code reads them
    assert len(rows) == len(typed) == len(configs) + 1
    for row, control in zip(rows, typed, strict=True):
        assert row["sql_source"] == source_system(control), row["control_key"]
    assert {r["control_key"]: r["sql_source"] for r in rows}["by_connection"] == (
        "connection_erp-pg.main"
    )


def test_claims_fill_only_the_free_slots_of_each_source(control_db, db, instance):
    for i in range(5):
        add_row(db, f"a{i}")
    for i in range(3):
        add_row(db, f"b{i}", OTHER_SOURCE)
    # A person's rerun of a0 already holds one of source a's two slots.
    with LakebaseClient(control_db) as client:
        client.queue_manual_load("a0")

    result = tick(build_master_sensor(Settings(source_concurrency=2)), instance, control_db)

    assert sorted(r.partition_key for r in result.run_requests) == ["a1", "b0", "b1"]
    # Nothing is free any more: the next tick claims nothing and says so.
    again = tick(build_master_sensor(Settings(source_concurrency=2)), instance, control_db)
    assert isinstance(again, dg.SensorResult | dg.SkipReason)
    assert not getattr(again, "run_requests", None)
    # What holds a slot now: the Queued and In Progress rows of each source system.
    in_flight = db.execute(
        sql.SQL(
            "SELECT {src} AS src, count(*) AS n FROM table_control t"
            " WHERE t.last_status IN ('Queued', 'In Progress') GROUP BY 1"
        ).format(src=SOURCE_SYSTEM_SQL)
    ).fetchall()
    assert {r["src"]: r["n"] for r in in_flight} == {
        source_system(make_row(db_config_value=SOME_SOURCE)): 2,
        source_system(make_row(db_config_value=OTHER_SOURCE)): 2,
    }
    # The rows not claimed stay due and unclaimed in table_control: nothing is lost.
    for key in ("a2", "a3", "a4", "b2"):
        assert control_row(db, key)["last_status"] is None


class RunQueue:
    """Dagster's queued run coordinator with a tag limit, on a real instance's run storage.

    Requested runs are added QUEUED; at most ``limit`` runs per ``dataloader/source_system`` value
    start (applyLimitPerUniqueValue), oldest first. A started run does what the load asset does to
    the control row (start, then succeed one step later) through the real client.
    """

    def __init__(self, instance: dg.DagsterInstance, client: LakebaseClient, limit: int):
        self.instance, self.client, self.limit = instance, client, limit
        self.running: dict[str, dict] = {}  # run_id -> run config of the attempt
        self.max_in_flight_per_source = 0

    def submit(self, requests) -> None:
        for request in requests:
            run = dg.DagsterRun(
                job_name=LOAD_JOB,
                run_id=str(uuid.uuid4()),
                status=dg.DagsterRunStatus.QUEUED,
                remote_job_origin=ORIGIN,
                tags=request.tags,
                run_config=request.run_config,
            )
            self.instance.add_run(run)

    def _runs(self, status: dg.DagsterRunStatus):
        runs = self.instance.get_runs(filters=dg.RunsFilter(statuses=[status], job_name=LOAD_JOB))
        return sorted(runs, key=lambda r: int(r.tags[TAG_METADATA_ID]))

    def dequeue(self) -> None:
        started = self._runs(dg.DagsterRunStatus.STARTED)
        busy: dict[str, int] = {}
        for run in started:
            busy[run.tags[TAG_SOURCE_SYSTEM]] = busy.get(run.tags[TAG_SOURCE_SYSTEM], 0) + 1
        for run in self._runs(dg.DagsterRunStatus.QUEUED):
            source = run.tags[TAG_SOURCE_SYSTEM]
            if busy.get(source, 0) >= self.limit:
                continue
            busy[source] = busy.get(source, 0) + 1
            self._set_status(run, dg.DagsterRunStatus.STARTED)
            config = run.run_config["ops"]["dataloader__table_load"]["config"]
            assert self.client.start_load(
                config["config_id"],
                config["metadata_id"],
                dagster_run_id=run.run_id,
                dagster_run_url=f"http://127.0.0.1:3000/runs/{run.run_id}",
            )
            self.running[run.run_id] = config
        self.max_in_flight_per_source = max([self.max_in_flight_per_source, *busy.values()])

    def finish_started(self) -> None:
        for run_id, config in list(self.running.items()):
            self.client.record_success(
                config["config_id"],
                config["metadata_id"],
                LoadReport(rows_read=1, rows_written=1, watermark_after=None),
            )
            self._set_status(self.instance.get_run_by_id(run_id), dg.DagsterRunStatus.SUCCESS)
            del self.running[run_id]

    def _set_status(self, run: dg.DagsterRun, status: dg.DagsterRunStatus) -> None:
        # What the run worker reports; stored the plain way (no code server in this test).
        self.instance.delete_run(run.run_id)
        self.instance.add_run(run.with_status(status))


def age(db: psycopg.Connection, minutes: int) -> None:
    """Let ``minutes`` pass for the control table: every status and load time moves back."""
    db.execute(
        "UPDATE table_control SET last_status_date_time = last_status_date_time"
        " - make_interval(mins => %(m)s),"
        " last_load_date_time = last_load_date_time - make_interval(mins => %(m)s)",
        {"m": minutes},
    )


def simulate(control_db, db, instance, claim) -> RunQueue:
    """Steps of STEP_MINUTES until nothing is due or in flight: claim, start, monitor, finish."""
    settings = Settings(source_concurrency=2, longqueued_threshold_minutes=60)
    monitor = build_longqueued_monitor(settings)
    with LakebaseClient(control_db) as client:
        queue = RunQueue(instance, client, limit=settings.source_concurrency)
        for _ in range(200):
            queue.submit(claim(settings, client))
            queue.dequeue()
            tick(monitor, instance, control_db)
            age(db, STEP_MINUTES)
            queue.finish_started()
            left = db.execute(
                "SELECT count(*) AS n FROM table_control WHERE last_status IS DISTINCT FROM"
                " 'Succeeded' AND last_status IS DISTINCT FROM 'Failed'"
            ).fetchone()["n"]
            if left == 0:
                return queue
    raise AssertionError("the simulation did not settle in 200 steps")


def fifty_rows(db: psycopg.Connection) -> None:
    for i in range(50):
        add_row(db, f"erp.t{i:02d}")  # one source system, loaded once (no schedule)


def test_fifty_rows_of_one_source_behind_a_limit_of_two_all_succeed(control_db, db, instance):
    fifty_rows(db)
    sensor = build_master_sensor(Settings(source_concurrency=2, master_batch_size=10))

    def claim_with_the_sensor(settings, client):
        result = tick(sensor, instance, control_db)
        return getattr(result, "run_requests", None) or []

    queue = simulate(control_db, db, instance, claim_with_the_sensor)

    statuses = db.execute(
        "SELECT last_status, count(*) AS n FROM table_control GROUP BY 1"
    ).fetchall()
    assert statuses == [{"last_status": "Succeeded", "n": 50}]
    history = db.execute(
        "SELECT status, count(*) AS n FROM historical_metadata GROUP BY 1"
    ).fetchall()
    assert history == [{"status": "Succeeded", "n": 50}]  # one attempt each, no false failure
    assert queue.max_in_flight_per_source == 2
    assert db.execute("SELECT max(retry_count) AS m FROM table_control").fetchone()["m"] == 0


def test_without_queue_aware_claiming_the_same_rows_fail_in_the_queue(control_db, db, instance):
    """The old claim (10 a tick, whatever the queue) in the same simulation: false failures.

    Shows the test above can fail: it is the claiming that keeps the rows out of the monitor.
    """
    fifty_rows(db)

    def claim_ten_whatever_the_queue(settings, client):
        from dagsters.policy.run_requests import load_run_config, load_run_tags

        return [
            dg.RunRequest(run_key=None, run_config=load_run_config(row), tags=load_run_tags(row))
            for row in claim_due(client, 10)
        ]

    simulate(control_db, db, instance, claim_ten_whatever_the_queue)
    failed = db.execute(
        "SELECT count(*) AS n FROM table_control WHERE last_status = 'Failed'"
        " AND last_message = 'Cancelled - stuck in queue for >60 minutes'"
    ).fetchone()["n"]
    assert failed > 0
    # ... and their queued Dagster runs were cancelled, so none starts later on a moved-on row.
    cancelled = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.CANCELED]))
    assert len(cancelled) == failed


def queued_run(instance: dg.DagsterInstance, key: str, metadata_id: int) -> dg.DagsterRun:
    run = dg.DagsterRun(
        job_name=LOAD_JOB,
        run_id=str(uuid.uuid4()),
        status=dg.DagsterRunStatus.QUEUED,
        remote_job_origin=ORIGIN,
        tags={TAG_CONTROL_KEY: key, TAG_METADATA_ID: str(metadata_id)},
    )
    instance.add_run(run)
    return run


def stuck_in_queue(db: psycopg.Connection, key: str) -> tuple[int, int]:
    config_id = add_row(db, key)
    metadata_id = add_history(db, config_id, key, "Queued")
    db.execute(
        "UPDATE table_control SET last_status = 'Queued', last_metadata_id = %s,"
        " last_status_date_time = now() - interval '61 minutes' WHERE config_id = %s",
        (metadata_id, config_id),
    )
    return config_id, metadata_id


def test_longqueued_monitor_cancels_the_queued_run_before_failing_the_row(control_db, db, instance):
    _, stuck_id = stuck_in_queue(db, "stuck")
    waiting = queued_run(instance, "stuck", stuck_id)
    other = queued_run(instance, "stuck", stuck_id + 1000)  # another attempt: not touched
    _, starting_id = stuck_in_queue(db, "starting")
    starting = queued_run(instance, "starting", starting_id)
    # The run of "starting" was dequeued just now: it will move its row to In Progress itself.
    instance.add_run(
        dg.DagsterRun(
            job_name=LOAD_JOB,
            run_id=starting.run_id + "-x",
            status=dg.DagsterRunStatus.STARTING,
            remote_job_origin=ORIGIN,
            tags={TAG_CONTROL_KEY: "starting", TAG_METADATA_ID: str(starting_id)},
        )
    )

    result = tick(build_longqueued_monitor(Settings()), instance, control_db)

    assert instance.get_run_by_id(waiting.run_id).status == dg.DagsterRunStatus.CANCELED
    assert instance.get_run_by_id(other.run_id).status == dg.DagsterRunStatus.QUEUED
    row = control_row(db, "stuck")
    assert row["last_status"] == "Failed"
    assert row["last_message"] == "Cancelled - stuck in queue for >60 minutes"
    assert control_row(db, "starting")["last_status"] == "Queued"
    assert "stuck" in result.skip_message and "starting" not in result.skip_message
    # Retry analysis reads it as transient (a later attempt gets a slot), never as a cause to review.
    verdict = classify_error(row["last_message"])
    assert verdict.category == TRANSIENT, verdict


def test_longqueued_monitor_cancels_a_linked_databricks_run(
    control_db,
    db,
    instance,
    databricks_standin: DatabricksStandin,  # noqa: F811
    monkeypatch,
    tmp_path: Path,
):
    script = tmp_path / "wait_for_cancel.py"
    script.write_text("import time\nwhile True:\n    time.sleep(0.05)\n")
    databricks_standin.deploy(script, "/Workspace/Shared/wait_for_cancel.py")
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(tmp_path / "no-databrickscfg"))
    monkeypatch.setenv("DATABRICKS_HOST", databricks_standin.host)
    monkeypatch.setenv("DATABRICKS_TOKEN", databricks_standin.token)
    workspace = databricks_standin.workspace_client()  # the test's own client
    submitted = workspace.jobs.submit(
        run_name="held",
        tasks=[
            SubmitTask.from_dict(
                {
                    "task_key": "t",
                    "existing_cluster_id": CLUSTER,
                    "spark_python_task": {"python_file": "/Workspace/Shared/wait_for_cancel.py"},
                }
            )
        ],
    ).response
    page = workspace.jobs.get_run(submitted.run_id).run_page_url
    assert databricks_run_id(page) == submitted.run_id
    config_id, _ = stuck_in_queue(db, "held")
    db.execute(
        "UPDATE table_control SET last_databricks_run = %s WHERE config_id = %s",
        (page, config_id),
    )

    tick(build_longqueued_monitor(Settings()), instance, control_db)

    assert control_row(db, "held")["last_status"] == "Failed"
    deadline = time.monotonic() + 60
    while workspace.jobs.get_run(submitted.run_id).state.result_state is None:
        assert time.monotonic() < deadline, "the Databricks run was not cancelled"
        time.sleep(0.1)
    assert workspace.jobs.get_run(submitted.run_id).state.result_state.value == "CANCELED"


@pytest.mark.parametrize(
    ("url", "run_id"),
    [
        ("https://adb-1.azuredatabricks.net/?o=1#job/22/run/333", 333),
        ("https://dbc-1.cloud.databricks.com/jobs/22/runs/444", 444),
        (None, None),
        ("not a link", None),
    ],
)
def test_databricks_run_ids_from_run_page_links(url, run_id):
    assert databricks_run_id(url) == run_id
