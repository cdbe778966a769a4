"""Sail (``pysail``: a Spark Connect server written in Rust, with its own Delta Lake) as the
Spark the Spark engine's write path runs on in tests.

``sail_server`` starts Sail in this process on loopback, with a ``spark_catalog`` memory catalog
(the name Databricks' Hive metastore catalog has) whose managed tables live in a temporary
warehouse. ``SailSession`` wraps the Spark Connect session the engine is handed and passes every
statement to Sail, except the ones Sail does not implement; each of those is answered from the
real Delta log Sail wrote and named in ``SAIL_GAPS`` (docs/databricks.md lists them as "not
executed on Sail"):

- ``DESCRIBE HISTORY``: read from the table's Delta log with ``deltalake`` (version, operation,
  operationMetrics, userMetadata, as Databricks returns them). Sail records a CREATE TABLE AS
  SELECT as ``CREATE TABLE`` and a CREATE OR REPLACE TABLE AS SELECT as an overwrite ``WRITE``;
  the commit of such a statement run through this session is named as Delta names it.
- a command with named parameters (``INSERT ... :watermark``): Sail refuses parameters in a
  command, so the values are put into the text as typed literals here (``literal``);
- ``ALTER TABLE ... ADD COLUMNS``: applied with ``deltalake``'s ``alter.add_columns`` (Sail then
  reads the new schema from the log).
- an empty append carrying ``txnAppId`` / ``txnVersion`` (the serverless MERGE's marker commit,
  engines.spark.commits.mark_merge): Sail commits nothing for it, where Delta records a ``WRITE``
  commit (the idempotent-write pair adds a ``txn`` action, and Delta leaves out an empty commit
  only when it has no action at all: ``OptimisticTransaction.commitImpl`` with
  ``skipRecordingEmptyCommits``, ``WriteIntoDelta`` adding the ``SetTransaction``, reviewed in
  Delta's source); Sail also refuses any append to a table with an upper-case column name such as
  ``__DELETED_AT``. The commit Delta would make (``commitInfo.userMetadata`` and the ``txn``
  action, no file) is written with ``deltalake`` instead of the append.
"""

from __future__ import annotations

import datetime as dt
import decimal
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

SAIL_GAPS = {
    "DESCRIBE HISTORY": "Sail 0.7 does not parse DESCRIBE HISTORY",
    "ALTER TABLE ADD COLUMNS": "Sail 0.7 refuses ALTER TABLE ... ADD COLUMNS",
    "command parameters": "Sail 0.7 refuses named parameters in a command (INSERT ... :name)",
    "session userMetadata": (
        "Sail 0.7 ignores spark.databricks.delta.commitInfo.userMetadata set on the session "
        "(it writes the writer option userMetadata)"
    ),
    "txnAppId": "Sail 0.7 accepts txnAppId/txnVersion but writes no txn action (no idempotence)",
    "empty append": (
        "Sail 0.7 commits nothing for an empty append, even with txnAppId/txnVersion, where Delta "
        "records it (its txn action makes the commit non-empty); it also refuses any append to a "
        "table with an upper-case column name such as __DELETED_AT"
    ),
    "REPLACE schema": (
        "Sail 0.7's CREATE OR REPLACE TABLE AS SELECT overwrites the data but cannot change the "
        "schema (it refuses a replacement that drops a column)"
    ),
    "comments": (
        "Sail 0.7 refuses COMMENT ON TABLE and ALTER TABLE ... ALTER COLUMN ... COMMENT (it reads "
        "comments given at CREATE TABLE)"
    ),
    "column mapping refusal": (
        "Sail 0.7 accepts column names with spaces or ,;{}()= without column mapping, where "
        "Delta on Databricks refuses them"
    ),
}

_DELTA_TYPES = {
    "tinyint": "byte",
    "smallint": "short",
    "int": "integer",
    "bigint": "long",
    "float": "float",
    "double": "double",
    "string": "string",
    "boolean": "boolean",
    "date": "date",
    "timestamp": "timestamp",
    "timestamp_ntz": "timestamp_ntz",
    "binary": "binary",
}


@contextmanager
def sail_server(warehouse: str) -> Iterator[str]:
    """A Sail Spark Connect server on 127.0.0.1 (a free port); yields its ``sc://`` URL."""
    from pysail.spark import SparkConnectServer

    env = {
        "SAIL_CATALOG__LIST": (
            '[{name="spark_catalog", type="memory", initial_database=["default"]}]'
        ),
        "SAIL_CATALOG__DEFAULT_CATALOG": "spark_catalog",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # read when the server starts
    try:
        server = SparkConnectServer("127.0.0.1", 0)
        server.start(background=True)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        host, port = server.listening_address
        yield f"sc://{host}:{port}"
    finally:
        server.stop()


def connect(url: str, warehouse: str) -> Any:
    """A Spark Connect session on Sail, beside a classic local SparkSession another test file of
    this process may hold (``SparkSession.builder.remote`` refuses that; the Connect builder does
    not). pyspark's functions build Connect columns while ``SPARK_CONNECT_MODE_ENABLED`` is set:
    the caller restores it when done."""
    from pyspark.sql.connect.session import SparkSession as ConnectSession

    os.environ["SPARK_CONNECT_MODE_ENABLED"] = "1"
    return (
        ConnectSession.builder.remote(url)
        .config("spark.sql.warehouse.dir", warehouse)
        .config("spark.sql.session.timeZone", "UTC")
        .create()
    )


def literal(value: Any) -> str:
    """A Spark SQL literal of a parameter value (the session time zone is UTC)."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            return f"TIMESTAMP_NTZ'{value.isoformat(sep=' ')}'"
        return f"TIMESTAMP'{value.astimezone(dt.UTC).replace(tzinfo=None).isoformat(sep=' ')}'"
    if isinstance(value, dt.date):
        return f"DATE'{value.isoformat()}'"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | decimal.Decimal):
        return repr(value) if isinstance(value, float) else str(value)
    text = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{text}'"


class _Rows:
    """What ``spark.sql(...)`` returns, for a statement answered here."""

    def __init__(self, rows: list[Any]):
        self._rows = rows

    def collect(self) -> list[Any]:
        return list(self._rows)


_HISTORY = re.compile(
    r"^\s*DESCRIBE\s+HISTORY\s+(?P<t>.+?)(?:\s+LIMIT\s+(?P<n>\d+))?\s*$", re.IGNORECASE | re.DOTALL
)
_ADD_COLUMNS = re.compile(
    r"^\s*ALTER\s+TABLE\s+(?P<t>.+?)\s+ADD\s+COLUMNS\s*\((?P<c>.*)\)\s*$", re.IGNORECASE | re.DOTALL
)
_CTAS = re.compile(
    r"^\s*CREATE\s+(?P<replace>OR\s+REPLACE\s+)?TABLE\s+(?P<t>(?:`(?:[^`]|``)*`\.?)+)\s",
    re.IGNORECASE,
)


class _Writer:
    """``df.writeTo(target)`` on Sail: a created table's commit is named as Delta names it
    (Sail records ``CREATE TABLE`` and, for a replacement, an overwrite ``WRITE``); an empty
    append with ``txnAppId`` / ``txnVersion`` is committed as Delta commits it (``SAIL_GAPS``
    "empty append")."""

    def __init__(
        self,
        writer: Any,
        target: str,
        session: SailSession,
        frame: Any = None,
        options: dict | None = None,
    ):
        self._writer, self._target, self._session = writer, target, session
        self._frame = frame  # the rows written
        self._options: dict[str, str] = {} if options is None else options

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._writer, name)
        if name == "append":

            def append(*a: Any, **kw: Any) -> Any:
                if "txnAppId" in self._options and self._frame.isEmpty():
                    # Sail would commit nothing (and refuses an append to a table with an
                    # upper-case column name such as __DELETED_AT): Delta's commit instead.
                    self._session.commit_empty_append(self._target, self._options)
                    return None
                return attr(*a, **kw)

            return append
        if name in ("create", "createOrReplace", "replace"):
            operation = (
                "CREATE TABLE AS SELECT"
                if name == "create"
                else "CREATE OR REPLACE TABLE AS SELECT"
            )

            def run(*a: Any, **kw: Any) -> Any:
                out = attr(*a, **kw)
                self._session.name_commit(self._target, operation)
                return out

            return run
        if not callable(attr):
            return attr

        def chained(*a: Any, **kw: Any) -> Any:
            if name == "options":
                self._options.update({k: str(v) for k, v in kw.items()})
            elif name == "option" and len(a) == 2:
                self._options[str(a[0])] = str(a[1])
            out = attr(*a, **kw)
            if out is self._writer:
                return _Writer(out, self._target, self._session, self._frame, self._options)
            return out

        return chained


class _Frame:
    """A SELECT's DataFrame on Sail whose ``writeTo`` goes through :class:`_Writer`."""

    def __init__(self, frame: Any, session: SailSession):
        self._frame, self._session = frame, session

    def __getattr__(self, name: str) -> Any:
        return getattr(self._frame, name)

    def writeTo(self, target: str) -> _Writer:
        return _Writer(self._frame.writeTo(target), target, self._session, self._frame)


class SailSession:
    """The Spark Connect session on Sail, with Sail's gaps filled from the Delta log."""

    def __init__(self, spark: Any):
        self._spark = spark
        self._named: dict[tuple[str, int], str] = {}  # (location, version) -> Delta's operation
        self.answered: list[str] = []  # the gaps this session filled (keys of SAIL_GAPS)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._spark, name)

    def location(self, target: str) -> str:
        rows = self._spark.sql(f"DESCRIBE TABLE EXTENDED {target}").collect()
        return next(r["data_type"] for r in rows if r["col_name"] == "Location")

    def sql(self, statement: str, args: dict | None = None, **kw: Any) -> Any:
        history = _HISTORY.match(statement)
        if history:
            self.answered.append("DESCRIBE HISTORY")
            return _Rows(self._history(history["t"], int(history["n"] or 1000)))
        added = _ADD_COLUMNS.match(statement)
        if added:
            self.answered.append("ALTER TABLE ADD COLUMNS")
            self._add_columns(added["t"], added["c"])
            return _Rows([])
        if args and not statement.lstrip().upper().startswith(("SELECT", "WITH")):
            self.answered.append("command parameters")
            statement = re.sub(r"(?<![:\w]):(\w+)\b", lambda m: literal(args[m[1]]), statement)
            args = None
        result = self._spark.sql(statement, args=args, **kw) if args else self._spark.sql(statement)
        if statement.lstrip().upper().startswith(("SELECT", "WITH", "(")):
            return _Frame(result, self)
        ctas = _CTAS.match(statement)
        if ctas and " AS SELECT " in statement.upper():
            from deltalake import DeltaTable

            where = self.location(ctas["t"])
            name = (
                "CREATE OR REPLACE TABLE AS SELECT" if ctas["replace"] else "CREATE TABLE AS SELECT"
            )
            self._named[(where, DeltaTable(where).version())] = name
        return result

    def commit_empty_append(self, target: str, options: dict[str, str]) -> None:
        """The commit Delta records for an empty append that Sail left out (``SAIL_GAPS``
        "empty append"): only with the idempotent-write pair, which gives Delta's commit its
        ``txn`` action; the ``userMetadata`` option goes into ``commitInfo``. No file."""
        if "txnAppId" not in options or "txnVersion" not in options:
            return  # Delta leaves out an empty append without an action too
        from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake

        self.answered.append("empty append")
        where = self.location(target)
        empty = DeltaTable(where).to_pyarrow_dataset().schema.empty_table()
        metadata = {"userMetadata": options["userMetadata"]} if "userMetadata" in options else {}
        transaction = Transaction(options["txnAppId"], int(options["txnVersion"]))
        properties = CommitProperties(custom_metadata=metadata, app_transactions=[transaction])
        write_deltalake(where, empty, mode="append", commit_properties=properties)

    def name_commit(self, target: str, operation: str) -> None:
        """Name the newest commit of ``target`` as Delta names the statement that made it."""
        from deltalake import DeltaTable

        where = self.location(target)
        self._named[(where, DeltaTable(where).version())] = operation

    def _history(self, target: str, limit: int) -> list[Any]:
        from deltalake import DeltaTable
        from pyspark.sql import Row

        where = self.location(target)
        rows = []
        for commit in DeltaTable(where).history(limit):
            version = int(commit["version"])
            metrics = commit.get("operationMetrics") or {}
            rows.append(
                Row(
                    version=version,
                    operation=self._named.get((where, version), commit["operation"]),
                    operationMetrics={k: str(v) for k, v in metrics.items()},
                    userMetadata=commit.get("userMetadata"),
                )
            )
        return sorted(rows, key=lambda r: -r["version"])

    def _add_columns(self, target: str, spec: str) -> None:
        from deltalake import DeltaTable
        from deltalake.schema import Field

        schema = self._spark.createDataFrame([], spec).schema  # Spark parses the column list
        fields = []
        for f in schema.fields:
            t = f.dataType.simpleString()
            fields.append(Field(f.name, t if t.startswith("decimal") else _DELTA_TYPES[t], True))
        DeltaTable(self.location(target)).alter.add_columns(fields)
