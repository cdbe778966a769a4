"""DataLoader load script, run by Dagster Pipes (local subprocess or Databricks spark_python_task).

Reads the load parameters from the Pipes extra ``params``, loads the source table into the
destination (Arrow/deltalake locally, Spark/Delta on Databricks), and reports one asset
materialization with rows, watermarks, duration and the destination schema. On failure it reports
``contract.error_message(text)`` as a custom message, raises (Pipes reports the exception), and
ends stderr with ``contract.stderr_error_line(text)``; no watermark is reported. Secrets never
leave redacted. Its settings come from the environment once (``script_env.ScriptEnv``).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
import traceback
from typing import TYPE_CHECKING, Any


def _import_as_package() -> None:
    """Make ``databricks_scripts`` importable as a package when this file is run by its path.

    The directory is taken from a code object's file name: on Databricks a spark_python_task may
    run the file through ``exec(compile(source, path, "exec"))``, where ``__file__`` is missing
    and ``sys.argv[0]`` is not this file. The directory ABOVE ``databricks_scripts/`` goes first
    on ``sys.path``; the script's own directory (``sys.path[0]`` of ``python <this file>``, or
    ``''`` when run from it) is taken off, so no sibling also loads as a top-level module
    (``redaction`` next to ``databricks_scripts.redaction``).
    """
    here = os.path.dirname(os.path.abspath(_import_as_package.__code__.co_filename))
    parent = os.path.dirname(here)
    real_here, real_parent = os.path.realpath(here), os.path.realpath(parent)
    sys.path[:] = [
        p for p in sys.path if os.path.realpath(p or os.curdir) not in (real_here, real_parent)
    ]
    sys.path.insert(0, parent)


_import_as_package()

from dagster_pipes import PipesContext, open_dagster_pipes

from databricks_scripts.contract import (
    DEEP_VERIFY_KEY,
    DEEP_VERIFY_MODE,
    KIND_CANCELLED,
    LOAD_ASSET_NAME,
    MODE_PARAM,
    PARAMS_EXTRA,
    FailureKind,
    LoadReport,
    error_message,
    stderr_error_line,
)
from databricks_scripts.failures import BadConfig, DataLoaderFailure, failure_kind
from databricks_scripts.load.interrupt import StopSignal
from databricks_scripts.load.params import (
    LoadSpec,
    parse_load_spec,
    resolve_hash_key,
    resolve_password,
)
from databricks_scripts.pipes_io import choose_pipes_io
from databricks_scripts.redaction import redact
from databricks_scripts.retry.codes import code_of
from databricks_scripts.script_env import ScriptEnv

if TYPE_CHECKING:
    from databricks_scripts.load.engine import Engine
    from databricks_scripts.load.plan import LoadResult


class DataLoaderError(DataLoaderFailure, RuntimeError):
    """A load failed; the message is already redacted and says which table and which step. Its
    kind is the failure's (None: a foreign error)."""

    kind = None
    failure_code: str | None = None  # the foreign cause's code (retry.codes), when it has one


def choose_engine(spec: LoadSpec, env: ScriptEnv) -> str:
    engine = env.engine_name
    if engine not in ("arrow", "spark"):
        raise BadConfig(f"DATALOADER_ENGINE must be 'arrow' or 'spark', not {engine!r}")
    if env.on_serverless and engine == "spark" and spec.unity_catalog_table is None:
        # The code location refuses this before submitting (source_connections.fit_compute).
        raise BadConfig(
            f"a {spec.db_type} source cannot be read from serverless compute: serverless has no "
            "plain JDBC reads (spark.read.format('jdbc')); read the database through a Unity "
            "Catalog foreign catalog (Lakehouse Federation: the source_connection's "
            "foreign_catalog, or db_type 'databricks') or load this table on classic compute "
            "(DATABRICKS_CLUSTER_ID or DATALOADER_DATABRICKS_NEW_CLUSTER)"
        )
    if spec.db_type == "databricks" and engine != "spark":
        raise BadConfig(
            "db_type 'databricks' (a Unity Catalog table) is read with the spark engine"
        )
    return engine


def _dbutils_secret_getter(env: ScriptEnv):
    """``dbutils.secrets.get`` on Databricks, else None (secrets come from the environment).

    ``databricks.sdk.runtime.dbutils`` is the runtime's own dbutils on every kind of compute
    (classic, Standard access mode, serverless); ``pyspark.dbutils.DBUtils`` is not on serverless.
    It is imported when a secret is read, not before: a load that needs none never imports it.
    """
    if not env.on_databricks:
        return None

    def get(scope: str, key: str) -> str:
        from databricks.sdk.runtime import dbutils  # ships with every supported runtime

        return dbutils.secrets.get(scope, key)

    return get


def column_schema_metadata(schema, descriptions: dict | None = None) -> dict:
    """``dagster/column_schema`` in the Pipes wire form (type ``table_schema``); a column's
    ``description`` is its source comment (PostgreSQL ``COMMENT ON``, MySQL ``COMMENT``)."""
    columns = []
    for f in schema:
        nullable = {"nullable": bool(f.nullable)}
        column = {"name": f.name, "type": str(f.type), "constraints": nullable}
        if descriptions and descriptions.get(f.name):
            column["description"] = descriptions[f.name]
        columns.append(column)
    return {"type": "table_schema", "raw_value": {"columns": columns}}


def engine_for(name: str, env: ScriptEnv) -> Engine:
    """The engine ``name`` (``choose_engine``); each imports its own stack only when chosen."""
    if name == "spark":
        from databricks_scripts.engines.spark.run import SparkEngine

        return SparkEngine(env)
    from databricks_scripts.engines.arrow.run import ArrowEngine

    return ArrowEngine(env)


def _run_engine(
    engine: str,
    spec: LoadSpec,
    password: str | None,
    log,
    env: ScriptEnv,
    stop: StopSignal,
    hash_key: bytes | None = None,
) -> LoadResult:
    env.check()  # a malformed DATALOADER_BATCH_* / _PROGRESS_SECONDS fails at step 'load'
    return engine_for(engine, env).run(
        spec,
        password,
        log=log,
        progress_interval=env.progress_seconds,
        stop=stop,
        hash_key=hash_key,
    )


def _deep_verify(
    context: PipesContext,
    engine: str,
    spec: LoadSpec,
    password: str | None,
    secrets: list[str],
    env: ScriptEnv,
) -> None:
    """Deep verification of the row's table (engines.arrow.deep_verify), reported as one message."""
    if engine != "arrow":
        raise BadConfig("deep verification runs on the Arrow engine only (DATALOADER_ENGINE)")
    from databricks_scripts.engines.arrow.deep_verify import deep_verify
    from databricks_scripts.engines.arrow.engine import _delta_table
    from databricks_scripts.load.columns import with_column_control
    from databricks_scripts.sources.readers import open_source

    table = _delta_table(spec.destination_path(env.lake_root))
    if table is None:
        raise BadConfig("the destination table does not exist yet: nothing to verify")
    source = open_source(spec, password, batch_bytes=env.batch_bytes, batch_rows=env.batch_rows)
    try:
        source = with_column_control(source, _hash_key(spec, env))
        found = deep_verify(spec, source, table, log=_redacted_log(context, secrets))
    finally:
        source.close()
    text = redact(found.description, secrets)
    context.report_custom_message(
        {DEEP_VERIFY_KEY: {"passed": found.passed, "description": text, "facts": found.facts}}
    )


def _password(spec: LoadSpec, env: ScriptEnv) -> str | None:
    """dbutils.secrets on Databricks; elsewhere the environment, then the local secret store."""
    return resolve_password(
        spec,
        environ=env.source_secrets,
        dbutils_get=_dbutils_secret_getter(env),
        store_home=None if env.on_databricks else env.home,
    )


def _hash_key(spec: LoadSpec, env: ScriptEnv) -> bytes | None:
    """The HMAC key of the row's columns_hash, found where the password is (None: no hashing)."""
    return resolve_hash_key(
        spec,
        environ=env.source_secrets,
        dbutils_get=_dbutils_secret_getter(env),
        store_home=None if env.on_databricks else env.home,
    )


def _with_hash_key(
    spec: LoadSpec, env: ScriptEnv, secrets: list[str]
) -> tuple[LoadSpec, bytes | None]:
    """The spec naming which key hashes (load.columns.key_id), and the key (kept secret)."""
    hash_key = _hash_key(spec, env)
    if hash_key is None:
        return spec, None
    from databricks_scripts.load.columns import key_id

    secrets.append(hash_key.decode("utf-8"))
    return dataclasses.replace(spec, hash_key_id=key_id(hash_key)), hash_key


def _driver_code(exc: BaseException, secrets: list[str]) -> str | None:
    """A foreign error's code, read from the driver's own exception while it is at hand; none
    when redaction would change it (a code never carries a secret)."""
    code = code_of(exc)
    return code if code is None or redact(code, secrets) == code else None


def _redacted_log(context: PipesContext, secrets: list[str]):
    def log(message: str) -> None:
        context.log.info(redact(message, secrets))

    return log


def _stop_reporter(context: PipesContext, secrets: list[str]):
    """How the stop watcher reports when it must end the process itself."""

    def report(text: str) -> None:
        failure = redact(f"load {text}", secrets)
        context.report_custom_message(error_message(failure, KIND_CANCELLED))
        sys.stderr.write(stderr_error_line(failure, KIND_CANCELLED))
        sys.stderr.flush()

    return report


def run_load(
    context: PipesContext, env: ScriptEnv, secrets: list[str], stop: StopSignal | None = None
) -> None:
    stop = stop or StopSignal()
    stop.on_stop(reporter=_stop_reporter(context, secrets))
    started = time.monotonic()
    label = "load"
    step = "check runtime"
    failure: str | None = None
    kind: FailureKind | None = None
    code: str | None = None
    try:
        env.check_runtime()
        step = "read parameters"
        spec = parse_load_spec(context.get_extra(PARAMS_EXTRA))
        label = f"load of {spec.source_label} ({spec.db_type}) into {spec.destination_label}"
        step = "choose engine"
        engine = choose_engine(spec, env)
        step = "resolve secret"
        # A foreign table is read through Unity Catalog's connection: the job holds no password.
        federated = engine == "spark" and spec.foreign_table is not None
        password = None if federated else _password(spec, env)
        if password:
            secrets.append(password)
        spec, hash_key = _with_hash_key(spec, env, secrets)
        context.log.info(
            f"{label}: strategy {spec.load_strategy}"
            f"{' (force full reload)' if spec.force_full_reload else ''}, engine {engine}, "
            f"watermark {spec.incremental_value!r}"
        )
        if context.get_extra(PARAMS_EXTRA).get(MODE_PARAM) == DEEP_VERIFY_MODE:
            step = "deep verify"
            return _deep_verify(context, engine, spec, password, secrets, env)
        step = "load"
        log = _redacted_log(context, secrets)
        result = _run_engine(engine, spec, password, log, env, stop, hash_key)
    except Exception as exc:  # noqa: BLE001 - every failure must be reported the same way
        step = getattr(exc, "step", step)
        failure = redact(f"{label} failed at step '{step}': {exc}", secrets)
        kind = failure_kind(exc)
        code = None if kind else _driver_code(exc, secrets)
        stop.reported = True
        context.report_custom_message(error_message(failure, kind, code))
    if failure is not None:
        # Raised outside the except block, so the driver error is not even its __context__:
        # dagster-pipes serializes __context__ despite ``from None``, and it may hold secrets.
        error = DataLoaderError(failure, kind=kind)
        error.failure_code = code
        raise error

    duration = round(time.monotonic() - started, 3)
    report = load_report(spec, result, engine, duration, secrets)
    context.log.info(
        f"{label}: {result.applied_strategy} load read {result.rows_read:,} and wrote "
        f"{result.rows_written:,} rows in {duration}s; watermark {result.watermark_after!r}"
    )
    # A batch run's step targets no asset: name the load asset (the op reports the partition).
    asset_key = None if context.is_asset_step else LOAD_ASSET_NAME
    context.report_asset_materialization(metadata=report.to_metadata(), asset_key=asset_key)


def load_report(
    spec: LoadSpec, result: LoadResult, engine: str, duration: float, secrets: list[str]
) -> LoadReport:
    """What the load reports (either engine's ``load.plan.LoadResult``)."""
    comments: tuple[Any, dict] = result.comments or (None, {})
    reconciled = result.reconciled
    verification = result.verification
    facts = dict(verification.facts) if verification is not None else {}
    notes = [redact(n, secrets) for n in [*_column_notes(spec), *(result.notes or ())]]
    described = None
    if verification is not None:
        described = redact(verification.description, secrets)
        if not verification.passed:
            notes.append(f"RECONCILIATION FAILED ({verification.depth}): {described}")
    counted = reconciled is None  # nothing was read when an earlier commit is being recorded
    # One statement, one snapshot: what a full load's reader counted is the source's row count
    # then (the reconciliation check's own count, when it ran, is the one reported).
    source_rows = facts.pop("source_rows", None)
    if source_rows is None and counted and result.applied_strategy == "full":
        source_rows = result.rows_read
    before = result.destination_rows_before if counted else None
    full_reason = result.full_reason if counted else None
    return LoadReport(
        rows_read=result.rows_read,
        rows_written=result.rows_written,
        watermark_before=result.watermark_before,
        watermark_after=result.watermark_after,
        duration_seconds=duration,
        destination=result.destination,
        load_strategy=result.applied_strategy,
        requested_load_strategy=spec.load_strategy,
        engine=engine,
        table_name=spec.destination_label,
        column_schema=column_schema_metadata(result.schema, comments[1]),
        source_comment=comments[0],
        row_count=result.row_count,
        destination_rows_before=before,
        full_load_reason=full_reason,
        source_rows=source_rows,
        columns_excluded=", ".join(spec.columns_exclude or ()) or None,
        columns_hashed=", ".join(spec.columns_hash or ()) or None,
        verified=None if verification is None else verification.passed,
        verification=described,
        verify_depth=None if verification is None else verification.depth,
        notes="; ".join(notes) or None,
        reconciled_metadata_id=None if reconciled is None else reconciled.metadata_id,
        reconciled_version=None if reconciled is None else reconciled.version,
        facts=facts,
    )


def _column_notes(spec: LoadSpec) -> list[str]:
    """The column names left out and hashed (never a value), one sentence each."""
    return [
        f"{words}: {', '.join(columns)}"
        for columns, words in (
            (spec.columns_exclude, "columns excluded"),
            (spec.columns_hash, "columns hashed"),
        )
        if columns
    ]


def main() -> int:
    env = ScriptEnv.from_environ()
    params_loader, context_loader, message_writer, where = choose_pipes_io(env)
    if where == "none":
        sys.stderr.write(
            stderr_error_line("not launched by Dagster Pipes (no bootstrap parameters)")
        )
        return 2
    # Every secret this process can see (LAKEBASE_PASSWORD, AI key, ...), plus the source's.
    secrets: list[str] = list(env.secrets)
    stop = StopSignal().install(on_databricks=env.on_databricks)
    try:
        with open_dagster_pipes(
            params_loader=params_loader,
            context_loader=context_loader,
            message_writer=message_writer,
        ) as context:
            run_load(context, env, secrets, stop)
    except Exception as exc:  # noqa: BLE001 - the last stderr line must carry any failure
        text = str(exc) if isinstance(exc, DataLoaderError) else f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, DataLoaderError):
            sys.stderr.write(redact("".join(traceback.format_exception(exc)), secrets))
        code = _driver_code(exc, secrets)
        sys.stderr.write(stderr_error_line(redact(text, secrets), failure_kind(exc), code))
        sys.stderr.flush()
        stop.finished.set()
        return 1
    stop.finished.set()
    return 0


if __name__ == "__main__":
    if ScriptEnv.from_environ().engine_name == "arrow":
        # This process is the load's own: pyarrow need not import pandas in it (0.3 s per load).
        from databricks_scripts.engines.arrow.process import leave_out_pandas

        leave_out_pandas()
    sys.exit(main())
