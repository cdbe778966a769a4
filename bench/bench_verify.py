"""Benchmark: what the reconciliation check and deep verification cost, as ratios in one run.

Builds a keyed source table (bigint id, text, numeric(12,2), timestamptz; 1,000,000 rows by
default) in an embedded PostgreSQL on a temporary directory and loads it once (merge on id). Then,
taking turns --repeat times, it times in this process:
  (n) a merge load of 1% updated rows with verify_depth = 'none' (the baseline),
  (c) the same with 'counts' (the default), (k) with 'keys',
  (d) a deep verification of the whole table, against (f) a full reload of it.
Prints median (min-max) seconds and the ratios (c)/(n), (k)/(n) and (d)/(f): what a check adds to
a load, and what a deep verification costs against reading the table once.

    .venv/bin/python bench/bench_verify.py [--rows 1000000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psycopg
from deltalake import DeltaTable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dagsters.local.embedded_lakebase import (
    ensure_database,
    start_embedded_server,
    stop_embedded_server,
)
from databricks_scripts.engines.arrow import engine as la
from databricks_scripts.engines.arrow.deep_verify import deep_verify
from databricks_scripts.load.params import parse_load_spec
from databricks_scripts.sources import readers as ls


def params(conninfo: str, **over) -> dict:
    parts = psycopg.conninfo.conninfo_to_dict(conninfo)
    return {
        "config_id": 1,
        "control_key": "bench.verify",
        "source_schema_name": "public",
        "source_table_name": "verify_src",
        "destination_catalog": "lake",
        "destination_schema_name": "bench",
        "destination_table_name": "verify_src",
        "db_type": "postgresql",
        "db_config_value": {
            "host": parts["host"],
            "port": int(parts["port"]),
            "database": parts["dbname"],
            "user": parts["user"],
        },
        "load_strategy": "merge",
        "merge_keys": ["id"],
        "incremental_column": "ts",
        **over,
    }


def run_load(conninfo: str, dest: Path, **over):
    spec = parse_load_spec(params(conninfo, **over))
    reader = ls.PostgresReader(spec, None, batch_bytes=8 << 20, batch_rows=100_000)
    try:
        started = time.perf_counter()
        result = la.run_arrow_load(spec, reader, dest, log=lambda _m: None)
        return time.perf_counter() - started, result
    finally:
        reader.close()


def deep(conninfo: str, dest: Path) -> float:
    spec = parse_load_spec(params(conninfo))
    reader = ls.PostgresReader(spec, None, batch_bytes=8 << 20, batch_rows=100_000)
    try:
        started = time.perf_counter()
        found = deep_verify(spec, reader, DeltaTable(str(dest)))
        assert found.passed, found.description
        return time.perf_counter() - started
    finally:
        reader.close()


def fmt(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}s ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())
    with tempfile.TemporaryDirectory(prefix="dl_bench_verify_") as tmp:
        server = start_embedded_server(Path(tmp) / "pg", cleanup_mode="stop")
        try:
            ensure_database(server, "bench")
            conninfo = server.conninfo("bench")
            with psycopg.connect(conninfo, autocommit=True) as conn:
                conn.execute(
                    "CREATE TABLE verify_src (id bigint PRIMARY KEY, label text, "
                    "amount numeric(12,2), ts timestamptz NOT NULL)"
                )
                conn.execute(
                    "INSERT INTO verify_src SELECT g, 'label ' || g, g / 7.0, "
                    "timestamptz '2024-01-01' + g * interval '1 second' "
                    "FROM generate_series(1, %s) g",
                    (args.rows,),
                )
                conn.execute("CREATE INDEX ON verify_src (ts)")
                conn.execute("ANALYZE verify_src")
            dest = Path(tmp) / "lake" / "verify_src"
            _, first = run_load(conninfo, dest)
            watermark = first.watermark_after
            times: dict[str, list[float]] = {k: [] for k in "nckdf"}
            for turn in range(args.repeat):
                for depth, label in (("none", "n"), ("counts", "c"), ("keys", "k")):
                    with psycopg.connect(conninfo, autocommit=True) as conn:
                        # Each change moves its rows above the last watermark.
                        step = turn * 3 + len(times[label]) + {"n": 0, "c": 1, "k": 2}[label]
                        conn.execute(
                            "UPDATE verify_src SET amount = amount + 1, ts = timestamptz "
                            "'2030-01-01' + %s * interval '1 day' + id * interval '1 ms' "
                            "WHERE id %% 100 = %s",
                            (step, turn),
                        )
                    seconds, result = run_load(
                        conninfo, dest, incremental_value=watermark, verify_depth=depth
                    )
                    watermark = result.watermark_after
                    assert result.verification is None or result.verification.passed, (
                        result.verification
                    )
                    times[label].append(seconds)
                times["d"].append(deep(conninfo, dest))
                seconds, _ = run_load(conninfo, dest, force_full_reload=True, verify_depth="none")
                times["f"].append(seconds)
            med = {k: statistics.median(v) for k, v in times.items()}
            print(f"rows: {args.rows:,}, repeat {args.repeat}")
            print(f"(n) 1% merge, verify none:    {fmt(times['n'])}")
            print(
                f"(c) 1% merge, verify counts:  {fmt(times['c'])}  ratio c/n {med['c'] / med['n']:.2f}"
            )
            print(
                f"(k) 1% merge, verify keys:    {fmt(times['k'])}  ratio k/n {med['k'] / med['n']:.2f}"
            )
            print(f"(f) full reload:              {fmt(times['f'])}")
            print(
                f"(d) deep verification:        {fmt(times['d'])}  ratio d/f {med['d'] / med['f']:.2f}"
            )
        finally:
            stop_embedded_server(Path(tmp) / "pg")


if __name__ == "__main__":
    main()
