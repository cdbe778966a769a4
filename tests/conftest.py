"""Shared fixtures: one embedded PostgreSQL for the session, a fresh database per test."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from dagsters.utils.embedded_lakebase import (
    EmbeddedServer,
    ensure_database,
    start_embedded_server,
    stop_embedded_server,
)

os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")


@pytest.fixture(scope="session")
def embedded_pg() -> Iterator[EmbeddedServer]:
    """The project's own embedded PostgreSQL, started once per test session.

    Its data lives outside pytest's basetemp: running as root, pgserver runs PostgreSQL as another
    user that must traverse the path, and pytest prunes old basetemps that a concurrent session
    may still be using.
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
    from dagsters.utils.migrate import apply_migrations

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
