"""Benchmark: the loader's full load against the raw ADBC -> write_deltalake path, plus incremental.

Builds a source table (int, text, numeric(12,2), timestamptz; 2,000,000 rows by default) in an
embedded PostgreSQL on a temporary directory, then in one run times:
  (a) raw: ADBC record-batch stream -> write_deltalake, no project code (in a child process),
  (b) the loader: databricks_scripts/dataloader_pipe.py, full load, run through a Pipes bootstrap
      exactly as PipesSubprocessClient would (child process; peak RSS sampled with psutil),
  (c) 1% new rows, then an incremental load through the loader.
Prints both times, the ratio (target <= 1.25), incremental/full (target <= 5%) and peak RSS.

    .venv/bin/python bench/bench_loader.py [--rows 2000000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import psycopg
from dagster_pipes import encode_param
from psycopg.conninfo import conninfo_to_dict

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SCRIPT = REPO / "databricks_scripts" / "dataloader_pipe.py"

from dagsters.utils.embedded_lakebase import (
    ensure_database,
    start_embedded_server,
    stop_embedded_server,
)

RAW_PATH = """
import sys, time
import adbc_driver_postgresql.dbapi as adbc
import pyarrow as pa
from deltalake import write_deltalake
uri, path = sys.argv[1], sys.argv[2]
t0 = time.perf_counter()
with adbc.connect(uri) as conn, conn.cursor() as cur:
    cur.execute("SELECT * FROM public.bench")
    reader = cur.fetch_record_batch()
    # numeric arrives as an opaque extension over text; delta-rs needs a plain type
    schema = pa.schema([pa.field(f.name, getattr(f.type, "storage_type", f.type)) for f in reader.schema])
    batches = (pa.RecordBatch.from_arrays(
        [getattr(c, "storage", c) for c in b.columns], schema=schema) for b in reader)
    write_deltalake(path, pa.RecordBatchReader.from_batches(schema, batches), mode="overwrite")
print(time.perf_counter() - t0)
"""


def _run_child(
    cmd: list[str], env: dict[str, str]
) -> tuple[float, int, subprocess.CompletedProcess]:
    """Run ``cmd``; return (wall seconds, peak RSS bytes sampled every 20 ms, result)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            peak = max(peak, ps.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.02)
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"child failed ({proc.returncode}):\n{err[-3000:]}")
    return wall, peak, subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _run_loader(params: dict, work: Path, lake: Path) -> tuple[float, int, dict]:
    context = {
        "asset_keys": ["bench"],
        "code_version_by_asset_key": {"bench": None},
        "provenance_by_asset_key": {"bench": None},
        "partition_key": None,
        "partition_key_range": None,
        "partition_time_window": None,
        "run_id": "bench",
        "job_name": None,
        "retry_number": 0,
        "extras": {"params": params},
    }
    ctx = work / "context.json"
    ctx.write_text(json.dumps(context))
    messages = work / "messages.jsonl"
    messages.write_text("")
    env = {
        **os.environ,
        "DATALOADER_LAKE_ROOT": str(lake),
        "DAGSTER_PIPES_CONTEXT": encode_param({"path": str(ctx)}),
        "DAGSTER_PIPES_MESSAGES": encode_param({"path": str(messages)}),
    }
    wall, peak, _ = _run_child([sys.executable, str(SCRIPT)], env)
    for line in messages.read_text().splitlines():
        msg = json.loads(line)
        if msg["method"] == "report_asset_materialization":
            meta = {k: v["raw_value"] for k, v in msg["params"]["metadata"].items()}
            return wall, peak, meta
    raise SystemExit("loader reported no materialization")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    args = parser.parse_args()
    os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())

    with tempfile.TemporaryDirectory(prefix="dl_bench_") as tmp:
        work = Path(tmp)
        pgdata = work / "pgdata"
        server = start_embedded_server(pgdata, cleanup_mode="stop")
        try:
            ensure_database(server, "bench")
            conninfo = server.conninfo("bench")
            t0 = time.perf_counter()
            with psycopg.connect(conninfo, autocommit=True) as conn:
                conn.execute(
                    "CREATE TABLE bench (id int, name text, amount numeric(12,2), "
                    "updated_at timestamptz)"
                )
                conn.execute(
                    "INSERT INTO bench SELECT g, 'customer ' || g, (g %% 100000) / 100.0, "
                    "timestamptz '2024-01-01' + g * interval '1 second' "
                    "FROM generate_series(1, %s) g",
                    (args.rows,),
                )
                conn.execute("VACUUM ANALYZE bench")
            print(f"source: {args.rows:,} rows built in {time.perf_counter() - t0:.1f}s")

            info = conninfo_to_dict(conninfo)
            uri = f"postgresql://postgres@/bench?host={info['host']}&port={info['port']}"
            raw_wall, raw_peak, raw = _run_child(
                [sys.executable, "-c", RAW_PATH, uri, str(work / "raw_delta")], dict(os.environ)
            )
            raw_inner = float(raw.stdout.strip().splitlines()[-1])

            lake = work / "lake"
            params = {
                "control_key": "bench",
                "source_schema_name": "public",
                "source_table_name": "bench",
                "destination_catalog": "bench",
                "destination_schema_name": "landing",
                "destination_table_name": "bench",
                "db_type": "postgresql",
                "db_config_value": {
                    "host": info["host"],
                    "port": int(info["port"]),
                    "database": "bench",
                    "user": "postgres",
                },
                "load_strategy": "incremental",
                "incremental_column": "updated_at",
                "incremental_value": None,
                "lookback_window_seconds": 0,
            }
            full_wall, full_peak, full = _run_loader(params, work, lake)

            new_rows = max(args.rows // 100, 1)
            with psycopg.connect(conninfo, autocommit=True) as conn:
                conn.execute(
                    "INSERT INTO bench SELECT g, 'customer ' || g, 1.00, "
                    "timestamptz '2030-01-01' + g * interval '1 second' "
                    "FROM generate_series(%s, %s) g",
                    (args.rows + 1, args.rows + new_rows),
                )
                conn.execute("CREATE INDEX ON bench (updated_at)")
                conn.execute("ANALYZE bench")
            params["incremental_value"] = full["watermark_after"]
            inc_wall, inc_peak, inc = _run_loader(params, work, lake)
        finally:
            stop_embedded_server(pgdata)

    print(
        f"(a) raw ADBC -> write_deltalake : {raw_wall:6.2f}s wall ({raw_inner:.2f}s in-process),"
        f" peak RSS {raw_peak / 2**20:.0f} MiB"
    )
    print(
        f"(b) loader full load            : {full_wall:6.2f}s wall "
        f"({full['duration_seconds']:.2f}s in-script), rows {full['rows_written']:,}, "
        f"peak RSS {full_peak / 2**20:.0f} MiB"
    )
    print(
        f"    ratio loader/raw            : {full_wall / raw_wall:.3f} wall, "
        f"{full['duration_seconds'] / raw_inner:.3f} in-process   (target <= 1.25)"
    )
    print(
        f"(c) incremental, {new_rows:,} new rows: {inc_wall:6.2f}s wall "
        f"({inc['duration_seconds']:.2f}s in-script), rows {inc['rows_written']:,}, "
        f"peak RSS {inc_peak / 2**20:.0f} MiB"
    )
    print(
        f"    incremental/full            : {inc_wall / full_wall:.1%} wall, "
        f"{inc['duration_seconds'] / full['duration_seconds']:.1%} in-script (target <= 5%)"
    )


if __name__ == "__main__":
    main()
