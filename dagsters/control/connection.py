"""Pooled connections to the control database: one transaction per operation, errors redacted.

:class:`ControlDatabase` is the base of every SQL part of
:class:`dagsters.utils.lakebase_client.LakebaseClient`; it holds no SQL of its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Self

import psycopg
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from dagsters.control.errors import LakebaseError
from databricks_scripts.redaction import redact


class ControlDatabase:
    """A connection pool (rows as dicts) and the transaction every operation runs in."""

    def __init__(
        self,
        conninfo: str,
        *,
        min_size: int = 1,
        max_size: int = 4,
        connect_kwargs: dict | None = None,
        connection_class: type[psycopg.Connection] | None = None,
        timeout: float = 30.0,
    ):
        kwargs = dict(connect_kwargs or {})
        self._secrets = [s for s in (kwargs.get("password"), _conninfo_password(conninfo)) if s]
        kwargs.setdefault("row_factory", dict_row)
        pool_args: dict[str, Any] = {}
        if connection_class is not None:
            # e.g. a Connection subclass whose connect() fetches a fresh OAuth token each time.
            pool_args["connection_class"] = connection_class
        self._pool: ConnectionPool[psycopg.Connection[DictRow]] = ConnectionPool(
            conninfo,
            min_size=min_size,
            max_size=max_size,
            kwargs=kwargs,
            timeout=timeout,
            # Lakebase closes idle connections; check before handing one out.
            check=ConnectionPool.check_connection,
            open=False,
            name="lakebase",
            **pool_args,
        )
        # wait=False: a down database surfaces as a clear LakebaseError on first use, not here.
        self._pool.open(wait=False)

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(pool={self._pool.name!r}, max_size={self._pool.max_size})"

    def redact(self, text: object) -> str:
        """``text`` without this client's password or anything that looks like a secret."""
        return redact(text, self._secrets)

    @contextmanager
    def _transaction(self, operation: str) -> Iterator[psycopg.Connection[DictRow]]:
        """One pooled connection, one transaction: committed on success, rolled back on error."""
        try:
            with self._pool.connection() as conn:
                yield conn
        except LakebaseError:
            raise
        except PoolTimeout as exc:
            raise LakebaseError(
                f"{operation}: no connection to the control database ({self.redact(exc)})"
            ) from None
        except psycopg.Error as exc:
            # Redacted and without the original as __cause__, whose text could hold a secret.
            raise LakebaseError(
                f"{operation}: {self.redact(exc)}", sqlstate=getattr(exc, "sqlstate", None)
            ) from None


def _conninfo_password(conninfo: str) -> str | None:
    try:
        password = psycopg.conninfo.conninfo_to_dict(conninfo).get("password")
    except psycopg.Error:
        return None
    return None if password is None else str(password)
