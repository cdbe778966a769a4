"""Benchmark: the loader's distance to the floor, side by side in one run (issue 28, item 5).

The floor is what a person would write by hand with no project code: ADBC's record batches into
``write_deltalake``, and the changed rows read with ADBC into ``DeltaTable.merge``. Against it:
  (k) a keyed table's first load: the loader with ``merge_keys`` (one overwrite, the keys checked
      for NULLs and duplicates before the commit) against raw ADBC -> write_deltalake (numeric
      cast to decimal(12,2), the type the loader writes);
  (u) 1% scattered updates (every 100th id) upserted: the loader's incremental load with
      ``merge_keys`` into the table its keyed first load wrote, against raw ADBC (the rows above
      the watermark) -> ``DeltaTable.merge(...).when_matched_update_all().when_not_matched_insert_all()``
      into the table the raw first load wrote.
Each contender runs in a child process (peak RSS sampled every 20 ms), --repeat rounds taking
turns; figures are median (min-max) and the ratios are per round (loader / floor of the same
round). Wall time is the comparison; "in-process" is the floor's time after its imports and the
loader's own duration, which includes the imports it makes lazily (so that ratio flatters the
floor). Goals: (k) <= 1.0x and <= 512 MiB at 10M rows, (u) <= 1.0x. ``--verify-depth none``
drops the loader's reconciliation check (the floor checks nothing).

    .venv/bin/python bench/bench_floor.py [--rows 2000000] [--repeat 3] [--only k|u]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import psycopg
from deltalake import DeltaTable
from psycopg.conninfo import conninfo_to_dict

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_loader import RAW_PATH, _run_child, _run_loader, _spread, source_params

from dagsters.local.embedded_lakebase import (
    ensure_database,
    start_embedded_server,
    stop_embedded_server,
)

RAW_MERGE = """
import sys, time
import adbc_driver_postgresql.dbapi as adbc
import pyarrow as pa
from deltalake import DeltaTable
uri, path, since = sys.argv[1], sys.argv[2], sys.argv[3]
t0 = time.perf_counter()
with adbc.connect(uri) as conn, conn.cursor() as cur:
    cur.execute("SELECT * FROM public.bench WHERE updated_at > $1::timestamptz", (since,))
    data = cur.fetch_arrow_table()
types = [getattr(f.type, "storage_type", f.type) for f in data.schema]
types[2] = pa.decimal128(12, 2)
data = pa.table(
    [getattr(c, "storage", c).cast(t) for c, t in zip(data.columns, types)],
    names=data.schema.names,
)
(
    DeltaTable(path)
    .merge(data, "t.id = s.id", source_alias="s", target_alias="t")
    .when_matched_update_all()
    .when_not_matched_insert_all()
    .execute()
)
print(time.perf_counter() - t0)
"""

MIB = 2**20


def _files_rewritten(path: Path, before: int) -> tuple[int, int]:
    """(data files the commits after version ``before`` removed, files the table had before)."""
    table = DeltaTable(str(path))
    removed = sum(
        int((h.get("operationMetrics") or {}).get("num_target_files_removed", 0))
        for h in table.history(table.version() - before)
    )
    return removed, len(DeltaTable(str(path), version=before).file_uris())


def _build_source(conninfo: str, rows: int) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE bench (id int PRIMARY KEY, name text, amount numeric(12,2), "
            "updated_at timestamptz)"
        )
        conn.execute(
            "INSERT INTO bench SELECT g, 'customer ' || g, (g %% 100000) / 100.0, "
            "timestamptz '2024-01-01' + g * interval '1 second' "
            "FROM generate_series(1, %s) g",
            (rows,),
        )
        conn.execute("CREATE INDEX ON bench (updated_at)")
        conn.execute("VACUUM ANALYZE bench")
        conn.execute("SELECT count(*) FROM bench")  # warm the cache for every contender


def _update_one_percent(conninfo: str) -> str:
    """Every 100th id changed (amount and cursor); returns the watermark before the change."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        [since] = conn.execute("SELECT max(updated_at)::text FROM bench").fetchone()
        conn.execute(
            "UPDATE bench SET amount = amount + 1, "
            "updated_at = timestamptz '2031-01-01' + id * interval '1 second' WHERE id % 100 = 50"
        )
        conn.execute("VACUUM ANALYZE bench")
    return since


def _ratio_line(label: str, loader: list[float], floor: list[float]) -> str:
    ratios = [a / b for a, b in zip(loader, floor, strict=True)]
    return f"    {label:<30}: {_spread(ratios, '{:.3f}')} (per round, loader / floor)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", choices=("k", "u"), help="only the first load (k) or upsert (u)")
    parser.add_argument(
        "--verify-depth",
        choices=("counts", "keys", "none"),
        help="the loader's reconciliation check (default: the product's, counts); the floor has none",
    )
    args = parser.parse_args()
    os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())
    with tempfile.TemporaryDirectory(prefix="dl_floor_") as tmp:
        work = Path(tmp)
        pgdata = work / "pgdata"
        server = start_embedded_server(pgdata, cleanup_mode="stop")
        try:
            ensure_database(server, "bench")
            conninfo = server.conninfo("bench")
            t0 = time.perf_counter()
            _build_source(conninfo, args.rows)
            print(f"source: {args.rows:,} rows built in {time.perf_counter() - t0:.1f}s")
            info = conninfo_to_dict(conninfo)
            uri = f"postgresql://postgres@/bench?host={info['host']}&port={info['port']}"
            params = _params(info)
            if args.verify_depth:
                params["verify_depth"] = args.verify_depth
            _rounds(args, work, conninfo, uri, params)
        finally:
            stop_embedded_server(pgdata)


def _params(info: dict) -> dict:
    return {**source_params(info), "merge_keys": ["id"]}


def _rounds(args, work: Path, conninfo: str, uri: str, params: dict) -> None:
    lake, raw_out = work / "lake", work / "raw"
    table = lake / "bench" / "landing" / "bench"
    lake_template, raw_template = work / "lake_first", work / "raw_first"

    def raw_first() -> tuple[float, int]:
        shutil.rmtree(raw_out, ignore_errors=True)
        wall, peak, res = _run_child(
            [sys.executable, "-c", RAW_PATH, uri, str(raw_out), "typed"], dict(os.environ)
        )
        return wall, peak, float(res.stdout.split()[-1])

    def loader_first() -> tuple[float, int]:
        shutil.rmtree(lake, ignore_errors=True)
        wall, peak, meta = _run_loader(params, work, lake)
        assert meta["rows_written"] == args.rows, meta
        watermarks.append(meta["watermark_after"])
        return wall, peak, meta["duration_seconds"]

    watermarks: list[str] = []
    first: dict[str, list] = {"floor": [], "loader": []}
    turns = [("floor", raw_first), ("loader", loader_first)]
    for i in range(args.repeat if args.only != "u" else 1):
        for name, run in turns if i % 2 == 0 else turns[::-1]:
            first[name].append(run())
    shutil.copytree(lake, lake_template)
    shutil.copytree(raw_out, raw_template)
    watermark = watermarks[-1]
    if args.only != "u":
        _print("(k) keyed first load", first, args.rows)
    if args.only == "k":
        return

    since = _update_one_percent(conninfo)

    def raw_merge() -> tuple[float, int, tuple[int, int]]:
        shutil.rmtree(raw_out)
        shutil.copytree(raw_template, raw_out)
        before = DeltaTable(str(raw_out)).version()
        wall, peak, res = _run_child(
            [sys.executable, "-c", RAW_MERGE, uri, str(raw_out), since], dict(os.environ)
        )
        return wall, peak, float(res.stdout.split()[-1]), _files_rewritten(raw_out, before)

    def loader_merge() -> tuple[float, int, tuple[int, int]]:
        shutil.rmtree(lake)
        shutil.copytree(lake_template, lake)
        before = DeltaTable(str(table)).version()
        wall, peak, meta = _run_loader({**params, "incremental_value": watermark}, work, lake)
        assert meta["rows_written"] == args.rows // 100, meta
        return wall, peak, meta["duration_seconds"], _files_rewritten(table, before)

    upserts: dict[str, list] = {"floor": [], "loader": []}
    turns = [("floor", raw_merge), ("loader", loader_merge)]
    for i in range(args.repeat):
        for name, run in turns if i % 2 == 0 else turns[::-1]:
            upserts[name].append(run())
    _print("(u) 1% scattered updates", upserts, args.rows // 100)


def _print(label: str, results: dict[str, list], rows: int) -> None:
    floor, loader = results["floor"], results["loader"]
    print(f"{label}: {rows:,} rows, {len(loader)} round(s); median (min-max)")
    for name, runs in (("floor (raw)", floor), ("loader", loader)):
        extra = ""
        if len(runs[0]) > 3:
            removed, files = runs[-1][3]
            extra = f", files rewritten {removed} of {files}"
        print(
            f"    {name:<30}: {_spread([r[0] for r in runs])}s wall, "
            f"{_spread([r[2] for r in runs], '{:.3f}')}s in-process, "
            f"peak RSS {max(r[1] for r in runs) / MIB:.0f} MiB{extra}"
        )
    print(_ratio_line("ratio (wall)", [r[0] for r in loader], [r[0] for r in floor]))
    print(_ratio_line("ratio (in-process)", [r[2] for r in loader], [r[2] for r in floor]))


if __name__ == "__main__":
    main()
