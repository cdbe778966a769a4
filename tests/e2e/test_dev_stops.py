"""`dataloader dev` stops cleanly on SIGINT or SIGTERM sent to its PID alone, as on Ctrl-C.

A real `dataloader dev` (embedded Lakebase, dagster dev with webserver, daemon and code server) in
its own process group. The signal goes to the one PID a supervisor or `kill -INT <pid>` knows,
never to the group. Waits are bounds on "until it is up / until it is gone", not timings.
"""

from __future__ import annotations

import os
import signal
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import descendants, running_dev

UP_SECONDS = 240  # bounds only: a test fails only when nothing happens in this time
DOWN_SECONDS = 120


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_until_up(port: str, process, log: Path) -> None:
    deadline = time.monotonic() + UP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"dataloader dev exited early:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=5) as r:
                if r.status == 200 and "Dagster daemon" in "".join(_process_names(process.pid)):
                    return
        except OSError:
            pass
        time.sleep(1)
    pytest.fail(f"the UI never came up:\n{log.read_text()[-3000:]}")


def _process_names(pid: int) -> list[str]:
    names = []
    for child in descendants(pid):
        try:
            cmd = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        names.append("Dagster daemon" if "dagster._daemon" in cmd else cmd)
    return names


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_to_the_pid_stops_dagster_and_every_child(tmp_path, sig):
    with running_dev(tmp_path, {"DATALOADER_SENSORS_RUNNING": "0"}) as (_home, process, log):
        port = next(
            line.split("127.0.0.1:")[1].split()[0]
            for line in _lines_when(log, "Dagster UI: http://", process)
        )
        _wait_until_up(port, process, log)
        tree = descendants(process.pid)
        assert len(tree) >= 3  # dagster dev, its webserver, its daemon (and code servers)

        os.kill(process.pid, sig)  # the PID alone, not its process group
        assert process.wait(timeout=DOWN_SECONDS) == 0, log.read_text()[-3000:]
        deadline = time.monotonic() + DOWN_SECONDS
        while any(_alive(p) for p in tree) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = [p for p in tree if _alive(p)]
        assert not left, f"left running: {left}\n{log.read_text()[-3000:]}"
        text = log.read_text()
        assert "Dagster services shut down." in text
        assert "dataloader dev stopped." in text
        assert "Traceback" not in text


def _lines_when(log: Path, marker: str, process) -> list[str]:
    deadline = time.monotonic() + UP_SECONDS
    while time.monotonic() < deadline:
        lines = [line for line in log.read_text().splitlines() if marker in line]
        if lines:
            return lines
        if process.poll() is not None:
            pytest.fail(f"dataloader dev exited early:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    pytest.fail(f"{marker!r} never printed:\n{log.read_text()[-3000:]}")


def test_the_embedded_database_stops_too_after_runs_have_used_it(tmp_path):
    """Every load run holds the embedded PostgreSQL's handle while it runs; each must let go of
    it when it ends (a forked run worker too), or the server outlives `dataloader dev`."""
    import psycopg
    from helpers import embedded_conninfo

    with running_dev(tmp_path, {}) as (home, process, log):

        def demo_loaded() -> bool:
            conninfo = embedded_conninfo(home)
            if conninfo is None:  # the server is not up yet
                return False
            try:
                with psycopg.connect(conninfo) as db:
                    return (
                        db.execute(
                            "SELECT count(*) FROM table_control WHERE last_status = 'Succeeded'"
                        ).fetchone()[0]
                        >= 2
                    )
            except psycopg.Error:
                return False

        deadline = time.monotonic() + UP_SECONDS
        while not demo_loaded():
            assert time.monotonic() < deadline, f"no demo load:\n{log.read_text()[-3000:]}"
            assert process.poll() is None, log.read_text()[-3000:]
            time.sleep(1)
        postmaster = int((home / "pgdata" / "postmaster.pid").read_text().split()[0])
        assert _alive(postmaster)

        os.kill(process.pid, signal.SIGINT)
        assert process.wait(timeout=DOWN_SECONDS) == 0, log.read_text()[-3000:]
        deadline = time.monotonic() + DOWN_SECONDS
        while _alive(postmaster) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _alive(postmaster), "the embedded PostgreSQL outlived dataloader dev"
