"""A tiny Dagster Pipes script the Databricks stand-in tests run as a Databricks python task.

It picks its Pipes IO the way the loader script must on Databricks:
* bootstrap from CLI args (existing cluster, serverless) or env vars (new cluster);
* a context path under ``/Volumes/`` -> Unity Catalog volume IO, else DBFS IO;
* ``/dbfs`` and ``/Volumes`` are FUSE mounts on Databricks; here they are the local directories
  named by ``DATALOADER_DBFS_ROOT`` (stands for ``/dbfs``) and ``DATALOADER_VOLUMES_ROOT``
  (prefixed to ``/Volumes/...`` paths), the loader's convention; unset, the real mounts.
Behaviour comes from the Pipes extras: ``mode`` = ok | fail | sleep, ``rows``, ``seconds``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from dagster_pipes import (
    DAGSTER_PIPES_CONTEXT_CLI_ARGUMENT,
    PipesBlobStoreMessageWriter,
    PipesBufferedFilesystemMessageWriterChannel,
    PipesCliArgsParamsLoader,
    PipesContextLoader,
    PipesEnvVarParamsLoader,
    PipesParams,
    open_dagster_pipes,
)

# The stand-in's python is the project's, where databricks_scripts is installed.
from databricks_scripts.contract import error_message


def local_path(remote: str) -> str:
    """Where a DBFS or volume path is visible to plain file IO in this process."""
    if remote.startswith("/Volumes/"):
        root = os.environ.get("DATALOADER_VOLUMES_ROOT", "/")
        return os.path.join(root, remote.lstrip("/"))
    remote = remote.removeprefix("dbfs:")
    root = os.environ.get("DATALOADER_DBFS_ROOT", "/dbfs")
    return os.path.join(root, remote.lstrip("/"))


class MappedContextLoader(PipesContextLoader):
    @contextmanager
    def load_context(self, params: PipesParams) -> Iterator[dict]:
        with open(local_path(params["path"]), encoding="utf-8") as f:
            yield json.load(f)


class MappedMessageWriter(PipesBlobStoreMessageWriter):
    # get_opened_extras of dagster_pipes' DBFS writer needs a live SparkSession; without Spark
    # there is no cluster log location to report, so the base class' empty extras are right.
    def make_channel(self, params: PipesParams) -> PipesBufferedFilesystemMessageWriterChannel:
        return PipesBufferedFilesystemMessageWriterChannel(
            path=local_path(params["path"]), interval=self.interval
        )


def task_parameters() -> list[str]:
    """The task's own parameters: argv minus the Pipes bootstrap flags and their values."""
    out, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
        elif arg.startswith("--dagster-pipes"):
            skip = True
        else:
            out.append(arg)
    return out


def main() -> None:
    via_cli = DAGSTER_PIPES_CONTEXT_CLI_ARGUMENT in sys.argv
    params_loader = PipesCliArgsParamsLoader() if via_cli else PipesEnvVarParamsLoader()
    with open_dagster_pipes(
        params_loader=params_loader,
        context_loader=MappedContextLoader(),
        message_writer=MappedMessageWriter(interval=0.5),
    ) as pipes:
        mode = pipes.get_extra("mode")
        context_path = params_loader.load_context_params()["path"]
        io = "volume" if context_path.startswith("/Volumes/") else "dbfs"
        pipes.log.info(f"standin script started: bootstrap={'cli' if via_cli else 'env'} io={io}")
        print("standin script stdout line")
        if mode == "fail":
            message = f"standin script failed on purpose: {pipes.get_extra('reason')}"
            pipes.report_custom_message(error_message(message))
            raise RuntimeError(message)
        if mode == "sleep":
            pipes.log.info("sleeping")
            time.sleep(float(pipes.get_extra("seconds")))
        pipes.report_asset_materialization(
            metadata={
                "rows_written": {"raw_value": int(pipes.get_extra("rows")), "type": "int"},
                "bootstrap": "cli" if via_cli else "env",
                "io": io,
                "marker": os.environ.get("STANDIN_MARKER", ""),
                "task_parameters": " ".join(task_parameters()),
            }
        )


if __name__ == "__main__":
    # An exception escaping the file fails the task; Databricks reports it (``Type: message``)
    # as runs/get-output's ``error``, its traceback as ``error_trace``.
    main()
