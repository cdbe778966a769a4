"""What a run worker imports before its step starts: wall and CPU seconds, and where they go.

Each round starts fresh Python processes, interleaved so that all of them see the same machine:

- ``python`` alone (interpreter start, the floor of any process);
- ``import dagster`` (what Dagster itself costs; the code location cannot make it cheaper);
- the code location as a run worker loads it: ``import dagsters.definitions`` and
  ``defs.get_repository_def()``, in this tree;
- a whole run worker's imports as Dagster's default launcher starts one (a fresh process: Dagster's
  run execution, the SQLite storage modules, then the code location), and as ``dataloader dev``'s
  fork-server launcher starts one (``dagsters/local/run_launcher.py``): forked from a process that
  has imported the launcher's ``PRELOAD``, timed in the forked child only;
- with ``--baseline-ref REF``, the same for the code location at git ``REF`` (``main``, a commit):
  its ``dagsters`` and ``databricks_scripts`` are extracted with ``git archive`` into a temporary
  directory and imported from there, with this tree's virtual environment. Both trees are
  byte-compiled first, so neither pays for compiling its modules.

It prints the medians, the ratios against ``import dagster`` and against the baseline measured in
the same run, and one ``-X importtime`` split per code location (self time summed by package).

    .venv/bin/python bench/bench_run_worker_import.py [--rounds 7] [--baseline-ref main]

Goal (issue 28): <= 1.5 s on an idle machine. CPU seconds move less with other load on the
machine than wall seconds; both are printed. The module counts that keep it from growing back are
a test (tests/test_run_worker_imports.py), not this bench.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dagsters.local.run_launcher import PRELOAD

ROOT = Path(__file__).resolve().parents[1]
LOAD = "import dagsters.definitions as d; d.defs.get_repository_def()"
# A spawned worker imports the SQLite storage modules the fork server preloads.
STORAGE = [module for module in PRELOAD if "._core.storage." in module]
SPAWNED = f"import dagster._grpc.impl, {', '.join(STORAGE)}; {LOAD}"
# Prints the forked child's own wall and CPU seconds (a child's CPU count starts at the fork).
FORKED = f"""
import importlib, os, time
from dagsters.local.run_launcher import PRELOAD
for module in PRELOAD:
    importlib.import_module(module)
read, write = os.pipe()
if os.fork() == 0:
    started = time.perf_counter()
    {LOAD}
    os.write(write, f"{{time.perf_counter() - started}} {{time.process_time()}}".encode())
    os._exit(0)
os.wait()
print(os.read(read, 100).decode())
"""


def _env(home: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAKEBASE_", "DAGSTER_"))}
    env["DATALOADER_HOME"] = home  # local mode; nothing connects while the code location loads
    env.pop("PYTHONPATH", None)
    return env


def _run(code: str, cwd: Path, env: dict[str, str], *flags: str) -> tuple[float, float, str]:
    if code == FORKED:
        out = subprocess.run(
            [sys.executable, "-c", code], check=True, cwd=cwd, env=env, capture_output=True
        )
        wall, cpu = (float(v) for v in out.stdout.split())
        return wall, cpu, ""
    return _run_fresh(code, cwd, env, *flags)


def _run_fresh(code: str, cwd: Path, env: dict[str, str], *flags: str) -> tuple[float, float, str]:
    """(wall s, CPU s of the child, stderr) of one fresh ``python -c code`` in ``cwd``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, *flags, "-c", code],
        check=False,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode:
        raise SystemExit(f"failed in {cwd}: {code}\n{out.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, out.stderr


def _split(importtime: str) -> dict[str, float]:
    """Self import time (s) summed by who pays it."""
    groups: dict[str, float] = {}
    for line in importtime.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)", line)
        if not m:
            continue
        top = m.group(2).split(".")[0]
        if top in ("dagsters", "databricks_scripts"):
            group = "code location's own modules"
        elif top.startswith("dagster"):
            group = "dagster*"
        elif top.startswith("psycopg"):
            group = "psycopg*"
        elif top in sys.stdlib_module_names:
            group = "standard library"
        else:
            group = "other packages"
        groups[group] = groups.get(group, 0.0) + int(m.group(1)) / 1e6
    return groups


def tree_at(ref: str, packages: list[str], into: Path) -> Path:
    """``packages`` of this repository at git ``ref``, extracted (``git archive``) into ``into``
    and byte-compiled; returns ``into``."""
    into.mkdir()
    archive = subprocess.run(
        ["git", "archive", ref, *packages], cwd=ROOT, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return compiled(into, packages)


def compiled(tree: Path, packages: list[str]) -> Path:
    """``tree`` with ``packages`` byte-compiled, so no measured process pays for compiling."""
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", *(str(tree / p) for p in packages)], check=True
    )
    return tree


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--baseline-ref", help="a git ref of this repository, e.g. main")
    args = parser.parse_args()

    home = tempfile.mkdtemp(prefix="dataloader-bench-import-")
    env = _env(home)
    packages = ["dagsters", "databricks_scripts"]
    args.baseline = (
        tree_at(args.baseline_ref, packages, Path(home) / "baseline") if args.baseline_ref else None
    )
    compiled(ROOT, packages)
    variants: dict[str, tuple[str, Path]] = {
        "python alone": ("pass", ROOT),
        "import dagster": ("import dagster", ROOT),
        "code location (this tree)": (LOAD, ROOT),
        "run worker, spawned": (SPAWNED, ROOT),
        "run worker, forked": (FORKED, ROOT),
    }
    if args.baseline:
        variants[f"code location ({args.baseline_ref})"] = (LOAD, args.baseline.resolve())
        check = "import dagsters, sys; print(dagsters.__file__)"
        out = subprocess.run(
            [sys.executable, "-c", check],
            cwd=args.baseline,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        if not out.strip().startswith(str(args.baseline.resolve())):
            raise SystemExit(f"the baseline's dagsters is not imported from {args.baseline}: {out}")

    walls: dict[str, list[float]] = {name: [] for name in variants}
    cpus: dict[str, list[float]] = {name: [] for name in variants}
    _run(LOAD, ROOT, env)  # warm the file cache once; not counted
    for _ in range(args.rounds):
        for name, (code, cwd) in variants.items():
            wall, cpu, _ = _run(code, cwd, env)
            walls[name].append(wall)
            cpus[name].append(cpu)

    load = os.getloadavg()
    print(
        f"{args.rounds} rounds, fresh process each; load average {load[0]:.1f} {load[1]:.1f} "
        f"{load[2]:.1f} on {os.cpu_count()} cores"
    )
    dagster_wall = statistics.median(walls["import dagster"])
    dagster_cpu = statistics.median(cpus["import dagster"])
    for name in variants:
        w, c = statistics.median(walls[name]), statistics.median(cpus[name])
        print(
            f"{name:28s} wall median {w:5.2f} s (min {min(walls[name]):4.2f}, max "
            f"{max(walls[name]):4.2f})  cpu median {c:5.2f} s   x import dagster: wall "
            f"{w / dagster_wall:4.2f}, cpu {c / dagster_cpu:4.2f}"
        )
    if args.baseline:
        for what, series in (("wall", walls), ("cpu", cpus)):
            ratio = statistics.median(series["code location (this tree)"]) / statistics.median(
                series[f"code location ({args.baseline_ref})"]
            )
            print(f"this tree / {args.baseline_ref} ({what}): {ratio:4.2f}")

    for name, (code, cwd) in variants.items():
        if not name.startswith(("code location", "run worker, spawned")):
            continue
        _, _, stderr = _run(code, cwd, env, "-X", "importtime")
        groups = _split(stderr)
        total = sum(groups.values())
        parts = ", ".join(f"{g} {s:.2f}" for g, s in sorted(groups.items(), key=lambda x: -x[1]))
        print(f"-X importtime {name}: {total:.2f} s of imports: {parts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
