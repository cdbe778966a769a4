"""Tiny-table loads per hour through ``dataloader dev`` (Dagster's default run launcher), and where
each run's time goes.

Starts ``dataloader dev`` in its own home (embedded Lakebase, ``dagster dev``, the generated
``dagster.yaml``: queued run coordinator, default run launcher = one run worker process per run),
waits for the demo rows to load (warm-up), creates ``--tables`` tiny source tables (5 rows each)
and one control row per table, all due at the same moment, and waits until every row has a
finished attempt. Then it reads each run's event log from the Dagster instance and prints:

- completions per hour: tables / (last run's end - the moment the rows became due), and the
  steady rate between the first and the last completion;
- a per-run breakdown from the run event logs (median, p10-p90 over the runs), grouped by the
  executor the run used: queued (the run queue), worker start (the run worker process: spawn,
  import and load the code location), step process (the multiprocess executor's second process
  for the step, importing the code location again), step start (resources, until the step
  starts), script start (the asset's bookkeeping, the Pipes script's process start and imports,
  until its first log line), load (its first to its last log line), recording (script end ->
  control row Succeeded -> step success) and run exit;
- CPU seconds per load: the CPU time of every process of that ``dataloader dev`` (webserver,
  daemon, code server, run workers, scripts) and of its embedded PostgreSQL (server and
  backends) from the moment the rows became due to the last completion, divided by the loads
  (psutil; a process's reaped children count with it, so run workers, scripts and backends that
  came and went are included);
- import cost (median of 3 fresh-process rounds): the code location a run worker imports, and the
  modules the Pipes script imports for an Arrow-engine load.

    .venv/bin/python bench/bench_loads_per_hour.py [--tables 60] [--interval 60] [--batch 10]
        [--source-concurrency 2] [--max-concurrent-runs 10] [--sources 1] [--imports-only]
        [--run-batch-sizes 1,10]

``--run-batch-sizes 1,10`` measures each ``DATALOADER_RUN_BATCH_SIZE`` with a fresh
``dataloader dev`` of its own, one after the other in the same bench run, and prints them side by
side: loads/hour, CPU-seconds per load, Dagster runs per 100 tables and false failures, with the
ratios against the first size (the machine is shared: compare the ratios, not the figures).

The defaults are the shipped defaults (master_sensor every 60 s, 10 rows per tick, 2 loads per
source at once, 10 runs at once). All tables live in one source database; with ``--sources N`` the
control rows name N source connections (round robin) to that database, so the per-source limit
holds per connection, as for N source databases (issue 28's set-up: ``--tables 60 --sources 4
--interval 5``). Raise ``--source-concurrency`` to see the machine's limit instead.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psycopg
from psycopg.rows import dict_row

WORK = ROOT / "bench" / ".work" / "loads_per_hour"
PREFIX = "bench_lph"
WAIT_SECONDS = 3600


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _conninfo(home: Path, dbname: str) -> str | None:
    pid_file = home / "pgdata" / "postmaster.pid"  # line 4: port, line 5: socket directory
    lines = pid_file.read_text().splitlines() if pid_file.exists() else []
    if len(lines) < 5 or not lines[4].strip():
        return None
    return psycopg.conninfo.make_conninfo(
        host=lines[4].strip(), port=lines[3].strip(), dbname=dbname, user="postgres"
    )


def _query(home: Path, sql: str, params: tuple | dict = ()) -> list[dict]:
    conninfo = _conninfo(home, "dataloader")
    if conninfo is None:
        return []
    try:
        with psycopg.connect(conninfo, row_factory=dict_row, connect_timeout=5) as conn:
            cur = conn.execute(sql, params or None)
            return cur.fetchall() if cur.description else []
    except psycopg.Error:
        return []


def _wait(predicate, what: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        if predicate():
            return
        if process.poll() is not None:
            sys.exit(f"dataloader dev exited:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    sys.exit(f"timed out waiting for {what}:\n{log.read_text()[-3000:]}")


def _start_dev(
    home: Path,
    args: argparse.Namespace,
    run_batch_size: int = 1,
    dequeue: int = 1,
    launcher: str = "",
) -> tuple[subprocess.Popen, Path]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAKEBASE_", "DAGSTER_"))}
    env.update(
        DATALOADER_HOME=str(home),
        DATALOADER_LAKE_ROOT=str(home / "lake"),
        DATALOADER_PORT=str(_free_port()),
        DATALOADER_MASTER_SENSOR_INTERVAL_SECONDS=str(args.interval),
        DATALOADER_MASTER_SENSOR_BATCH_SIZE=str(args.batch),
        DATALOADER_SOURCE_CONCURRENCY=str(args.source_concurrency),
        DATALOADER_MAX_CONCURRENT_RUNS=str(args.max_concurrent_runs),
        DATALOADER_RUN_BATCH_SIZE=str(run_batch_size),
        DATALOADER_DEQUEUE_INTERVAL_SECONDS=str(dequeue),
    )
    if launcher:
        env["DATALOADER_RUN_LAUNCHER"] = launcher
    log = home.parent / f"dev_{home.name}.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "dagsters.local.cli", "dev"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return process, log


def _stop_dev(process: subprocess.Popen) -> None:
    for sig, grace in ((signal.SIGINT, 30), (signal.SIGTERM, 15)):
        if process.poll() is not None:
            break
        os.killpg(process.pid, sig)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _seed(home: Path, tables: int, sources: int = 1) -> list[str]:
    """``tables`` tiny source tables in the demo source database and their control rows, not yet
    due (made due at once afterwards, so seeding time is not counted). With ``sources`` > 1 the
    rows name that many source connections to the database, round robin."""
    source = _conninfo(home, "demo_source")
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {PREFIX}")
        for i in range(tables):
            conn.execute(
                f"CREATE TABLE {PREFIX}.t{i} AS SELECT g AS id, 'row ' || g AS name,"
                " now() AS updated_at FROM generate_series(1, 5) g"
            )
    demo = _query(
        home, "SELECT db_config_value FROM table_control WHERE control_key = 'demo.orders'"
    )
    config = json.dumps(demo[0]["db_config_value"])
    keys = [f"{PREFIX}.t{i}" for i in range(tables)]
    if sources > 1:
        target = json.loads(config)
        for s in range(sources):
            _query(
                home,
                "INSERT INTO source_connection (connection_name, db_type, host, port, database,"
                " user_name, tls_mode) VALUES (%s, 'postgresql', %s, %s, %s, %s, 'disable')"
                " RETURNING connection_name",
                (
                    f"bench_src{s}",
                    target["host"],
                    target["port"],
                    target["database"],
                    target["user"],
                ),
            )
        for i, key in enumerate(keys):
            _query(
                home,
                "INSERT INTO table_control (control_key, source_catalog, source_schema_name,"
                " source_table_name, destination_catalog, destination_schema_name,"
                " destination_table_name, db_type, connection_name, load_strategy,"
                " next_load_date_time, schedule_interval)"
                " VALUES (%s, 'demo_source', %s, %s, 'bench_lake', %s, %s, 'postgresql', %s,"
                " 'full', now() + interval '10 years', interval '1 day') RETURNING config_id",
                (key, PREFIX, f"t{i}", PREFIX, f"t{i}", f"bench_src{i % sources}"),
            )
        return keys
    for i, key in enumerate(keys):
        _query(
            home,
            "INSERT INTO table_control (control_key, source_catalog, source_schema_name,"
            " source_table_name, destination_catalog, destination_schema_name,"
            " destination_table_name, db_type, db_config_value, load_strategy,"
            " next_load_date_time, schedule_interval)"
            " VALUES (%s, 'demo_source', %s, %s, 'bench_lake', %s, %s, 'postgresql', %s::jsonb,"
            " 'full', now() + interval '10 years', interval '1 day') RETURNING config_id",
            (key, PREFIX, f"t{i}", PREFIX, f"t{i}", config),
        )
    return keys


KINDS = (  # (what the CPU is spent on, a text its process's command line holds)
    ("fork server (+ the run workers it forked)", "multiprocessing.forkserver"),
    ("run workers (+ their load scripts)", "execute_run"),
    ("load scripts (running)", "dataloader_pipe"),
    ("daemon: sensors, run queue, monitors", "dagster._daemon"),
    ("webserver", "dagster_webserver"),
    ("code server (+ the run workers it started)", "grpc"),
)


def _cpu_by_kind(pid: int, pgdata: Path | None = None) -> dict[str, float]:
    """CPU seconds per kind of process of the tree (a process's reaped children count with it:
    the code server's are the run workers that ended, with their load scripts)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return {}
    found: dict[str, float] = {}
    for proc in procs:
        try:
            cmdline = " ".join(proc.cmdline())
            t = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        kind = next((k for k, text in KINDS if text in cmdline), "dataloader dev, dagster dev")
        found[kind] = found.get(kind, 0.0) + t.user + t.system + t.children_user + t.children_system
    found["control database (PostgreSQL)"] = _tree_cpu_seconds(pid, pgdata) - sum(found.values())
    return found


def _tree_cpu_seconds(pid: int, pgdata: Path | None = None) -> float:
    """User + system CPU of ``pid`` and its descendants, their reaped children included, and of
    the PostgreSQL server on ``pgdata`` (pg_ctl detaches it from the tree) and its backends."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    if pgdata is not None:
        for proc in psutil.process_iter(["cmdline"]):
            cmdline = proc.info["cmdline"] or []
            if "-D" in cmdline and str(pgdata) in cmdline and proc not in procs:
                procs += [proc, *proc.children(recursive=True)]
    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def _percentiles(values: list[float]) -> str:
    if not values:
        return "n/a"
    values = sorted(values)
    p10 = values[int(0.1 * (len(values) - 1))]
    p90 = values[int(0.9 * (len(values) - 1))]
    return f"median {statistics.median(values):6.2f} s  (p10 {p10:5.2f}, p90 {p90:5.2f})"


PARTS = (
    "queued",  # enqueued -> the run coordinator starts it
    "worker start",  # run worker process: spawn, import and load the code location
    "step process",  # multiprocess executor only: a second process imports the code location
    "step start",  # resources, the rest of the plan, until the step starts
    "script start",  # the asset's bookkeeping, the Pipes script's process start and imports
    "load",  # the script's first log line -> its last ("... read N and wrote N rows")
    "recording",  # script end -> control row Succeeded -> step success
    "run exit",  # step success -> run success (the worker's shutdown)
)


def _run_times(instance, run_id: str) -> dict[str, float]:
    """First timestamp of each event kind (old and new names alike) and of the script's lines."""
    times: dict[str, float] = {}
    for entry in instance.all_logs(run_id):
        ev = entry.dagster_event
        kind = ev.event_type_value.replace("PIPELINE_", "RUN_") if ev else None
        text = entry.user_message or ""
        if ev is None and text.startswith("load of"):
            kind = "SCRIPT_FIRST_LINE" if "SCRIPT_FIRST_LINE" not in times else None
            times["SCRIPT_LAST_LINE"] = entry.timestamp
        if kind and kind not in times:
            times[kind] = entry.timestamp
    return times


def _breakdown(dagster_home: Path) -> dict[str, dict[str, list[float]]]:
    """Per-part seconds of every finished load run of the bench's tables, by executor (a run whose
    step ran in a process of its own: multiprocess; else in process)."""
    import dagster as dg

    from dagsters.policy.run_requests import TAG_CONTROL_KEY

    instance = dg.DagsterInstance.from_config(str(dagster_home))
    groups: dict[str, dict[str, list[float]]] = {}
    try:
        runs = instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.SUCCESS]))
        for run in runs:
            if not run.tags.get(TAG_CONTROL_KEY, "").startswith(PREFIX):
                continue
            t = _run_times(instance, run.run_id)
            need = ("RUN_ENQUEUED", "RUN_STARTING", "RUN_START", "STEP_START", "STEP_SUCCESS")
            if not all(k in t for k in (*need, "SCRIPT_FIRST_LINE", "RUN_SUCCESS")):
                continue
            executor = "multiprocess" if "STEP_WORKER_STARTING" in t else "in process"
            parts = groups.setdefault(executor, {k: [] for k in PARTS})
            step_process = t.get("STEP_WORKER_STARTED", 0) - t.get("STEP_WORKER_STARTING", 0)
            parts["queued"].append(t["RUN_STARTING"] - t["RUN_ENQUEUED"])
            parts["worker start"].append(t["RUN_START"] - t["RUN_STARTING"])
            parts["step process"].append(step_process)
            parts["step start"].append(t["STEP_START"] - t["RUN_START"] - step_process)
            parts["script start"].append(t["SCRIPT_FIRST_LINE"] - t["STEP_START"])
            parts["load"].append(t["SCRIPT_LAST_LINE"] - t["SCRIPT_FIRST_LINE"])
            parts["recording"].append(t["STEP_SUCCESS"] - t["SCRIPT_LAST_LINE"])
            parts["run exit"].append(t["RUN_SUCCESS"] - t["STEP_SUCCESS"])
            parts.setdefault("whole run", []).append(t["RUN_SUCCESS"] - t["RUN_STARTING"])
    finally:
        instance.dispose()
    return groups


def _print_breakdown(dagster_home: Path) -> None:
    for executor, parts in sorted(_breakdown(dagster_home).items()):
        whole = parts.pop("whole run")
        print(
            f"runs with the {executor} executor: whole run (starting -> success) "
            f"{_percentiles(whole)}  ({len(whole)} runs)"
        )
        total = sum(statistics.median(v) for v in parts.values() if v)
        for name, values in parts.items():
            share = f"{statistics.median(values) / total:4.0%}" if values and total else "  - "
            print(f"  {name:13s} {_percentiles(values)}  {share} of the sum of medians")


def _import_seconds(code: str, rounds: int = 3) -> list[float]:
    out = []
    for _ in range(rounds):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, env=_import_env())
        out.append(time.perf_counter() - started)
    return out


def _import_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAKEBASE_", "DAGSTER_"))}
    env["DATALOADER_HOME"] = str(WORK / "imports_home")
    return env


IMPORTS = {
    "code location (run worker)": "import dagsters.definitions",
    "Pipes load script (arrow)": (
        "import databricks_scripts.dataloader_pipe, databricks_scripts.engines.arrow.engine,"
        " databricks_scripts.sources.readers"
    ),
}


def _print_imports() -> None:
    for name, code in IMPORTS.items():
        seconds = _import_seconds(code)
        spread = f"min {min(seconds):.2f}, max {max(seconds):.2f}"
        print(f"import {name:30s} median {statistics.median(seconds):.2f} s ({spread})")


def _measure(
    args: argparse.Namespace, run_batch_size: int, home: Path, dequeue: int = 1, launcher: str = ""
) -> dict:
    """One ``dataloader dev`` in ``home``: warm up, make the tables due, wait for every load."""
    home.mkdir(parents=True)
    process, log = _start_dev(home, args, run_batch_size, dequeue, launcher)
    try:
        demo = "SELECT count(*) AS n FROM table_control WHERE control_key LIKE 'demo.%%'"
        _wait(
            lambda: (_query(home, demo) or [{"n": 0}])[0]["n"] == 3, "the demo rows", process, log
        )
        warm = (
            "SELECT count(*) AS n FROM historical_metadata WHERE control_key LIKE 'demo.%%'"
            " AND status IN ('Succeeded', 'Failed')"
        )
        _wait(lambda: _query(home, warm)[0]["n"] >= 3, "the demo loads (warm-up)", process, log)
        keys = _seed(home, args.tables, args.sources)
        cpu_at_due = _tree_cpu_seconds(process.pid, home / "pgdata")
        kinds_at_due = _cpu_by_kind(process.pid, home / "pgdata")
        due = _query(
            home,
            "UPDATE table_control SET next_load_date_time = now() WHERE control_key LIKE %s"
            " RETURNING extract(epoch FROM now())::float8 AS t",
            (f"{PREFIX}.%",),
        )[0]["t"]
        done_sql = (
            "SELECT count(*) AS n FROM historical_metadata WHERE control_key LIKE %s"
            " AND status IN ('Succeeded', 'Failed')"
        )
        _wait(
            lambda: _query(home, done_sql, (f"{PREFIX}.%",))[0]["n"] >= len(keys),
            f"{len(keys)} loads",
            process,
            log,
        )
        history = _query(
            home,
            "SELECT status, dagster_run_id, extract(epoch FROM ended_at)::float8 AS ended"
            " FROM historical_metadata WHERE control_key LIKE %s ORDER BY ended_at",
            (f"{PREFIX}.%",),
        )
        cpu = _tree_cpu_seconds(process.pid, home / "pgdata") - cpu_at_due
        kinds = {
            k: v - kinds_at_due.get(k, 0.0)
            for k, v in _cpu_by_kind(process.pid, home / "pgdata").items()
        }
    finally:
        _stop_dev(process)
    ended = [h["ended"] for h in history]
    return {
        "batch": run_batch_size,
        "loads": len(history),
        "failed": sum(h["status"] != "Succeeded" for h in history),
        "runs": len({h["dagster_run_id"] for h in history}),
        "seconds": ended[-1] - due,
        "cpu": cpu,
        "kinds": kinds,
        "steady": (len(ended) - 1) / (ended[-1] - ended[0]) * 3600
        if len(ended) > 1 and ended[-1] > ended[0]
        else None,
        "load_average": os.getloadavg()[0],
    }


def _print_measurement(m: dict, args: argparse.Namespace) -> None:
    print(
        f"DATALOADER_RUN_BATCH_SIZE={m['batch']}, DATALOADER_DEQUEUE_INTERVAL_SECONDS="
        f"{m['dequeue']}, DATALOADER_RUN_LAUNCHER={m['launcher'] or '(unset)'}: "
        f"{m['loads']} tiny-table loads "
        f"({m['failed']} failed) in {m['runs']} Dagster runs, {args.sources} source(s), "
        f"interval {args.interval} s, batch {args.batch}, per-source {args.source_concurrency}, "
        f"max runs {args.max_concurrent_runs}"
    )
    per_load = m["cpu"] / max(m["loads"], 1)
    print(
        f"  CPU of the whole dataloader dev from due to done: {m['cpu']:.1f} s, "
        f"{per_load:.2f} CPU-seconds per load ({os.cpu_count()} cores, load average at the "
        f"end {m['load_average']:.1f})"
    )
    for kind, seconds in sorted(m["kinds"].items(), key=lambda kv: -kv[1]):
        print(f"    {kind:<45} {seconds / max(m['loads'], 1):6.2f} CPU-s per load")
    rate = m["loads"] / m["seconds"] * 3600
    print(f"  all done {m['seconds']:.1f} s after due: {rate:,.0f} loads/hour")
    if m["steady"]:
        print(f"  steady rate (first to last completion): {m['steady']:,.0f} loads/hour")


def _print_side_by_side(measured: list[dict]) -> None:
    """The batch sizes against the first (the machine is shared: read the ratios)."""
    base = measured[0]
    base_rate = base["loads"] / base["seconds"] * 3600
    base_cpu = base["cpu"] / max(base["loads"], 1)
    print("side by side (ratios against the first measured):")
    print(
        "  run batch size  dequeue s  launcher    loads/hour  x rate  CPU-s/load  x CPU"
        "  runs/100 tables  failed"
    )
    for m in measured:
        rate = m["loads"] / m["seconds"] * 3600
        cpu = m["cpu"] / max(m["loads"], 1)
        runs = 100 * m["runs"] / max(m["loads"], 1)
        print(
            f"  {m['batch']:14d}  {m['dequeue']:9d}  {m['launcher'] or '(unset)':10}"
            f"  {rate:10,.0f}  {rate / base_rate:6.2f}  {cpu:10.2f}  "
            f"{cpu / base_cpu:5.2f}  {runs:15.0f}  {m['failed']:6d}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", type=int, default=60)
    parser.add_argument("--interval", type=int, default=60)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--source-concurrency", type=int, default=2)
    parser.add_argument("--max-concurrent-runs", type=int, default=10)
    parser.add_argument("--sources", type=int, default=1, help="source connections (round robin)")
    parser.add_argument(
        "--run-batch-sizes",
        default="1",
        help="DATALOADER_RUN_BATCH_SIZE values, comma separated, measured one after the other "
        "(a fresh dataloader dev each) and compared side by side, e.g. 1,10",
    )
    parser.add_argument(
        "--dequeue-intervals",
        default="1",
        help="DATALOADER_DEQUEUE_INTERVAL_SECONDS values, comma separated, each measured with "
        "every run batch size, e.g. 5,1 (5: Dagster's default)",
    )
    parser.add_argument(
        "--run-launchers",
        default="",
        help="DATALOADER_RUN_LAUNCHER values, comma separated, each measured with every run "
        "batch size, e.g. forkserver,default (unset: dataloader dev's default)",
    )
    parser.add_argument("--imports-only", action="store_true")
    parser.add_argument("--no-imports", action="store_true", help="skip the import timings")
    parser.add_argument(
        "--report-only", action="store_true", help="only the breakdown of the last run's runs"
    )
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    # A SIGTERM (e.g. from `timeout`) still stops `dataloader dev` in the finally below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.report_only:
        _print_breakdown(WORK / "home" / "dagster_home")
        return 0

    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    if not args.no_imports:
        _print_imports()
    if args.imports_only:
        return 0
    measured = []
    intervals = [int(v) for v in args.dequeue_intervals.split(",") if v.strip()]
    sizes = [int(v) for v in args.run_batch_sizes.split(",") if v.strip()]
    launchers = [v.strip() for v in args.run_launchers.split(",")]
    for size, dequeue, launcher in [(s, d, n) for s in sizes for d in intervals for n in launchers]:
        home = WORK / ("home" if size == 1 else f"home_batch{size}")
        if len(intervals) > 1:
            home = home.with_name(f"{home.name}_dequeue{dequeue}")
        if len(launchers) > 1:
            home = home.with_name(f"{home.name}_{launcher}")
        measured.append(_measure(args, size, home, dequeue, launcher))
        measured[-1].update(dequeue=dequeue, launcher=launcher)
        _print_measurement(measured[-1], args)
        # Runs of one table only: a batch run's parts are not split per table.
        _print_breakdown(home / "dagster_home")
    if len(measured) > 1:
        _print_side_by_side(measured)
    return 0


if __name__ == "__main__":
    sys.exit(main())
