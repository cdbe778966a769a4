"""Choose the Dagster Pipes context loader, message writer and params loader for where we run.

- Local subprocess (``PipesSubprocessClient``): bootstrap in env vars, Pipes defaults.
- Databricks existing cluster: bootstrap as CLI arguments (``PipesCliArgsParamsLoader``); new
  cluster: bootstrap in env vars (``spark_env_vars``); serverless: CLI arguments.
- Context file and messages in a Unity Catalog volume when the context path is ``/Volumes/...``
  (every compute by default), otherwise on DBFS (classic compute, when the code location sets
  ``DATALOADER_DATABRICKS_PIPES_DBFS``).

DBFS paths are reached through the FUSE mount ``/dbfs``; ``ScriptEnv.dbfs_root``
(``DATALOADER_DBFS_ROOT``) moves it so a local Databricks stand-in can run this script unchanged
(``ScriptEnv.volumes_root``, ``DATALOADER_VOLUMES_ROOT``, likewise prefixes ``/Volumes`` paths).
The choice is independent of the engine (arrow or spark).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from dagster_pipes import (
    DAGSTER_PIPES_CONTEXT_ENV_VAR,
    PipesBufferedFilesystemMessageWriterChannel,
    PipesCliArgsParamsLoader,
    PipesContextLoader,
    PipesDbfsMessageWriter,
    PipesDefaultContextLoader,
    PipesDefaultMessageWriter,
    PipesEnvVarParamsLoader,
    PipesParamsLoader,
    PipesUnityCatalogVolumesMessageWriter,
)

from databricks_scripts.script_env import DEFAULT_DBFS_ROOT, ScriptEnv

try:  # the CLI flag name dagster_pipes parses (--dagster-pipes-context)
    from dagster_pipes import DAGSTER_PIPES_CONTEXT_CLI_ARGUMENT
except ImportError:  # pragma: no cover - older dagster_pipes
    DAGSTER_PIPES_CONTEXT_CLI_ARGUMENT = "--dagster-pipes-context"


def dbfs_local_path(path: str, dbfs_root: str) -> str:
    """``dbfs:/tmp/x`` or ``/tmp/x`` (a DBFS path) -> ``<DBFS root>/tmp/x`` on the FUSE mount."""
    path = path.removeprefix("dbfs:")
    return os.path.join(dbfs_root, path.lstrip("/"))


def volume_local_path(path: str, volumes_root: str | None) -> str:
    return os.path.join(volumes_root, path.lstrip("/")) if volumes_root else path


class DbfsContextLoader(PipesContextLoader):
    """``PipesDbfsContextLoader`` with a configurable DBFS root."""

    def __init__(self, dbfs_root: str):
        self._root = dbfs_root

    @contextmanager
    def load_context(self, params: Mapping[str, Any]) -> Iterator[Any]:
        with open(dbfs_local_path(str(params["path"]), self._root), encoding="utf-8") as f:
            yield json.load(f)


class DbfsMessageWriter(PipesDbfsMessageWriter):
    """``PipesDbfsMessageWriter`` with a configurable root, usable without a SparkSession.

    Upstream ``get_opened_extras`` raises unless a SparkSession is active (it reads the cluster log
    location from Spark conf). The Arrow engine has none, and a stand-in has no cluster logs, so
    without a session we report no extras: Dagster then forwards no driver logs, nothing else.
    """

    def __init__(self, dbfs_root: str, **kwargs: Any):
        super().__init__(**kwargs)
        self._root = dbfs_root

    def make_channel(
        self, params: Mapping[str, Any]
    ) -> PipesBufferedFilesystemMessageWriterChannel:
        return PipesBufferedFilesystemMessageWriterChannel(
            path=dbfs_local_path(str(params["path"]), self._root), interval=self.interval
        )

    def get_opened_extras(self) -> dict[str, Any]:
        """The cluster log location, or no extras when it cannot be read.

        Upstream catches only ``Py4JJavaError``; on Spark Connect (Standard access mode,
        serverless) a restricted or missing ``spark.conf`` key raises something else (a
        ``SparkConnectGrpcException``, ``SparkNoSuchElementException``, ...) and would stop the load
        before it starts. Log forwarding is a convenience: it is dropped with a warning instead.
        """
        try:
            from pyspark.sql import SparkSession

            if SparkSession.getActiveSession() is None:
                return {}
            return dict(super().get_opened_extras())
        except Exception as exc:  # noqa: BLE001 - see above: never fail the load over log links
            sys.stderr.write(
                f"dataloader: driver log forwarding disabled ({type(exc).__name__}: {exc})\n"
            )
            return {}


class VolumeContextLoader(PipesContextLoader):
    def __init__(self, volumes_root: str | None):
        self._root = volumes_root

    @contextmanager
    def load_context(self, params: Mapping[str, Any]) -> Iterator[Any]:
        with open(volume_local_path(str(params["path"]), self._root), encoding="utf-8") as f:
            yield json.load(f)


class VolumeMessageWriter(PipesUnityCatalogVolumesMessageWriter):
    def __init__(self, volumes_root: str | None, **kwargs: Any):
        super().__init__(**kwargs)
        self._root = volumes_root

    def make_channel(
        self, params: Mapping[str, Any]
    ) -> PipesBufferedFilesystemMessageWriterChannel:
        return PipesBufferedFilesystemMessageWriterChannel(
            path=volume_local_path(str(params["path"]), self._root), interval=self.interval
        )


def choose_pipes_io(
    env: ScriptEnv, argv: list[str] | None = None
) -> tuple[PipesParamsLoader, PipesContextLoader, Any, str]:
    """(params loader, context loader, message writer, description) for this process."""
    argv = sys.argv if argv is None else argv
    if DAGSTER_PIPES_CONTEXT_CLI_ARGUMENT in argv:
        params_loader: PipesParamsLoader = PipesCliArgsParamsLoader()
        via = "cli"
    else:
        params_loader = PipesEnvVarParamsLoader()
        via = "env"
    if not params_loader.is_dagster_pipes_process():
        return params_loader, PipesDefaultContextLoader(), PipesDefaultMessageWriter(), "none"
    context_params = params_loader.load_context_params()
    path = str(context_params.get("path", ""))
    if path.startswith("/Volumes/"):
        root = env.volumes_root
        return (
            params_loader,
            VolumeContextLoader(root),
            VolumeMessageWriter(root),
            f"volumes ({via})",
        )
    dbfs = via == "cli" or env.on_databricks or path.startswith("dbfs:")
    if not dbfs and path and env.dbfs_root != DEFAULT_DBFS_ROOT and not os.path.exists(path):
        # A local Databricks stand-in: the context file is under the moved DBFS root.
        dbfs = os.path.exists(dbfs_local_path(path, env.dbfs_root))
    if dbfs:
        root = env.dbfs_root
        return params_loader, DbfsContextLoader(root), DbfsMessageWriter(root), f"dbfs ({via})"
    return params_loader, PipesDefaultContextLoader(), PipesDefaultMessageWriter(), "local"


__all__ = ["DAGSTER_PIPES_CONTEXT_ENV_VAR", "choose_pipes_io", "dbfs_local_path"]
