"""Benchmark: the CPU one tiny load costs in its own process (the load script), against a baseline.

A tiny table's load is mostly the script's start: the interpreter, pyarrow, deltalake, ADBC and
the loader's modules. This bench loads a 100-row keyed table (int key, text, numeric(12,2),
timestamptz cursor) from the embedded PostgreSQL into a fresh local Delta table with the script
of this tree and, with ``--baseline-ref REF``, with the script of git ``REF`` (its
``databricks_scripts`` extracted with ``git archive``; the script puts its own package first on
``sys.path``), taking turns, each load a fresh process. It prints the script process's CPU
seconds (user + system, from ``getrusage`` of the reaped child) and wall seconds, medians, and
the ratio this tree / baseline.

    .venv/bin/python bench/bench_load_script.py [--rounds 11] [--rows 100] [--baseline-ref main]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_floor import _build_source, _params
from bench_loader import _run_loader
from bench_run_worker_import import compiled, tree_at

from dagsters.local.embedded_lakebase import (
    ensure_database,
    start_embedded_server,
    stop_embedded_server,
)

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path("databricks_scripts") / "dataloader_pipe.py"


def _scripts(work: Path, ref: str | None) -> dict[str, Path]:
    packages = ["databricks_scripts"]
    scripts = {"this tree": compiled(ROOT, packages) / SCRIPT}
    if ref:
        scripts[ref] = tree_at(ref, packages, work / "baseline") / SCRIPT
    return scripts


def _one_load(script: Path, params: dict, rows: int, work: Path) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one load by ``script`` into a fresh lake."""
    lake = work / "lake"
    shutil.rmtree(lake, ignore_errors=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall, _, meta = _run_loader(params, work, lake, script)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert meta["rows_written"] == rows, meta
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return cpu, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--rows", type=int, default=100)
    parser.add_argument("--baseline-ref", help="a git ref of this repository, e.g. main")
    args = parser.parse_args()
    os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())
    with tempfile.TemporaryDirectory(prefix="dl_script_") as tmp:
        work = Path(tmp)
        scripts = _scripts(work, args.baseline_ref)
        server = start_embedded_server(work / "pgdata", cleanup_mode="stop")
        try:
            ensure_database(server, "bench")
            conninfo = server.conninfo("bench")
            _build_source(conninfo, args.rows)
            params = _params(conninfo_to_dict(conninfo))
            runs: dict[str, list[tuple[float, float]]] = {name: [] for name in scripts}
            for i in range(args.rounds):
                order = list(scripts.items())
                for name, script in order if i % 2 == 0 else order[::-1]:
                    runs[name].append(_one_load(script, params, args.rows, work))
        finally:
            stop_embedded_server(work / "pgdata")
    print(f"{args.rows:,}-row keyed load, {args.rounds} rounds, a fresh script process each")
    medians = {}
    for name, got in runs.items():
        cpu, wall = [c for c, _ in got], [w for _, w in got]
        medians[name] = statistics.median(cpu)
        print(
            f"  {name:<20} CPU median {medians[name]:.3f} s (min {min(cpu):.3f}, max "
            f"{max(cpu):.3f}), wall median {statistics.median(wall):.3f} s"
        )
    if args.baseline_ref:
        ratio = medians["this tree"] / medians[args.baseline_ref]
        print(f"  this tree / {args.baseline_ref} (CPU): {ratio:.2f}")


if __name__ == "__main__":
    main()
