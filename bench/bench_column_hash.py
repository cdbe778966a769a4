"""Benchmark: what hashing columns (columns_hash, load.columns) adds to the rows a load writes.

Builds Arrow batches shaped like a customer table (bigint id, two text columns, a decimal, a
timestamp; 1,000,000 rows by default, 10,000 per batch) and times, taking turns --repeat times:
  (w) the cast to the destination schema and one Delta write of the batches (the baseline),
  (1) the same with one text column hashed (HMAC-SHA-256), (2) with two text columns hashed.
Prints median (min-max) seconds, rows per second and the ratios (1)/(w) and (2)/(w). The source
read is left out: it costs the same with or without hashing (an excluded column costs nothing:
it is never read).

    .venv/bin/python bench/bench_column_hash.py [--rows 1000000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import decimal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
from deltalake import write_deltalake

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from databricks_scripts.load.columns import hash_batch
from databricks_scripts.load.types import cast_batch, delta_schema_for

KEY = b"bench-key-0123456789abcdef"


def batches(rows: int, per_batch: int = 10_000) -> list[pa.RecordBatch]:
    out = []
    start = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    for first in range(0, rows, per_batch):
        ids = range(first, min(first + per_batch, rows))
        out.append(
            pa.record_batch(
                [
                    pa.array(list(ids), pa.int64()),
                    pa.array([f"customer{i % 50_000}@example.org" for i in ids]),
                    pa.array([f"Name {i % 9_000}" for i in ids]),
                    pa.array(
                        [decimal.Decimal(i % 10_000) / 100 for i in ids], pa.decimal128(12, 2)
                    ),
                    pa.array(
                        [start + dt.timedelta(seconds=i) for i in ids], pa.timestamp("us", "UTC")
                    ),
                ],
                names=["id", "email", "name", "amount", "updated_at"],
            )
        )
    return out


def run(data: list[pa.RecordBatch], hashed: list[str]) -> float:
    schema = delta_schema_for(data[0].schema)
    if hashed:
        schema = pa.schema(
            [pa.field(f.name, pa.string()) if f.name in hashed else f for f in schema]
        )

    def stream():
        for batch in data:
            if hashed:
                batch = hash_batch(batch, hashed, KEY)
            yield cast_batch(batch, schema)

    with tempfile.TemporaryDirectory() as where:
        started = time.perf_counter()
        write_deltalake(where, pa.RecordBatchReader.from_batches(schema, stream()))
        return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    data = batches(args.rows)
    cases = {
        "(w) cast and write": [],
        "(1) email hashed": ["email"],
        "(2) email+name": ["email", "name"],
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeat):
        for name, hashed in cases.items():
            times[name].append(run(data, hashed))
    medians = {}
    for name, values in times.items():
        medians[name] = statistics.median(values)
        print(
            f"{name:<20} {medians[name]:.3f} s ({min(values):.3f}-{max(values):.3f}), "
            f"{args.rows / medians[name]:,.0f} rows/s"
        )
    base = medians["(w) cast and write"]
    print(f"ratio (1)/(w): {medians['(1) email hashed'] / base:.1f}x")
    print(f"ratio (2)/(w): {medians['(2) email+name'] / base:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
