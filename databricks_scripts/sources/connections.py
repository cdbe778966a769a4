"""How the Arrow engine's drivers connect: one builder per source type, from a checked config.

The config is ``LoadSpec.db_config_value`` after ``load.params.check_connection_config``: only the
keys of ``contract.CONNECTION_KEYS``, ``sslmode`` explicit (``require`` by default off loopback).
Each builder maps those keys to its driver's parameters and nothing else, so no row can hand a
driver an option of its own (``options``, ``passfile``, ...). TLS ``require`` and stricter are
enforced by every driver before it sends the password: libpq and pymysql refuse a server that does
not offer TLS, FreeTDS with ``encryption=require``, oracledb over TCPS. PostgreSQL sessions get a
pinned ``search_path`` (``PG_SESSION_OPTIONS``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _libpq_value(value: object) -> str:
    text = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{text}'"


# The session's search_path, pinned: a source user's own operators, casts or functions in a schema
# of theirs are never picked up by the loader's statements (which also qualify what they call).
PG_SESSION_OPTIONS = "-c search_path=pg_catalog,public"


def postgres_conninfo(config: Mapping[str, Any], password: str | None) -> str:
    """libpq key/value conninfo (not a URL, so the password is never part of a URL in errors).

    Only the allow-listed keys (``load.params.check_connection_config``) are used; ``options``
    is always the pinned search_path, and ``sslmode`` is the checked TLS mode.
    """
    pairs: dict[str, object] = {}
    for key, name in (
        ("host", "host"),
        ("port", "port"),
        ("database", "dbname"),
        ("user", "user"),
        ("sslmode", "sslmode"),
        ("sslrootcert", "sslrootcert"),
        ("connect_timeout", "connect_timeout"),
    ):
        if config.get(key) not in (None, ""):
            pairs[name] = config[key]
    if password is not None:
        pairs["password"] = password
    pairs["options"] = PG_SESSION_OPTIONS
    return " ".join(f"{k}={_libpq_value(v)}" for k, v in pairs.items())


def _tls_context(mode: str, ca_file: str | None) -> Any:
    """An ``ssl.SSLContext`` for ``require`` (encrypted, unverified), ``verify-ca`` or
    ``verify-full`` (certificate, and host name)."""
    import ssl

    ctx = ssl.create_default_context(cafile=ca_file)
    if mode == "require":
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif mode == "verify-ca":
        ctx.check_hostname = False
    return ctx


def _tls_required(config: Mapping[str, Any]) -> str | None:
    mode = config.get("sslmode")
    return mode if mode in ("require", "verify-ca", "verify-full") else None


def mysql_connect_kwargs(config: Mapping[str, Any], password: str | None) -> dict[str, Any]:
    """pymysql parameters. TLS ``require`` and stricter pass an SSLContext: pymysql then refuses a
    server that does not offer TLS before it sends any credentials; ``disable`` turns TLS off."""
    kwargs: dict[str, Any] = {
        "host": config.get("host", "127.0.0.1"),
        "port": int(config.get("port", 3306)),
        "user": config.get("user"),
        "database": config.get("database"),
        "charset": "utf8mb4",
        # TIMESTAMP columns are UTC instants: read them in UTC and keep the zone.
        "init_command": "SET time_zone = '+00:00'",
    }
    if password is not None:
        kwargs["password"] = password
    if config.get("connect_timeout"):
        kwargs["connect_timeout"] = int(config["connect_timeout"])
    mode = _tls_required(config)
    if mode:
        kwargs["ssl"] = _tls_context(mode, config.get("sslrootcert"))
    elif config.get("sslmode") == "disable":
        kwargs["ssl_disabled"] = True
    return kwargs


def sqlserver_connect_kwargs(config: Mapping[str, Any], password: str | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "server": config.get("host"),
        "port": str(config.get("port", 1433)),
        "user": config.get("user"),
        "database": config.get("database"),
        "charset": "UTF-8",
        "login_timeout": int(config.get("connect_timeout", 30)),
        "as_dict": False,
    }
    if password is not None:
        kwargs["password"] = password
    if _tls_required(config):
        # FreeTDS: the login packet (and everything after it) is encrypted, or no connection.
        kwargs["encryption"] = "require"
    elif config.get("sslmode") == "disable":
        kwargs["encryption"] = "off"
    return kwargs


def oracle_connect_kwargs(config: Mapping[str, Any], password: str | None) -> dict[str, Any]:
    """oracledb thin-mode parameters; ``database`` is the service name. TLS is TCPS."""
    kwargs: dict[str, Any] = {
        "user": config.get("user"),
        "host": config.get("host"),
        "port": int(config.get("port", 1521)),
        "service_name": config.get("service_name") or config.get("database"),
    }
    if password is not None:
        kwargs["password"] = password
    mode = _tls_required(config)
    if mode:
        kwargs["protocol"] = "tcps"
        kwargs["ssl_server_dn_match"] = mode == "verify-full"
        if config.get("sslrootcert"):
            kwargs["ssl_context"] = _tls_context(mode, config["sslrootcert"])
    if config.get("connect_timeout"):
        kwargs["tcp_connect_timeout"] = float(config["connect_timeout"])
    return kwargs
