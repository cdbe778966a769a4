"""Apply the numbered DDL files in ``sql/`` to a control database, each exactly once.

    python -m dagsters.local.migrate --conninfo "host=... dbname=dataloader user=... sslmode=require"
    python -m dagsters.local.migrate            # the LAKEBASE_* settings, password or OAuth login

Each file runs whole, in its own transaction, and is recorded in ``schema_migrations`` with its
sha256, so a second run applies nothing and a failed file leaves the database as it was.
A file that was edited after it was applied is refused: add a new numbered file instead.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import psycopg

from dagsters.resources.databricks_workspace import DatabricksWorkspaceResource
from dagsters.resources.lakebase import lakebase_connection
from dagsters.settings import PROJECT_ROOT, Settings, load_settings
from dagsters.utils.lakebase_client import LakebaseError
from databricks_scripts.redaction import redact

SQL_DIR = PROJECT_ROOT / "sql"
_NUMBERED = re.compile(r"^(\d+)_.+\.sql$")
# Any fixed number works; it only has to be the same in every process that migrates.
_ADVISORY_LOCK_KEY = 0x44415441_4C4F4144 & 0x7FFFFFFFFFFFFFFF  # "DATALOAD"

log = logging.getLogger(__name__)


class MigrationError(RuntimeError):
    """A migration file could not be applied, or an applied file was changed afterwards."""


def migration_files(sql_dir: Path | str = SQL_DIR) -> list[Path]:
    """Numbered ``NNN_name.sql`` files in numeric order; other files are ignored."""
    files = [p for p in Path(sql_dir).iterdir() if p.is_file() and _NUMBERED.match(p.name)]
    numbers: dict[int, str] = {}
    for path in files:
        number = int(_NUMBERED.match(path.name).group(1))
        if number in numbers:
            raise MigrationError(
                f"two migration files share number {number}: {numbers[number]} and {path.name}"
            )
        numbers[number] = path.name
    return sorted(files, key=lambda p: int(_NUMBERED.match(p.name).group(1)))


def apply_migrations(
    conninfo: str,
    sql_dir: Path | str = SQL_DIR,
    *,
    connect_kwargs: dict | None = None,
    connection_class: type[psycopg.Connection] | None = None,
) -> list[str]:
    """Apply the files not yet recorded; return their names (empty when up to date).

    ``connection_class`` logs in another way (the Lakebase resource's OAuth connection).
    """
    files = migration_files(sql_dir)
    applied_now: list[str] = []
    secrets = _secrets(conninfo, connect_kwargs)
    connect = (connection_class or psycopg.Connection).connect
    try:
        conn = connect(conninfo, autocommit=True, **(connect_kwargs or {}))
    except (psycopg.Error, LakebaseError) as exc:
        raise MigrationError(
            f"cannot connect to the control database: {redact(exc, secrets)}"
        ) from None
    with conn:
        # Several processes (webserver, daemon, code server) may start at once; one migrates,
        # the others wait here and then find everything applied.
        conn.execute("SELECT pg_advisory_lock(%s)", (_ADVISORY_LOCK_KEY,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " filename text PRIMARY KEY,"
                " sha256 text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            recorded = dict(
                conn.execute("SELECT filename, sha256 FROM schema_migrations").fetchall()
            )
            for path in files:
                text = path.read_text(encoding="utf-8")
                digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
                if path.name in recorded:
                    if recorded[path.name] != digest:
                        raise MigrationError(
                            f"{path.name} was changed after it was applied (recorded sha256 "
                            f"{recorded[path.name][:12]}..., file now {digest[:12]}...); "
                            "put the change in a new numbered file instead"
                        )
                    continue
                _apply_one(conn, path.name, text, digest, secrets)
                applied_now.append(path.name)
                log.info("applied migration %s", path.name)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_ADVISORY_LOCK_KEY,))
    return applied_now


def _apply_one(
    conn: psycopg.Connection, name: str, text: str, digest: str, secrets: list[str]
) -> None:
    try:
        with conn.transaction():
            # No parameters: psycopg sends the file as one simple query, so it may hold many
            # statements, dollar-quoted bodies and literal '%' signs without any splitting.
            conn.execute(text)
            conn.execute(
                "INSERT INTO schema_migrations (filename, sha256) VALUES (%s, %s)", (name, digest)
            )
    except psycopg.Error as exc:
        raise MigrationError(
            f"migration {name} failed and was rolled back: {redact(exc, secrets)}"
        ) from None


def _secrets(conninfo: str, connect_kwargs: dict | None) -> list[str]:
    found = [str((connect_kwargs or {}).get("password") or "")]
    try:
        found.append(psycopg.conninfo.conninfo_to_dict(conninfo).get("password") or "")
    except psycopg.Error:
        pass
    return [s for s in found if s]


def migrate_control_database(settings: Settings, sql_dir: Path | str = SQL_DIR) -> list[str]:
    """Apply ``sql/`` to the Lakebase ``settings`` name, logging in as the resource does."""
    if settings.lakebase.embedded:
        raise MigrationError("LAKEBASE_HOST is not set; pass --conninfo or set LAKEBASE_*")
    try:
        connection = lakebase_connection(
            settings.lakebase, workspace=DatabricksWorkspaceResource.from_settings(settings)
        )
    except LakebaseError as exc:
        raise MigrationError(str(exc)) from None
    return apply_migrations(
        connection.conninfo,
        sql_dir,
        connect_kwargs=connection.connect_kwargs,
        connection_class=connection.connection_class,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dagsters.local.migrate",
        description="Apply sql/*.sql to the DataLoader control database (each file once).",
    )
    parser.add_argument(
        "--conninfo",
        help="libpq connection string or URI; default: the LAKEBASE_* settings (LAKEBASE_HOST, "
        "LAKEBASE_PORT, LAKEBASE_DATABASE, LAKEBASE_USER, LAKEBASE_PASSWORD or OAuth, "
        "LAKEBASE_SSLMODE default require)",
    )
    parser.add_argument("--sql-dir", default=str(SQL_DIR), help="directory of numbered .sql files")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.conninfo:
            applied = apply_migrations(args.conninfo, args.sql_dir)
        else:
            applied = migrate_control_database(load_settings(), args.sql_dir)
    except MigrationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"applied {len(applied)} file(s): {', '.join(applied)}" if applied else "up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
