"""Jobs the fork-server run launcher's tests launch (tests/dagster/test_run_launcher.py): the
forked worker imports this module afresh by the run's code origin, as it imports the code
location."""

import atexit
import os
import time
from pathlib import Path

import dagster as dg


def _note_pid(path: str) -> None:
    """Written whole or not at all: a test waiting for the file never reads half of it."""
    partial = Path(f"{path}.partial")
    partial.write_text(str(os.getpid()))
    partial.replace(path)


@dg.op(config_schema={"path": str})
def note_pid(context: dg.OpExecutionContext) -> None:
    _note_pid(context.op_config["path"])
    # What registers to run at exit (the embedded PostgreSQL's handle) runs when the worker ends.
    atexit.register(_note_pid, f"{context.op_config['path']}.at_exit")


@dg.op(config_schema={"path": str})
def note_pid_and_wait(context: dg.OpExecutionContext) -> None:
    _note_pid(context.op_config["path"])
    while True:  # until the run is terminated
        time.sleep(0.05)


@dg.job(executor_def=dg.in_process_executor)
def quick_job() -> None:
    note_pid()


@dg.job(executor_def=dg.in_process_executor)
def waiting_job() -> None:
    note_pid_and_wait()
