"""The load parameters the script receives in the Pipes extras, validated into a ``LoadSpec``.

Pure (stdlib only). The fields, database types and strategies are the wire contract's
(``contract.LOAD_PARAM_FIELDS``, ``DB_TYPES``, ``STRATEGIES``). The password never travels in the
parameters: ``db_config_value`` names a key in the secret scope ``db_kv_scope``, resolved here from
the script's environment (``ScriptEnv.source_secrets``) locally or from ``dbutils.secrets`` on
Databricks.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from databricks_scripts import local_secrets
from databricks_scripts.contract import (
    CONNECTION_KEYS,
    DB_TYPES,
    DEFAULT_DELETE_MAX_FRACTION,
    DEFAULT_VERIFY_DEPTH,
    DELETE_DETECTIONS,
    KIND_SOURCE_AUTH,
    PARAMS_EXTRA,
    SCHEMA_CHANGES,
    STRATEGIES,
    TLS_MODES,
    VERIFY_DEPTHS,
    DbType,
    DeleteDetection,
    Strategy,
    VerifyDepth,
    tls_mode_default,
)

T = TypeVar("T", bound=str)
from databricks_scripts.failures import BadConfig


class LoadParamsError(BadConfig):
    """The Pipes extras do not describe a load this script can run."""


@dataclass(frozen=True)
class LoadSpec:
    """One load, as validated from the Pipes extra ``params`` (one field per LOAD_PARAM_FIELDS)."""

    control_key: str
    source_catalog: str | None
    source_schema_name: str | None
    source_table_name: str
    destination_catalog: str
    destination_schema_name: str
    destination_table_name: str
    db_type: DbType
    db_config_value: Mapping[str, Any]
    db_kv_scope: str | None
    load_strategy: Strategy
    incremental_column: str | None
    incremental_value: str | None
    merge_keys: tuple[str, ...]
    lookback_window_seconds: float
    force_full_reload: bool
    config_id: int | None = None
    metadata_id: int | None = None
    delete_detection: DeleteDetection = "none"
    # The reconciliation check's depth after each load (engines.arrow.verify): none | counts | keys.
    verify_depth: VerifyDepth = "counts"
    delete_max_fraction: float = DEFAULT_DELETE_MAX_FRACTION
    jdbc_partition_column: str | None = None
    jdbc_num_partitions: int | None = None
    # Column control and the schema contract (sql/017, load.columns).
    columns_exclude: tuple[str, ...] = ()
    columns_hash: tuple[str, ...] = ()
    schema_change: str = "evolve"
    hash_secret_scope: str | None = None
    hash_secret_key: str | None = None
    # Set by the script once the key is resolved (load.columns.key_id), never from the wire.
    hash_key_id: str | None = None
    # Set by the engine when the destination was built with other column lists (load.columns).
    rebuild_reason: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def source_label(self) -> str:
        parts = (self.source_catalog, self.source_schema_name, self.source_table_name)
        return ".".join(p for p in parts if p)

    @property
    def foreign_table(self) -> tuple[str, str | None, str] | None:
        """The source as a Unity Catalog foreign table (Lakehouse Federation, sql/019): (foreign
        catalog, schema, table), or None when its connection names no foreign catalog. A foreign
        catalog mirrors one database (PostgreSQL, SQL Server, Oracle: its schemas) or a MySQL
        server (its databases, so a row without a schema names the connection's database)."""
        catalog = self.db_config_value.get("foreign_catalog")
        if not catalog or self.db_type == "databricks":
            return None
        schema = self.source_schema_name
        if schema is None and self.db_type == "mysql":
            schema = self.db_config_value.get("database")
        return (str(catalog), schema, self.source_table_name)

    @property
    def unity_catalog_table(self) -> tuple[str | None, str | None, str] | None:
        """The source's Unity Catalog name when Spark reads it as a table (db_type
        ``databricks``, or a foreign table); None when it is read over JDBC."""
        if self.db_type == "databricks":
            return (self.source_catalog, self.source_schema_name, self.source_table_name)
        return self.foreign_table

    @property
    def destination_label(self) -> str:
        return (
            f"{self.destination_catalog}.{self.destination_schema_name}."
            f"{self.destination_table_name}"
        )

    def destination_path(self, lake_root: str | os.PathLike[str]) -> Path:
        """Local Delta location: <lake root>/<catalog>/<schema>/<table>."""
        parts = (
            self.destination_catalog,
            self.destination_schema_name,
            self.destination_table_name,
        )
        for part in parts:
            if part in (".", "..") or "/" in part or "\\" in part or "\x00" in part:
                raise LoadParamsError(
                    f"destination name part {part!r} cannot be used as a directory name"
                )
        return Path(lake_root).joinpath(*parts)


def _opt_str(params: Mapping[str, Any], key: str) -> str | None:
    value = params.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise LoadParamsError(f"parameter {key!r} must be text, got {type(value).__name__}")
    return value


def _req_str(params: Mapping[str, Any], key: str) -> str:
    value = _opt_str(params, key)
    if value is None:
        raise LoadParamsError(f"parameter {key!r} is required")
    return value


def check_connection_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """``db_config_value`` restricted to ``contract.CONNECTION_KEYS``, TLS made explicit.

    A key outside the allow-list is refused by name (it would otherwise reach the driver:
    ``options``, ``passfile``, ...). ``sslmode`` defaults to ``require`` for a host that is not
    loopback; the code location already decided whether a weaker mode is the connection's own.
    """
    if any(str(k).lower() in ("password", "passwd", "pwd") for k in config):
        raise LoadParamsError(
            "db_config_value must not hold a password; name the secret in 'password_secret'"
        )
    for key in config:
        if key not in CONNECTION_KEYS:
            raise LoadParamsError(
                f"db_config_value key {key!r} is not allowed (allowed: "
                f"{', '.join(CONNECTION_KEYS)})"
            )
    checked = {k: v for k, v in config.items() if v is not None}
    mode = checked.get("sslmode")
    if mode is not None and mode not in TLS_MODES:
        raise LoadParamsError(f"sslmode {mode!r} is not one of {', '.join(TLS_MODES)}")
    if "host" in checked:
        mode = tls_mode_default(checked["host"], mode)
        if mode:
            checked["sslmode"] = mode
    return checked


def _one_of(value: str, allowed: tuple[T, ...], name: str) -> T:
    """``value`` as the member of ``allowed`` it equals (typed), or LoadParamsError naming it."""
    for member in allowed:
        if value == member:
            return member
    raise LoadParamsError(f"{name} {value!r} is not one of {', '.join(allowed)}")


def _delete_settings(
    params: Mapping[str, Any], strategy: Strategy, keys: Any
) -> tuple[DeleteDetection, float]:
    """(delete_detection, delete_max_fraction), checked as the control table's CHECKs do."""
    if strategy == "scd2" and not keys:
        raise LoadParamsError("load_strategy 'scd2' needs merge_keys")
    raw_detection = (_opt_str(params, "delete_detection") or "none").lower()
    detection = _one_of(raw_detection, DELETE_DETECTIONS, "delete_detection")
    if detection != "none" and not keys:
        raise LoadParamsError(f"delete_detection {detection!r} needs merge_keys")
    if detection == "soft" and strategy == "full":
        raise LoadParamsError(
            "delete_detection 'soft' cannot be used with load_strategy 'full' (a full load "
            "replaces the table, so deleted rows are gone): use merge, incremental or scd2"
        )
    raw = params.get("delete_max_fraction")
    try:
        fraction = DEFAULT_DELETE_MAX_FRACTION if raw is None else float(raw)
    except (TypeError, ValueError):
        raise LoadParamsError("delete_max_fraction must be a number") from None
    if not 0 < fraction <= 1:
        raise LoadParamsError("delete_max_fraction must be above 0 and at most 1")
    return detection, fraction


def _verify_depth(params: Mapping[str, Any]) -> VerifyDepth:
    depth = (_opt_str(params, "verify_depth") or DEFAULT_VERIFY_DEPTH).lower()
    return _one_of(depth, VERIFY_DEPTHS, "verify_depth")


def _jdbc_num_partitions(params: Mapping[str, Any]) -> int | None:
    value = params.get("jdbc_num_partitions")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 256:
        raise LoadParamsError(f"jdbc_num_partitions must be a whole number 1-256, got {value!r}")
    return value


def _column_list(params: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = params.get(key) or ()
    if isinstance(value, str) or not all(isinstance(c, str) and c for c in value):
        raise LoadParamsError(f"{key} must be a list of column names")
    return tuple(value)


def _column_control(
    params: Mapping[str, Any], keys: Any, cursor: str | None
) -> tuple[tuple[str, ...], tuple[str, ...], str]:
    """(columns_exclude, columns_hash, schema_change), checked as sql/017's trigger does."""
    exclude, hashed = _column_list(params, "columns_exclude"), _column_list(params, "columns_hash")
    spared = {k.lower(): "a merge key" for k in keys}
    if cursor:
        spared[cursor.lower()] = "the incremental_column"
    partition = _opt_str(params, "jdbc_partition_column")
    if partition:
        spared[partition.lower()] = "the jdbc_partition_column"
    for name, listed in (("columns_exclude", exclude), ("columns_hash", hashed)):
        for column in listed:
            if column.lower() in spared:
                raise LoadParamsError(
                    f"column {column!r} is {spared[column.lower()]}: it cannot be in {name}"
                )
    both = {c.lower() for c in exclude} & {c.lower() for c in hashed}
    if both:
        raise LoadParamsError(f"column(s) {', '.join(sorted(both))} in both lists: name it once")
    change = (_opt_str(params, "schema_change") or "evolve").lower()
    if change not in SCHEMA_CHANGES:
        raise LoadParamsError(f"schema_change {change!r} is not one of {', '.join(SCHEMA_CHANGES)}")
    return exclude, hashed, change


def parse_load_spec(params: Mapping[str, Any]) -> LoadSpec:
    """Validate the ``params`` extra sent by the load asset (see ``contract.LOAD_PARAM_FIELDS``)."""
    if not isinstance(params, Mapping):
        raise LoadParamsError(f"Pipes extra {PARAMS_EXTRA!r} must be a mapping")
    db_type = _one_of(_req_str(params, "db_type").lower(), DB_TYPES, "db_type")
    strategy = _one_of(_req_str(params, "load_strategy").lower(), STRATEGIES, "load_strategy")
    config = params.get("db_config_value") or {}
    if not isinstance(config, Mapping):
        raise LoadParamsError("db_config_value must be a mapping")
    config = check_connection_config(config)
    keys = params.get("merge_keys") or ()
    if isinstance(keys, str) or not all(isinstance(k, str) and k for k in keys):
        raise LoadParamsError("merge_keys must be a list of column names")
    incremental_column = _opt_str(params, "incremental_column")
    if strategy == "incremental" and incremental_column is None:
        raise LoadParamsError("load_strategy 'incremental' needs an incremental_column")
    if strategy == "merge" and not keys:
        raise LoadParamsError("load_strategy 'merge' needs merge_keys")
    detection, max_fraction = _delete_settings(params, strategy, keys)
    lookback = params.get("lookback_window_seconds") or 0
    try:
        lookback = float(lookback)
    except (TypeError, ValueError):
        raise LoadParamsError("lookback_window_seconds must be a number") from None
    if lookback < 0:
        raise LoadParamsError("lookback_window_seconds must not be negative")
    exclude, hashed, schema_change = _column_control(params, keys, incremental_column)
    return LoadSpec(
        control_key=_opt_str(params, "control_key") or _req_str(params, "source_table_name"),
        source_catalog=_opt_str(params, "source_catalog"),
        source_schema_name=_opt_str(params, "source_schema_name"),
        source_table_name=_req_str(params, "source_table_name"),
        destination_catalog=_req_str(params, "destination_catalog"),
        destination_schema_name=_req_str(params, "destination_schema_name"),
        destination_table_name=_req_str(params, "destination_table_name"),
        db_type=db_type,
        db_config_value=dict(config),
        db_kv_scope=_opt_str(params, "db_kv_scope"),
        load_strategy=strategy,
        incremental_column=incremental_column,
        incremental_value=_opt_str(params, "incremental_value"),
        merge_keys=tuple(keys),
        lookback_window_seconds=lookback,
        force_full_reload=bool(params.get("force_full_reload")),
        config_id=params.get("config_id"),
        metadata_id=params.get("metadata_id"),
        delete_detection=detection,
        delete_max_fraction=max_fraction,
        jdbc_partition_column=_opt_str(params, "jdbc_partition_column"),
        jdbc_num_partitions=_jdbc_num_partitions(params),
        verify_depth=_verify_depth(params),
        columns_exclude=exclude,
        columns_hash=hashed,
        schema_change=schema_change,
        hash_secret_scope=_opt_str(params, "hash_secret_scope"),
        hash_secret_key=_opt_str(params, "hash_secret_key"),
        extra=dict(params),
    )


def secret_env_var(scope: str, key: str) -> str:
    """``DATALOADER_SECRET__<SCOPE>__<KEY>``: upper case, every other character as ``_``."""

    def norm(text: str) -> str:
        return re.sub(r"[^A-Z0-9]", "_", text.upper())

    return f"DATALOADER_SECRET__{norm(scope)}__{norm(key)}"


SecretGetter = Callable[[str, str], str]


def resolve_password(
    spec: LoadSpec,
    *,
    environ: Mapping[str, str],
    dbutils_get: SecretGetter | None = None,
    store_home: Path | None = None,
) -> str | None:
    """The source password, or None when the row names no secret (trust/peer authentication).

    On Databricks ``dbutils_get`` is ``dbutils.secrets.get``; elsewhere the variable from
    :func:`secret_env_var` in ``environ`` (the script's ``ScriptEnv.source_secrets``) wins, else
    the local store under ``store_home`` (``dataloader secret set``, read now, at load time).
    A missing secret's message says where it looked and the command that sets it.
    """
    key = spec.db_config_value.get("password_secret")
    if not key:
        return None
    if not spec.db_kv_scope:
        raise LoadParamsError(
            "db_config_value names a password_secret but db_kv_scope is empty",
            kind=KIND_SOURCE_AUTH,
        )
    return resolve_secret(
        spec.db_kv_scope, str(key), environ=environ, dbutils_get=dbutils_get, store_home=store_home
    )


def resolve_hash_key(
    spec: LoadSpec,
    *,
    environ: Mapping[str, str],
    dbutils_get: SecretGetter | None = None,
    store_home: Path | None = None,
) -> bytes | None:
    """The HMAC key of ``columns_hash`` (None when the row hashes nothing), found the way the
    password is: the secret named by the row's source_connection (hash_secret_scope/_key)."""
    if not spec.columns_hash:
        return None
    if not (spec.hash_secret_scope and spec.hash_secret_key):
        raise LoadParamsError(
            "columns_hash needs a hash key: the row's source_connection must name one in "
            "hash_secret_scope and hash_secret_key (set by a connection admin, docs/loader.md)"
        )
    value = resolve_secret(
        spec.hash_secret_scope,
        spec.hash_secret_key,
        environ=environ,
        dbutils_get=dbutils_get,
        store_home=store_home,
    )
    if len(value) < 16:
        raise LoadParamsError(
            f"the hash key (secret {spec.hash_secret_key!r} of scope {spec.hash_secret_scope!r}) "
            "is shorter than 16 characters: too easy to guess"
        )
    return value.encode("utf-8")


def resolve_secret(
    scope: str,
    key: str,
    *,
    environ: Mapping[str, str],
    dbutils_get: SecretGetter | None = None,
    store_home: Path | None = None,
) -> str:
    """One secret by scope/key: dbutils on Databricks, else the environment, else the local store."""
    if dbutils_get is not None:
        return dbutils_get(scope, key)
    value = environ.get(secret_env_var(scope, key))
    if value is not None:
        return value
    if store_home is not None:
        try:
            value = local_secrets.get(store_home, scope, key)
        except local_secrets.SecretStoreError as exc:
            raise LoadParamsError(
                f"local secret store unusable: {exc}", kind=KIND_SOURCE_AUTH
            ) from None
        if value is not None:
            return value
    raise LoadParamsError(missing_secret_message(scope, key, store_home), kind=KIND_SOURCE_AUTH)


def secret_set_command(scope: str, key: str, store_home: Path | None) -> str:
    """The exact ``dataloader secret set`` command for this store (its home when not the default)."""
    cli = Path(sys.executable).with_name("dataloader")
    program = str(cli) if cli.exists() else "dataloader"
    prefix = ""
    if (
        store_home is not None
        and Path(store_home).resolve() != local_secrets.default_home({}).resolve()
    ):
        prefix = f"DATALOADER_HOME={shlex.quote(str(store_home))} "
    return f"{prefix}{program} secret set {shlex.quote(scope)} {shlex.quote(key)}"


def missing_secret_message(scope: str, key: str, store_home: Path | None) -> str:
    where = [f"environment variable {secret_env_var(scope, key)} of the process running Dagster"]
    if store_home is not None:
        where.append(f"the local store {local_secrets.store_path(store_home)}")
    text = f"secret {key!r} of scope {scope!r} not found; looked in " + " and in ".join(where)
    if store_home is None:
        return text
    return (
        f"{text}. Set it (no restart needed, the next load reads it): "
        f"{secret_set_command(scope, key, store_home)}"
    )
