"""DataLoader load script, run by Dagster Pipes (local subprocess or Databricks spark_python_task).

Reads the load parameters from the Pipes extra ``params``, loads the source table into the
destination (Arrow/deltalake locally, Spark/Delta on Databricks), and reports one asset
materialization with rows, watermarks, duration and the destination schema. On failure it reports
``{"dataloader_error": text}`` as a custom message, raises (Pipes reports the exception), and ends
stderr with ``DATALOADER_ERROR: <text>``; no watermark is reported. Secrets never leave redacted.
"""

from __future__ import annotations

import os
import sys
import time
import traceback

# Databricks runs this file by path: make the sibling loader_*.py modules importable there too.
_HERE = os.path.dirname(os.path.abspath(__file__ if "__file__" in globals() else sys.argv[0]))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from dagster_pipes import PipesContext, open_dagster_pipes
from loader_params import LoadSpec, parse_load_spec, resolve_password
from loader_pipes_io import choose_pipes_io
from redaction import redact, secrets_from_env

ERROR_PREFIX = "DATALOADER_ERROR: "


class DataLoaderError(RuntimeError):
    """A load failed; the message is already redacted and says which table and which step."""


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


def choose_engine(spec: LoadSpec) -> str:
    engine = (os.environ.get("DATALOADER_ENGINE") or "").strip().lower()
    if not engine:
        engine = "spark" if os.environ.get("DATABRICKS_RUNTIME_VERSION") else "arrow"
    if engine not in ("arrow", "spark"):
        raise ValueError(f"DATALOADER_ENGINE must be 'arrow' or 'spark', not {engine!r}")
    if spec.db_type == "databricks" and engine != "spark":
        raise ValueError(
            "db_type 'databricks' (a Unity Catalog table) is read with the spark engine"
        )
    return engine


def _dbutils_secret_getter():
    """``dbutils.secrets.get`` on Databricks, else None (secrets come from the environment)."""
    if not os.environ.get("DATABRICKS_RUNTIME_VERSION"):
        return None
    from pyspark.dbutils import DBUtils  # only exists on Databricks runtimes
    from pyspark.sql import SparkSession

    return DBUtils(SparkSession.builder.getOrCreate()).secrets.get


def column_schema_metadata(schema) -> dict:
    """``dagster/column_schema`` in the Pipes wire form (type ``table_schema``)."""
    columns = [
        {"name": f.name, "type": str(f.type), "constraints": {"nullable": bool(f.nullable)}}
        for f in schema
    ]
    return {"type": "table_schema", "raw_value": {"columns": columns}}


def _run_engine(engine: str, spec: LoadSpec, password: str | None, log) -> object:
    progress = _env_float("DATALOADER_PROGRESS_SECONDS", 10.0)
    if engine == "spark":
        from loader_spark import run_spark_load

        return run_spark_load(spec, password, log=log, progress_interval=progress)
    from loader_arrow import lake_root, run_arrow_load
    from loader_sources import DEFAULT_BATCH_BYTES, DEFAULT_BATCH_ROWS, open_source

    destination = spec.destination_path(lake_root())
    try:
        source = open_source(
            spec,
            password,
            batch_bytes=int(_env_float("DATALOADER_BATCH_BYTES", DEFAULT_BATCH_BYTES)),
            batch_rows=int(_env_float("DATALOADER_BATCH_ROWS", DEFAULT_BATCH_ROWS)),
        )
    except Exception as exc:
        from loader_arrow import LoadStepError

        raise LoadStepError("connect to source", f"{type(exc).__name__}: {exc}") from exc
    try:
        result = run_arrow_load(spec, source, destination, log=log, progress_interval=progress)
    except BaseException:
        try:
            source.close()
        except Exception:  # noqa: BLE001, S110 - the load's own error is the one to report
            pass
        raise
    source.close()
    return result


def run_load(context: PipesContext, secrets: list[str]) -> None:
    started = time.monotonic()
    label = "load"
    step = "read parameters"
    failure: str | None = None
    try:
        spec = parse_load_spec(context.get_extra("params"))
        label = f"load of {spec.source_label} ({spec.db_type}) into {spec.destination_label}"
        step = "resolve secret"
        password = resolve_password(spec, dbutils_get=_dbutils_secret_getter())
        if password:
            secrets.append(password)
        step = "choose engine"
        engine = choose_engine(spec)
        context.log.info(
            f"{label}: strategy {spec.load_strategy}"
            f"{' (force full reload)' if spec.force_full_reload else ''}, engine {engine}, "
            f"watermark {spec.incremental_value!r}"
        )
        step = "load"
        result = _run_engine(engine, spec, password, lambda m: context.log.info(redact(m, secrets)))
    except Exception as exc:  # noqa: BLE001 - every failure must be reported the same way
        step = getattr(exc, "step", step)
        failure = redact(f"{label} failed at step '{step}': {exc}", secrets)
        context.report_custom_message({"dataloader_error": failure})
    if failure is not None:
        # Raised outside the except block, so the driver error is not even its __context__:
        # dagster-pipes serializes __context__ despite ``from None``, and it may hold secrets.
        raise DataLoaderError(failure)

    duration = round(time.monotonic() - started, 3)
    metadata = {
        "rows_read": result.rows_read,
        "rows_written": result.rows_written,
        "watermark_before": result.watermark_before,
        "watermark_after": result.watermark_after,
        "duration_seconds": duration,
        "destination": result.destination,
        "load_strategy": result.applied_strategy,
        "requested_load_strategy": spec.load_strategy,
        "engine": engine,
        "dagster/table_name": spec.destination_label,
        "dagster/column_schema": column_schema_metadata(result.schema),
    }
    if result.row_count is not None:
        metadata["dagster/row_count"] = result.row_count
    context.log.info(
        f"{label}: {result.applied_strategy} load read {result.rows_read:,} and wrote "
        f"{result.rows_written:,} rows in {duration}s; watermark {result.watermark_after!r}"
    )
    context.report_asset_materialization(metadata=metadata)


def main() -> int:
    params_loader, context_loader, message_writer, where = choose_pipes_io()
    if where == "none":
        print(
            f"{ERROR_PREFIX}not launched by Dagster Pipes (no bootstrap parameters)",
            file=sys.stderr,
        )
        return 2
    # Every secret this process can see (LAKEBASE_PASSWORD, AI key, ...), plus the source's.
    secrets: list[str] = secrets_from_env()
    try:
        with open_dagster_pipes(
            params_loader=params_loader,
            context_loader=context_loader,
            message_writer=message_writer,
        ) as context:
            run_load(context, secrets)
    except Exception as exc:  # noqa: BLE001 - the last stderr line must carry any failure
        text = str(exc) if isinstance(exc, DataLoaderError) else f"{type(exc).__name__}: {exc}"
        text = redact(text, secrets)
        if not isinstance(exc, DataLoaderError):
            sys.stderr.write(redact("".join(traceback.format_exception(exc)), secrets))
        one_line = " | ".join(line.strip() for line in text.splitlines() if line.strip())
        sys.stderr.write(f"{ERROR_PREFIX}{one_line}\n")
        sys.stderr.flush()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
