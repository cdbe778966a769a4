"""Shared fixtures: one embedded PostgreSQL for the session, fresh databases, a LakebaseClient,
a Dagster instance, and an environment without AI settings."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

from dagsters.local.embedded_lakebase import (
    EmbeddedServer,
    ensure_database,
    start_embedded_server,
    stop_embedded_server,
)

if TYPE_CHECKING:
    import dagster as dg

    from dagsters.utils.lakebase_client import LakebaseClient

os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")

# The Databricks stand-in fixtures every Databricks test shares (tests/databricks_fixtures.py).
pytest_plugins = ["databricks_fixtures"]

# Old per-run temporary folders (below) are removed once no run can still be using them.
BASETEMP_PREFIX = "dataloader-pytest-"
BASETEMP_KEEP_SECONDS = 24 * 3600


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Give every test run its own basetemp outside ``/tmp/pytest-of-<user>``.

    Running as root, the embedded PostgreSQL (the session's and each ``dataloader dev`` a test
    starts under its ``tmp_path``) runs as another user, which must traverse every folder above its
    pgdata; the wheel adds ``o+rx`` to them when it initialises. But every pytest process on the
    machine (each xdist worker, each concurrent run) resets ``/tmp/pytest-of-<user>`` to 0700 when it
    first asks for a temporary folder, so a server started in a test's ``tmp_path`` failed at random
    with ``pg_ctl: could not access directory ".../pgdata": Permission denied`` whenever another
    pytest process started meanwhile. A basetemp of our own is never reset; xdist hands each worker
    a folder below it. Runs a person starts with ``--basetemp`` keep theirs.
    """
    if config.option.basetemp or hasattr(config, "workerinput"):
        return
    top = Path(tempfile.gettempdir())
    now = time.time()
    for old in top.glob(f"{BASETEMP_PREFIX}*"):
        try:
            if now - old.stat().st_mtime > BASETEMP_KEEP_SECONDS:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass  # another run removed it first
    config.option.basetemp = tempfile.mkdtemp(prefix=BASETEMP_PREFIX)


@pytest.fixture(scope="session")
def embedded_pg() -> Iterator[EmbeddedServer]:
    """The project's own embedded PostgreSQL, started once per test session.

    Its data lives outside pytest's basetemp: running as root, the embedded server runs PostgreSQL
    as another user that must traverse the path, and pytest prunes old basetemps that a concurrent
    session may still be using. That user is created under a lock before the server starts
    (dagsters/local/system_user.py), so pytest-xdist workers starting at once agree on it.
    """
    top = Path(tempfile.mkdtemp(prefix="dataloader-test-pg-"))
    pgdata = top / "pgdata"
    server = start_embedded_server(pgdata, cleanup_mode="stop")
    yield server
    stop_embedded_server(pgdata)
    shutil.rmtree(top, ignore_errors=True)


def _fresh_database(server: EmbeddedServer, prefix: str) -> Iterator[str]:
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    ensure_database(server, name)
    yield server.conninfo(name)
    with psycopg.connect(server.conninfo("postgres"), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture
def control_db(embedded_pg: EmbeddedServer) -> Iterator[str]:
    """Conninfo of a new, migrated control database (table_control, historical_metadata, views)."""
    from dagsters.local.migrate import apply_migrations

    for conninfo in _fresh_database(embedded_pg, "control"):
        apply_migrations(conninfo)
        yield conninfo


@pytest.fixture
def source_db(embedded_pg: EmbeddedServer) -> Iterator[str]:
    """Conninfo of a new, empty database to hold source tables."""
    yield from _fresh_database(embedded_pg, "source")


@pytest.fixture
def lake_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh ``DATALOADER_LAKE_ROOT`` for local Delta destinations."""
    root = tmp_path / "lake"
    root.mkdir()
    monkeypatch.setenv("DATALOADER_LAKE_ROOT", str(root))
    return root


@pytest.fixture
def db(control_db: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection to ``control_db`` returning dict rows."""
    with psycopg.connect(control_db, autocommit=True, row_factory=dict_row) as conn:
        yield conn


@pytest.fixture
def client(control_db: str) -> Iterator[LakebaseClient]:
    """A LakebaseClient on ``control_db``."""
    from dagsters.utils.lakebase_client import LakebaseClient

    with LakebaseClient(control_db) as lakebase:
        yield lakebase


@pytest.fixture
def no_ai_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """No AI setting in the environment (helpers.clear_ai_settings): the retry rules decide."""
    from helpers import clear_ai_settings

    clear_ai_settings(monkeypatch)


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    """A throwaway Dagster instance (modules needing one on a known path define their own)."""
    import dagster as dg

    with dg.instance_for_test() as instance:
        yield instance


@pytest.fixture
def source(source_db: str) -> Iterator[psycopg.Connection]:
    """``source_db`` holding public.orders: 25 rows, hourly updated_at from 2024-01-01 01:00."""
    with psycopg.connect(source_db, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE public.orders (order_id int PRIMARY KEY, amount numeric(10,2),"
            " updated_at timestamptz NOT NULL)"
        )
        conn.execute(
            "INSERT INTO public.orders SELECT g, g * 1.5, timestamptz '2024-01-01' + g * interval"
            " '1 hour' FROM generate_series(1, 25) g"
        )
        yield conn
