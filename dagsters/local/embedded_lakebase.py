"""The embedded Lakebase: a PostgreSQL 16 server owned by the project, for local mode.

With no ``LAKEBASE_HOST`` set, DataLoader starts PostgreSQL from the ``pgserver`` wheel under the
project's data directory (``Settings.paths.home``), creates the control database, applies ``sql/``
and runs the seed it is given (the CLI and the code location give ``dagsters.local.demo``'s), so
that a first ``dagster dev`` has work to do.

pgserver listens on a Unix socket only; the socket directory doubles as the libpq ``host``.
Several processes (webserver, daemon, code server, run workers) may call
:func:`ensure_embedded_lakebase` at once: pgserver shares one server between them and stops it
when the last of them exits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from dagsters.local.migrate import apply_migrations

CONTROL_DATABASE = "dataloader"


@dataclass(frozen=True)
class EmbeddedServer:
    """Where the embedded server listens: a socket directory and port, user ``postgres``, no password."""

    socket_dir: str
    port: int

    def conninfo(self, database: str = CONTROL_DATABASE) -> str:
        return psycopg.conninfo.make_conninfo(
            host=self.socket_dir, port=self.port, dbname=database, user="postgres"
        )


_server_handles: dict[Path, object] = {}


def start_embedded_server(pgdata: Path, cleanup_mode: str | None = "stop") -> EmbeddedServer:
    """Start (or join) the embedded PostgreSQL server whose data lives in ``pgdata``."""
    import pgserver  # imported here: only local mode needs it

    pgdata = Path(pgdata).resolve()
    handle = _server_handles.get(pgdata)
    if handle is None:
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        handle = pgserver.get_server(pgdata, cleanup_mode=cleanup_mode)
        _server_handles[pgdata] = handle
    info = handle.get_postmaster_info()
    return EmbeddedServer(socket_dir=str(info.socket_dir), port=int(info.port))


def stop_embedded_server(pgdata: Path) -> None:
    handle = _server_handles.pop(Path(pgdata).resolve(), None)
    if handle is not None:
        handle.cleanup()


def ensure_database(server: EmbeddedServer, database: str) -> None:
    with psycopg.connect(server.conninfo("postgres"), autocommit=True) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (database,)
        ).fetchone()
        if not exists:
            try:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
            except psycopg.errors.DuplicateDatabase:
                pass  # another process created it between our check and our CREATE


def ensure_embedded_lakebase(
    home: Path, *, seed: Callable[[EmbeddedServer], None] | None = None
) -> EmbeddedServer:
    """Start the embedded server under ``home``, create the control database, migrate it, and run
    ``seed`` (the demo's, for local mode) on it."""
    server = start_embedded_server(Path(home) / "pgdata")
    ensure_database(server, CONTROL_DATABASE)
    apply_migrations(server.conninfo(CONTROL_DATABASE))
    if seed is not None:
        seed(server)
    return server
