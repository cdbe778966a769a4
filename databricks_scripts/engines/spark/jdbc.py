"""JDBC options of the Spark engine's source read: driver, URL, table, TLS, timeouts.

The password goes in the ``password`` option, never into the URL, so it cannot leak through a
logged URL; TLS follows the checked ``sslmode`` (``load.params.check_connection_config``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from databricks_scripts.load.params import LoadSpec
from databricks_scripts.load.sql import (
    MYSQL,
    ORACLE,
    POSTGRESQL,
    SQLSERVER,
    qualified_name,
    source_table_parts,
)

_JDBC = {
    "postgresql": (
        "org.postgresql.Driver",
        POSTGRESQL,
        "jdbc:postgresql://{host}:{port}/{database}",
        5432,
    ),
    "mysql": ("com.mysql.cj.jdbc.Driver", MYSQL, "jdbc:mysql://{host}:{port}/{database}", 3306),
    "sqlserver": (
        "com.microsoft.sqlserver.jdbc.SQLServerDriver",
        SQLSERVER,
        "jdbc:sqlserver://{host}:{port};databaseName={database}",
        1433,
    ),
    "oracle": (
        "oracle.jdbc.OracleDriver",
        ORACLE,
        "jdbc:oracle:thin:@//{host}:{port}/{database}",
        1521,
    ),
}


# Each driver's connect-timeout property and its unit (seconds x scale).
_JDBC_CONNECT_TIMEOUT = {
    "postgresql": ("connectTimeout", 1),
    "mysql": ("connectTimeout", 1000),
    "sqlserver": ("loginTimeout", 1),
    "oracle": ("oracle.net.CONNECT_TIMEOUT", 1000),
}


def jdbc_options(
    spec: LoadSpec, password: str | None, *, fetch_size: int = 10_000
) -> dict[str, str]:
    """Options for ``spark.read.format("jdbc")``. The password goes in the ``password`` option,
    never into the URL, so it cannot leak through a logged URL."""
    driver, dialect, url, default_port = _JDBC[spec.db_type]
    cfg = spec.db_config_value
    database = cfg.get("service_name") or cfg.get("database") or ""
    if spec.db_type == "oracle" and cfg.get("sslmode") in ("require", "verify-ca", "verify-full"):
        url = "jdbc:oracle:thin:@tcps://{host}:{port}/{database}"
    opts = {
        "url": url.format(
            host=cfg.get("host"), port=cfg.get("port") or default_port, database=database
        ),
        "driver": driver,
        "dbtable": qualified_name(
            dialect,
            *source_table_parts(
                spec.db_type, spec.source_catalog, spec.source_schema_name, spec.source_table_name
            ),
        ),
        "user": str(cfg.get("user") or ""),
        "fetchsize": str(fetch_size),
        "pushDownPredicate": "true",
        # The MERGE's key range (engines.spark.merge) and the key checks are aggregates: the
        # source answers them (from an index where it has one) instead of Spark reading it all.
        "pushDownAggregate": "true",
    }
    opts.update(jdbc_tls_options(spec.db_type, cfg))
    if cfg.get("connect_timeout"):
        name, scale = _JDBC_CONNECT_TIMEOUT[spec.db_type]
        opts[name] = str(int(cfg["connect_timeout"]) * scale)
    if password is not None:
        opts["password"] = password
    return opts


def jdbc_tls_options(db_type: str, cfg: Mapping[str, Any]) -> dict[str, str]:
    """Driver properties for the checked ``sslmode`` (``load.params.check_connection_config``:
    ``require`` by default for a host that is not loopback). Each JDBC driver refuses to log in
    without TLS when it is required, so the password is never sent in clear."""
    mode = cfg.get("sslmode")
    ca = cfg.get("sslrootcert")
    secure = mode in ("require", "verify-ca", "verify-full")
    if db_type == "postgresql":
        opts = {"sslmode": mode} if mode else {}
        if ca:
            opts["sslrootcert"] = str(ca)
        return opts
    if db_type == "mysql":
        names = {
            "require": "REQUIRED",
            "verify-ca": "VERIFY_CA",
            "verify-full": "VERIFY_IDENTITY",
            "disable": "DISABLED",
        }
        return {"sslMode": names[mode]} if mode in names else {}
    if db_type == "sqlserver":
        if not mode:
            return {}
        if not secure:
            return {"encrypt": "false"}
        # require: encrypted, the driver's own certificate check (as before); verify-*: explicit.
        if mode == "require":
            return {"encrypt": "true"}
        return {"encrypt": "true", "trustServerCertificate": "false"}
    if db_type == "oracle" and secure:
        return {"oracle.net.ssl_server_dn_match": str(mode == "verify-full").lower()}
    return {}
