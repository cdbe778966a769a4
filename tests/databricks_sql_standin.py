"""SQL Statement Execution endpoints for the Databricks stand-in (test fixture only).

Adds to :class:`databricks_standin.DatabricksStandin` what databricks-sdk's
``statement_execution`` calls: ``POST /api/2.0/sql/statements/``, ``GET .../statements/{id}``,
``GET .../statements/{id}/result/chunks/{n}`` and ``POST .../statements/{id}/cancel``, with the
real response shapes (``status.state``, ``manifest.schema.columns``, ``result.data_array`` as
strings, ``next_chunk_index``).

The warehouse knows a small Unity Catalog: tables registered with :meth:`add_table` answer
``information_schema.columns`` queries the way Databricks does (a table it does not know gives
zero rows; an unknown catalog fails the statement). Other statements can be answered with
:meth:`on_statement`. ``pending_polls`` makes statements run asynchronously for that many status
polls; ``hang`` keeps them running until cancelled; ``chunk_rows`` splits results into chunks.
"""

from __future__ import annotations

import itertools
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from databricks_standin import ApiError, DatabricksStandin, Request, databricks_standin

__all__ = ["SqlWarehouseStandin", "StatementFailure", "databricks_standin", "sql_warehouse"]

WAREHOUSE_ID = "standin-warehouse-0001"

_COLUMNS_QUERY = re.compile(
    r"(?is)^\s*SELECT\s+(?P<select>.+?)\s+FROM\s+`?(?P<catalog>[^`.\s]+)`?\.information_schema"
    r"\.columns\s+WHERE\s+table_schema\s*=\s*:(?P<schema_param>\w+)\s+AND\s+table_name\s*=\s*"
    r":(?P<table_param>\w+)(?:\s+ORDER\s+BY\s+ordinal_position)?\s*;?\s*$"
)
# information_schema.columns, the subset a schema reader needs: column name -> SQL type.
_INFO_COLUMNS = {
    "table_catalog": "STRING",
    "table_schema": "STRING",
    "table_name": "STRING",
    "column_name": "STRING",
    "ordinal_position": "INT",
    "is_nullable": "STRING",
    "full_data_type": "STRING",
    "data_type": "STRING",
}

StatementHandler = Callable[[re.Match, dict[str, str | None]], tuple[list[str], list[list[Any]]]]


@dataclass
class _Statement:
    statement_id: str
    columns: list[str]
    rows: list[list[str | None]]
    state: str = "PENDING"
    polls_left: int = 0
    hang: bool = False
    error: tuple[str, str] | None = None  # (error_code, message)
    body: dict = field(default_factory=dict)


class SqlWarehouseStandin:
    """A SQL warehouse behind the stand-in's REST API."""

    def __init__(
        self,
        standin: DatabricksStandin,
        warehouse_id: str = WAREHOUSE_ID,
        *,
        pending_polls: int = 0,
        chunk_rows: int = 10_000,
        hang: bool = False,
    ):
        self.standin = standin
        self.warehouse_id = warehouse_id
        self.pending_polls = pending_polls
        self.chunk_rows = chunk_rows
        self.hang = hang
        self.tables: dict[tuple[str, str, str], list[tuple[str, str, bool]]] = {}
        self.catalogs: set[str] = set()
        self.statements: dict[str, _Statement] = {}
        self.cancelled: list[str] = []
        self._handlers: list[tuple[re.Pattern, StatementHandler]] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    # -- setup

    def install(self) -> SqlWarehouseStandin:
        base = r"/api/2\.0/sql/statements"
        self.standin.add_route("POST", base + r"/?", self._submit)
        self.standin.add_route("GET", base + r"/(?P<id>[^/]+)", self._get)
        self.standin.add_route(
            "GET", base + r"/(?P<id>[^/]+)/result/chunks/(?P<n>\d+)", self._get_chunk
        )
        self.standin.add_route("POST", base + r"/(?P<id>[^/]+)/cancel", self._cancel)
        return self

    def add_table(self, full_name: str, columns: Sequence[tuple[str, str] | tuple[str, str, bool]]):
        """Register ``catalog.schema.table`` with (name, full_data_type[, nullable]) columns."""
        catalog, schema, table = full_name.lower().split(".")
        self.catalogs.add(catalog)
        self.tables[(catalog, schema, table)] = [
            (c[0], c[1], c[2] if len(c) > 2 else True)  # type: ignore[misc]
            for c in columns
        ]

    def on_statement(self, pattern: str, handler: StatementHandler) -> None:
        """Answer statements fully matching ``pattern`` with ``handler(match, params)``."""
        self._handlers.append((re.compile(pattern, re.IGNORECASE | re.DOTALL), handler))

    @staticmethod
    def fail(code: str, message: str) -> None:
        """Call from an :meth:`on_statement` handler to fail the statement like the warehouse."""
        raise StatementFailure(code, message)

    def submitted(self) -> list[dict]:
        return [s.body for s in self.statements.values()]

    # -- execution

    def _execute(self, text: str, params: dict[str, str | None]) -> tuple[list[str], list[list]]:
        for pattern, handler in self._handlers:
            m = pattern.fullmatch(text.strip())
            if m:
                return handler(m, params)
        m = _COLUMNS_QUERY.match(text)
        if m:
            return self._columns_query(m, params)
        raise StatementFailure(
            "PARSE_SYNTAX_ERROR", f"[PARSE_SYNTAX_ERROR] stand-in cannot run: {text}"
        )

    def _columns_query(self, m: re.Match, params: dict[str, str | None]):
        catalog = m["catalog"].lower()
        if catalog not in self.catalogs:
            raise StatementFailure(
                "NOT_FOUND",
                f"[NO_SUCH_CATALOG_EXCEPTION] Catalog '{catalog}' was not found. SQLSTATE: 42704",
            )
        schema, table = params.get(m["schema_param"]), params.get(m["table_param"])
        selected = [c.strip().lower() for c in m["select"].split(",")]
        unknown = [c for c in selected if c not in _INFO_COLUMNS]
        if unknown:
            raise StatementFailure(
                "BAD_REQUEST", f"[UNRESOLVED_COLUMN] A column {unknown[0]!r} cannot be resolved."
            )
        rows = []
        for pos, (name, dtype, nullable) in enumerate(
            self.tables.get((catalog, schema, table), [])
        ):
            values = {
                "table_catalog": catalog,
                "table_schema": schema,
                "table_name": table,
                "column_name": name,
                "ordinal_position": str(pos),
                "is_nullable": "YES" if nullable else "NO",
                "full_data_type": dtype,
                "data_type": re.split(r"[<(]", dtype)[0].upper(),
            }
            rows.append([values[c] for c in selected])
        return selected, rows

    # -- HTTP handlers

    def _submit(self, req: Request) -> dict:
        body = req.json()
        if body.get("warehouse_id") != self.warehouse_id:
            raise ApiError(
                404,
                "RESOURCE_DOES_NOT_EXIST",
                f"Warehouse {body.get('warehouse_id')} does not exist.",
            )
        params = {p["name"]: p.get("value") for p in body.get("parameters") or []}
        sid = f"01ef-{next(self._ids):04d}-standin"
        stmt = _Statement(sid, [], [], body=body, hang=self.hang, polls_left=self.pending_polls)
        try:
            stmt.columns, raw_rows = self._execute(body.get("statement", ""), params)
            stmt.rows = [[None if v is None else str(v) for v in row] for row in raw_rows]
        except StatementFailure as failure:
            stmt.error = (failure.code, failure.message)
        with self._lock:
            self.statements[sid] = stmt
        wait = body.get("wait_timeout", "10s")
        if wait != "0s" and not stmt.hang and stmt.polls_left == 0:
            self._finish(stmt)
        else:
            stmt.state = "PENDING"
        return self._response(stmt)

    def _get(self, req: Request) -> dict:
        stmt = self._lookup(req)
        if stmt.state in ("PENDING", "RUNNING") and not stmt.hang:
            if stmt.polls_left > 0:
                stmt.polls_left -= 1
                stmt.state = "RUNNING"
            else:
                self._finish(stmt)
        return self._response(stmt)

    def _get_chunk(self, req: Request) -> dict:
        stmt = self._lookup(req)
        if stmt.state != "SUCCEEDED":
            raise ApiError(400, "BAD_REQUEST", f"statement {stmt.statement_id} has no result")
        return self._chunk(stmt, int(req.match["n"]))

    def _cancel(self, req: Request) -> None:
        stmt = self._lookup(req)
        if stmt.state in ("PENDING", "RUNNING"):
            stmt.state = "CANCELED"
        self.cancelled.append(stmt.statement_id)

    def _lookup(self, req: Request) -> _Statement:
        with self._lock:
            stmt = self.statements.get(req.match["id"])
        if stmt is None:
            raise ApiError(404, "NOT_FOUND", f"Statement {req.match['id']} not found.")
        return stmt

    @staticmethod
    def _finish(stmt: _Statement) -> None:
        stmt.state = "FAILED" if stmt.error else "SUCCEEDED"

    def _chunk(self, stmt: _Statement, n: int) -> dict:
        total = max(1, -(-len(stmt.rows) // self.chunk_rows))
        if n >= total:
            raise ApiError(400, "INVALID_PARAMETER_VALUE", f"chunk index {n} out of range")
        start = n * self.chunk_rows
        rows = stmt.rows[start : start + self.chunk_rows]
        chunk: dict[str, Any] = {"chunk_index": n, "row_offset": start, "row_count": len(rows)}
        if rows:
            chunk["data_array"] = rows
        if n + 1 < total:
            chunk["next_chunk_index"] = n + 1
            chunk["next_chunk_internal_link"] = (
                f"/api/2.0/sql/statements/{stmt.statement_id}/result/chunks/{n + 1}"
            )
        return chunk

    def _response(self, stmt: _Statement) -> dict:
        out: dict[str, Any] = {"statement_id": stmt.statement_id, "status": {"state": stmt.state}}
        if stmt.state == "FAILED" and stmt.error:
            out["status"]["error"] = {"error_code": stmt.error[0], "message": stmt.error[1]}
        if stmt.state == "SUCCEEDED":
            total = max(1, -(-len(stmt.rows) // self.chunk_rows))
            out["manifest"] = {
                "format": "JSON_ARRAY",
                "schema": {
                    "column_count": len(stmt.columns),
                    "columns": [
                        {"name": name, "position": i, "type_name": "STRING", "type_text": "STRING"}
                        for i, name in enumerate(stmt.columns)
                    ],
                },
                "total_chunk_count": total,
                "total_row_count": len(stmt.rows),
                "truncated": False,
            }
            out["result"] = self._chunk(stmt, 0)
        return out


class StatementFailure(Exception):
    """Raise from an :meth:`SqlWarehouseStandin.on_statement` handler to fail the statement."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@pytest.fixture
def sql_warehouse(
    databricks_standin: DatabricksStandin, monkeypatch: pytest.MonkeyPatch
) -> Iterator[SqlWarehouseStandin]:
    """The stand-in with a SQL warehouse; SDK env auth and DATABRICKS_WAREHOUSE_ID point at it."""
    for name, value in databricks_standin.env().items():
        monkeypatch.setenv(name, value)
    for name in ("DATABRICKS_CONFIG_PROFILE", "DATABRICKS_CLIENT_ID", "DATABRICKS_CLIENT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABRICKS_WAREHOUSE_ID", WAREHOUSE_ID)
    yield SqlWarehouseStandin(databricks_standin).install()
