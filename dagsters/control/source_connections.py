"""Where a load may connect, and with which secret: a control row resolved against its connection.

A ``source_connection`` (sql/007) is one source database, governed by the connection-admin role:
db_type, host, port, database, user, TLS mode and the secret's scope/key. A control row names one
(``connection_name``). A row that still carries an inline host in ``db_config_value`` keeps
working only while its secret is *bound* to exactly that host/port/database: some connection holds
the same scope/key and points there. Anything else is refused here, before the load script runs,
so no secret is ever resolved for a destination its owner did not choose.

The result is the wire form the loader receives (``db_config_value`` restricted to
``contract.CONNECTION_KEYS``, ``db_kv_scope``); it names the secret, never holds it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dagsters.control.connection import ControlDatabase
from dagsters.control.rows import ControlRow
from databricks_scripts.contract import (
    CONNECTION_KEYS,
    DEFAULT_PORTS,
    TLS_MODES,
    is_loopback_host,
    tls_mode_default,
)

_SECURE = ("require", "verify-ca", "verify-full")


class SourceConnectionError(ValueError):
    """A control row names no usable source, or a secret it is not bound to (message says why)."""


@dataclass(frozen=True)
class ResolvedSource:
    """The source settings a load sends to the script (no secret value, only its name)."""

    db_config_value: dict[str, Any]
    db_kv_scope: str | None
    connection_name: str | None
    # The secret (scope, key) whose value keys columns_hash's HMAC (sql/017): the connection's,
    # or the binding connection's for an inline row; None when it names none.
    hash_secret: tuple[str, str] | None = None


def _hash_secret(connection: Mapping[str, Any]) -> tuple[str, str] | None:
    scope, key = connection.get("hash_secret_scope"), connection.get("hash_secret_key")
    if bool(scope) != bool(key):
        raise SourceConnectionError(
            f"source_connection {connection['connection_name']!r} names only one of "
            "hash_secret_scope and hash_secret_key: a connection admin sets both or neither"
        )
    return (str(scope), str(key)) if scope else None


def _port(db_type: str, value: object) -> int | None:
    if value in (None, ""):
        return DEFAULT_PORTS.get(db_type)
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise SourceConnectionError(f"db_config_value port {value!r} is not a number") from None


def _stricter(row_mode: str | None, base: str | None, where: str) -> str | None:
    """The row's sslmode when it is at least as strict as ``base``; refused when weaker."""
    if not row_mode:
        return base
    if row_mode not in TLS_MODES:
        raise SourceConnectionError(f"sslmode {row_mode!r} is not one of {', '.join(TLS_MODES)}")
    if base and TLS_MODES.index(row_mode) < TLS_MODES.index(base):
        raise SourceConnectionError(
            f"sslmode {row_mode!r} in db_config_value is weaker than {base!r} ({where}); TLS can "
            "only be relaxed on the source_connection, by its owner"
        )
    return row_mode


def connection_config(connection: Mapping[str, Any]) -> dict[str, Any]:
    """The wire ``db_config_value`` of one source_connection row."""
    db_type = connection["db_type"]
    config: dict[str, Any] = {
        "connection": connection["connection_name"],
        "host": connection["host"],
        "port": _port(db_type, connection.get("port")),
        "database": connection.get("database"),
        "user": connection.get("user_name"),
        "password_secret": connection.get("secret_key"),
        "sslmode": tls_mode_default(connection["host"], connection.get("tls_mode")),
        "sslrootcert": connection.get("tls_ca_file"),
        "connect_timeout": connection.get("connect_timeout_seconds"),
        "foreign_catalog": connection.get("foreign_catalog"),
    }
    return {k: v for k, v in config.items() if v not in (None, "")}


# Keys only a source_connection sets (its name; its foreign catalog, sql/019), never a row's own
# db_config_value.
_CONNECTION_ONLY = ("connection", "foreign_catalog")


def _check_keys(config: Mapping[str, Any]) -> None:
    unknown = sorted(str(k) for k in config if k not in CONNECTION_KEYS or k in _CONNECTION_ONLY)
    if unknown:
        allowed = ", ".join(k for k in CONNECTION_KEYS if k not in _CONNECTION_ONLY)
        why = (
            "; foreign_catalog is a source_connection's, set by connection admins"
            if "foreign_catalog" in unknown
            else ""
        )
        raise SourceConnectionError(
            f"db_config_value key {unknown[0]!r} is not allowed (allowed: {allowed}){why}"
        )


def _binding(
    row: ControlRow, config: Mapping[str, Any], bindings: Sequence[Mapping[str, Any]]
) -> Mapping[str, Any]:
    """The connection that binds the row's secret to the row's own host/port/database/user.

    Exact matches: the user logs in with that secret, and every key a driver may take the
    database from (``database``; ``service_name``, which Oracle and the Spark engine's JDBC URL
    prefer) must name the connection's database.
    """
    db_type = row.db_type
    host = str(config.get("host") or "")
    port = _port(db_type, config.get("port"))
    user = config.get("user") or None
    databases = {config.get("database") or None, config.get("service_name") or None}
    if len(databases) > 1 and None in databases:
        databases.discard(None)
    database = next(iter(databases)) if len(databases) == 1 else None
    for connection in bindings:
        if (
            len(databases) == 1
            and connection["db_type"] == db_type
            and str(connection["host"]).lower() == host.lower()
            and _port(db_type, connection.get("port")) == port
            and (connection.get("database") or None) == database
            and (connection.get("user_name") or None) == user
        ):
            return connection
    named = "/".join(sorted(str(d) for d in databases if d)) or ""
    raise SourceConnectionError(
        f"secret {config.get('password_secret')!r} of scope {row.db_kv_scope!r} is not "
        f"bound to {db_type} {host}:{port}/{named} as user {user!r}, so it is not sent there. "
        "Fix: name a source_connection in connection_name (and remove host, port, database, user "
        "and password_secret from db_config_value); a connection admin creates one for a new "
        "database (docs/secrets.md)"
    )


def resolve_source(
    row: ControlRow,
    *,
    connection: Mapping[str, Any] | None,
    bindings: Sequence[Mapping[str, Any]] = (),
) -> ResolvedSource:
    """The load's source settings from a control row and its connection (or secret bindings).

    ``connection``: the row's ``connection_name`` connection (None when the row names none).
    ``bindings``: the connections holding the row's inline secret (same scope and key).
    """
    db_type = row.db_type
    config = dict(row.db_config_value or {})
    name = row.connection_name
    if name:
        if connection is None:
            raise SourceConnectionError(f"source_connection {name!r} does not exist")
        if connection["db_type"] != db_type:
            raise SourceConnectionError(
                f"db_type {db_type!r} of the row differs from {connection['db_type']!r} of "
                f"source_connection {name!r}"
            )
        if config:
            raise SourceConnectionError(
                f"the row names source_connection {name!r}; remove {', '.join(sorted(config))} "
                "from db_config_value (the connection holds them)"
            )
        return ResolvedSource(
            connection_config(connection),
            connection.get("secret_scope"),
            name,
            _hash_secret(connection),
        )
    _check_keys(config)
    host = config.get("host")
    if not config.get("password_secret"):
        if db_type != "databricks" and not is_loopback_host(host):
            base = tls_mode_default(host, None)
            config["sslmode"] = _stricter(config.get("sslmode"), base, "a non-loopback host")
        return ResolvedSource(config, row.db_kv_scope, None)
    if not row.db_kv_scope:
        raise SourceConnectionError(
            "db_config_value names a password_secret but db_kv_scope is empty"
        )
    bound = _binding(row, config, bindings)
    base = tls_mode_default(bound["host"], bound.get("tls_mode"))
    where = f"source_connection {bound['connection_name']!r}"
    config["sslmode"] = _stricter(config.get("sslmode"), base, where)
    # The certificate that proves the server is the connection's: a row cannot swap it (a CA of
    # its choosing, or 'system') while keeping verify-ca / verify-full.
    pinned = bound.get("tls_ca_file") or None
    if (config.get("sslrootcert") or None) not in (None, pinned):
        raise SourceConnectionError(
            f"sslrootcert in db_config_value replaces the certificate of {where}; TLS settings "
            "are the connection's, changed only by its owner: remove sslrootcert"
        )
    config.pop("sslrootcert", None)
    if pinned:
        config["sslrootcert"] = pinned
    config = {k: v for k, v in config.items() if v is not None}
    return ResolvedSource(config, row.db_kv_scope, bound["connection_name"], _hash_secret(bound))


class SourceConnectionsSql(ControlDatabase):
    """Reads ``source_connection`` (the service role may read it; nobody else needs to)."""

    def resolve_source(self, row: ControlRow) -> ResolvedSource:
        """:func:`resolve_source` with the row's connection and its secret's bindings (the
        ``source_connection`` rows stay dicts: only this module reads them)."""
        connection = None
        bindings: list[dict] = []
        config = row.db_config_value or {}
        with self._transaction("resolve_source") as conn:
            if row.connection_name:
                connection = conn.execute(
                    "SELECT * FROM source_connection WHERE connection_name = %s",
                    (row.connection_name,),
                ).fetchone()
            elif config.get("password_secret") and row.db_kv_scope:
                bindings = conn.execute(
                    "SELECT * FROM source_connection WHERE secret_scope = %s AND secret_key = %s"
                    " ORDER BY connection_name",
                    (row.db_kv_scope, str(config["password_secret"])),
                ).fetchall()
        return resolve_source(row, connection=connection, bindings=bindings)


def fit_compute(row: ControlRow, compute: Any, resolved: ResolvedSource) -> ResolvedSource:
    """``resolved`` when the loads' compute (``compute``: the ``pipes_databricks`` resource, its
    ``execution`` and ``serverless``) can read the row's source; refused before anything runs
    otherwise.

    Serverless compute has no plain JDBC reads (``spark.read.format("jdbc")``): a database outside
    Databricks is reached there through Unity Catalog (Lakehouse Federation): a source_connection
    whose ``foreign_catalog`` names the database's foreign catalog (sql/019), read by the Spark
    engine as a Unity Catalog table, or a row of db_type ``databricks``. Standard access mode keeps
    JDBC reads (docs/databricks.md).
    """
    serverless = getattr(compute, "execution", None) == "databricks" and bool(
        getattr(compute, "serverless", False)
    )
    db_type = row.db_type
    federated = bool(resolved.db_config_value.get("foreign_catalog"))
    if not serverless or db_type == "databricks" or federated:
        return resolved
    via = (
        f"source_connection {resolved.connection_name!r}"
        if resolved.connection_name
        else "a source_connection (connection_name)"
    )
    raise SourceConnectionError(
        f"its {db_type} source would be read with spark.read.format('jdbc'), which serverless "
        "compute (DATALOADER_DATABRICKS_SERVERLESS) does not run, so nothing was submitted. "
        "Fix: create a Unity Catalog connection and foreign catalog for the database (Lakehouse "
        f"Federation) and have a connection admin set its name as foreign_catalog of {via}; "
        "or point this row at the foreign table (db_type 'databricks', source_catalog = the "
        "foreign catalog); or run the loads on classic compute (DATABRICKS_CLUSTER_ID or "
        "DATALOADER_DATABRICKS_NEW_CLUSTER)"
    )
