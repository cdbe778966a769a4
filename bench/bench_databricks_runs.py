"""Databricks runs and cluster starts per 100 tables, batch size 1 against N, on the local stand-in.

The real master_sensor claims due tiny tables (spread over ``--sources`` source databases) with
``DATALOADER_RUN_BATCH_SIZE`` 1 and then N; each run request is executed in this process (the load
asset for a run of one table, the batch job for a batch) with the Databricks backend on a
``new_cluster`` spec against ``tests/databricks_standin.py``, which runs the unmodified load script
for every task. Counted from the stand-in: Databricks runs (``runs/submit`` and ``jobs/run-now``),
cluster starts, tasks; from the control database: loads and failures (every table is loadable,
so any failure is a false one). CPU seconds per load are this process's and its children's (the
stand-in's task processes), not the embedded PostgreSQL's.

    .venv/bin/python bench/bench_databricks_runs.py [--tables 20] [--sources 4] [--sizes 1,10]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")

import dagster as dg
import psycopg
from databricks_standin import (
    CLUSTER,
    REPO_SCRIPTS,
    VOLUME,
    WORKSPACE_SCRIPTS,
    DatabricksStandin,
    arrow_runtime,
)
from helpers import SensorLoop, add_control_row, lakebase_for
from psycopg.rows import dict_row

from dagsters.assets.dataloader_pipes_asset import build_load_asset
from dagsters.assets.load_batch import build_load_batch_job
from dagsters.local.embedded_lakebase import (
    ensure_database,
    start_embedded_server,
    stop_embedded_server,
)
from dagsters.local.migrate import apply_migrations
from dagsters.partitions import PARTITIONS_NAME
from dagsters.policy.run_requests import LOAD_ASSET, LOAD_BATCH_JOB
from dagsters.resources.pipes_databricks import PipesDatabricksResource
from dagsters.sensors.dataloader_master_sensor import LOAD_JOB, build_master_sensor
from dagsters.settings import load_settings

NEW_CLUSTER = (
    '{"spark_version": "15.4.x-scala2.12", "node_type_id": "i3.xlarge", "num_workers": 0, '
    '"data_security_mode": "SINGLE_USER", '
    '"spark_conf": {"spark.databricks.cluster.profile": "singleNode", "spark.master": "local[*]"}, '
    '"custom_tags": {"ResourceClass": "SingleNode"}}'
)


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _seed(server, tag: str, tables: int, sources: int) -> tuple[str, list[str]]:
    """A migrated control database and ``tables`` tiny tables over ``sources`` databases."""
    control = f"bench_dbx_control_{tag}"
    ensure_database(server, control)
    apply_migrations(server.conninfo(control))
    keys = []
    with psycopg.connect(server.conninfo(control), autocommit=True, row_factory=dict_row) as db:
        for s in range(sources):
            name = f"bench_dbx_src_{tag}_{s}"
            ensure_database(server, name)
            with psycopg.connect(server.conninfo(name), autocommit=True) as src:
                for i in range(s, tables, sources):
                    src.execute(
                        f"CREATE TABLE public.t{i} AS SELECT g AS id, now() AS updated_at"
                        " FROM generate_series(1, 5) g"
                    )
            for i in range(s, tables, sources):
                key = f"dbx_{tag}.t{i}"
                add_control_row(
                    db,
                    server.conninfo(name),
                    key,
                    f"t{i}",
                    destination_table_name=f"{tag}_t{i}",
                    load_strategy="full",
                    incremental_column=None,
                )
                keys.append(key)
    return server.conninfo(control), keys


def _execute(request, settings, control: str, instance, pipes) -> None:
    resources = {"lakebase": lakebase_for(control), "pipes_databricks": pipes}
    if request.job_name == LOAD_BATCH_JOB:
        build_load_batch_job(settings).execute_in_process(
            run_config=request.run_config,
            tags=request.tags,
            instance=instance,
            resources=resources,
            raise_on_error=False,
        )
        return
    dg.materialize(
        [build_load_asset(settings)],
        partition_key=request.partition_key,
        run_config=request.run_config,
        tags=request.tags,
        instance=instance,
        resources=resources,
        raise_on_error=False,
    )


def _measure(server, standin, size: int, args, lake: Path) -> dict:
    control, keys = _seed(server, f"b{size}", args.tables, args.sources)
    settings = load_settings(
        {
            "DATALOADER_RUN_BATCH_SIZE": str(size),
            "DATALOADER_LAKE_ROOT": str(lake),
            "DATALOADER_SOURCE_CONCURRENCY": "2",
        }
    )
    pipes = PipesDatabricksResource(
        execution="databricks",
        scripts_path=WORKSPACE_SCRIPTS,
        new_cluster_json=NEW_CLUSTER,
        volume_path=VOLUME,
        poll_interval_seconds=0.2,
    )
    runs_before = len(standin.runs) + len(standin.job_runs)
    starts_before = len(standin.cluster_starts)
    cpu, started = _cpu(), time.monotonic()
    with dg.instance_for_test() as instance:
        loop = SensorLoop(
            build_master_sensor(
                settings,
                [
                    dg.define_asset_job(LOAD_JOB, selection=[LOAD_ASSET]),
                    build_load_batch_job(settings),
                ],
            ),
            instance,
            control,
        )
        done, ticks = 0, 0
        while done < len(keys) and ticks < 10 * len(keys):
            ticks += 1
            for request in loop.tick().run_requests or []:
                if request.partition_key:
                    instance.add_dynamic_partitions(PARTITIONS_NAME, [request.partition_key])
                _execute(request, settings, control, instance, pipes)
            with psycopg.connect(control, row_factory=dict_row) as db:
                rows = db.execute(
                    "SELECT status FROM historical_metadata WHERE status IN ('Succeeded','Failed')"
                ).fetchall()
            done = len(rows)
    seconds, cpu = time.monotonic() - started, _cpu() - cpu
    return {
        "size": size,
        "loads": len(rows),
        "failed": sum(r["status"] != "Succeeded" for r in rows),
        "runs": len(standin.runs) + len(standin.job_runs) - runs_before,
        "starts": len(standin.cluster_starts) - starts_before,
        "cpu": cpu,
        "seconds": seconds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", type=int, default=20)
    parser.add_argument("--sources", type=int, default=4)
    parser.add_argument("--sizes", default="1,10")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    top = Path(tempfile.mkdtemp(prefix="bench-dbx-"))
    server = start_embedded_server(top / "pgdata", cleanup_mode="stop")
    standin = DatabricksStandin(top / "standin")
    standin.add_cluster(CLUSTER)
    standin.add_volume("main.dataloader.pipes")
    measured = []
    try:
        with standin:
            standin.deploy(REPO_SCRIPTS, WORKSPACE_SCRIPTS)
            standin.runtime_env.update(arrow_runtime(top / "lake"))
            os.environ.update(standin.env())
            for size in [int(v) for v in args.sizes.split(",") if v.strip()]:
                measured.append(_measure(server, standin, size, args, top / "lake"))
                m = measured[-1]
                print(
                    f"DATALOADER_RUN_BATCH_SIZE={size}: {m['loads']} loads ({m['failed']} failed)"
                    f" in {m['runs']} Databricks runs, {m['starts']} cluster starts,"
                    f" {m['seconds']:.0f} s, {m['cpu'] / max(m['loads'], 1):.2f} CPU-s/load"
                )
    finally:
        stop_embedded_server(top / "pgdata")
    print(f"side by side ({args.tables} tiny tables over {args.sources} sources, new_cluster):")
    print(
        "  run batch size  Databricks runs/100 tables  cluster starts/100 tables  CPU-s/load"
        "  failed"
    )
    for m in measured:
        per = 100 / max(m["loads"], 1)
        print(
            f"  {m['size']:14d}  {m['runs'] * per:26.0f}  {m['starts'] * per:25.0f}  "
            f"{m['cpu'] / max(m['loads'], 1):10.2f}  {m['failed']:6d}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
