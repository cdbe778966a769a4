"""``dataloader dev``'s run launcher: each run's worker is forked from a process that has already
imported Dagster.

Dagster's default launcher asks the code server to start a run, and the code server spawns a fresh
Python process for it, which imports Dagster's run execution and the instance's storage modules
(SQLAlchemy, Alembic) before it reaches the code location: about 1.5 s of CPU on an idle 2-core
machine, per run, for a tiny load whose own work is under a second (docs/operations.md, "What a
run worker imports"). This launcher starts the worker from Python's fork server instead
(``multiprocessing`` "forkserver"): one process, started on the first launch, imports those
modules once, and every run worker is forked from it. The worker then imports the code location
afresh (so a reloaded code location is what runs) and executes the run exactly as
``dagster api execute_run`` does, Dagster's entry for launchers that start their own worker
(``dagster_compat.execute_run``).

What a person sees is what the default launcher gives: the run's events, "Started process for run
(pid: ...)", terminate from the UI (SIGINT to the worker, which Dagster turns into a cancelled
run; the load stops its script), and run monitoring noticing a worker that died. The worker's
pid and start time are kept in the run's tags (``dataloader/run_worker``), so the webserver,
which did not start it, can signal it, and a pid the system has since given to another process is
never signalled.

Linux only (``/proc`` identifies the worker; forking is what macOS discourages); elsewhere, or
with ``DATALOADER_RUN_LAUNCHER=default``, ``dataloader dev`` keeps Dagster's default launcher.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.process
import os
import signal
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dagsters.dagster_compat import (
    CheckRunHealthResult,
    ConfigurableClass,
    ConfigurableClassData,
    LaunchRunContext,
    RunLauncher,
    WorkerStatus,
    execute_run,
)

WORKER_TAG = "dataloader/run_worker"

# Imported once by the fork server, so no run worker imports them again: Dagster's run execution
# and CLI entry, and the third-party packages the code location imports. The instance's storage
# modules are added from its configuration (`_storage_modules`). Never the code location's own
# modules: a worker imports those afresh, so a reload takes effect at the next run.
PRELOAD = (
    "dagster._cli.api",
    "dagster._cli.utils",
    "dagster._core.execution.api",
    "dagster._core.storage.sqlite_storage",
    "dagster._core.storage.runs.sqlite.sqlite_run_storage",
    "dagster._core.storage.event_log.sqlite.sqlite_event_log",
    "dagster._core.storage.schedules.sqlite.sqlite_schedule_storage",
    "psycopg",
    "psycopg_pool",
    "croniter",
)

_START_LOCK = threading.Lock()


def process_start_time(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, from /proc), or None when there is no
    such live process (gone, or a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    # fields[0] is the state (field 3 of proc(5)); starttime is field 22.
    return None if fields[0] in ("Z", "X") else fields[19]


def worker_tag(pid: int) -> str:
    return f"{pid}:{process_start_time(pid) or ''}"


def live_worker(tags: Mapping[str, str]) -> int | None:
    """The pid of the run's worker if that very process is still running."""
    pid_text, _, started = tags.get(WORKER_TAG, "").partition(":")
    if not pid_text.isdigit() or not started:
        return None
    pid = int(pid_text)
    return pid if process_start_time(pid) == started else None


def run_worker(run_id: str, instance_ref: str) -> None:
    """A forked run worker's body (the fork server's child)."""
    sys.exit(execute_run(run_id, instance_ref))


def _storage_modules(instance: Any) -> list[str]:
    ref = instance.get_ref()
    datas = (
        ref.storage_data,
        ref.run_storage_data,
        ref.event_storage_data,
        ref.schedule_storage_data,
        ref.compute_logs_data,
    )
    return [data.module_name for data in datas if data is not None]


class ForkserverRunLauncher(RunLauncher, ConfigurableClass):
    """Starts each run's worker as a fork of a process with Dagster already imported."""

    def __init__(self, inst_data: ConfigurableClassData | None = None):
        self._inst_data = inst_data
        self._context: Any = None
        super().__init__()

    @property
    def inst_data(self) -> ConfigurableClassData | None:
        return self._inst_data

    @classmethod
    def config_type(cls) -> dict:
        return {}

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]
    ) -> ForkserverRunLauncher:
        return cls(inst_data=inst_data)

    def _fork_server(self) -> Any:
        if self._context is None:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload([*PRELOAD, *_storage_modules(self._instance)])
            self._context = context
        return self._context

    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        instance_ref = _serialize_ref(self._instance)
        with _START_LOCK:
            process = self._fork_server().Process(
                target=run_worker,
                args=(run.run_id, instance_ref),
                name=f"dagster-run-{run.run_id}",
            )
            process.start()
            # The fork server reaps its children; left in multiprocessing's list of this
            # process's children, every running load would be joined when the daemon exits.
            multiprocessing.process._children.discard(process)  # type: ignore[attr-defined]
        self._instance.add_run_tags(run.run_id, {WORKER_TAG: worker_tag(process.pid)})

    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            return False
        self._instance.report_run_canceling(run)
        pid = live_worker(run.tags)
        if pid is None:
            # Nobody is left to finish the run: it would stay "Canceling" until run
            # monitoring's timeout.
            self._instance.report_run_canceled(
                run, "No live run worker to send the termination to: the run is canceled."
            )
            return False
        os.kill(pid, signal.SIGINT)
        return True

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: Any) -> CheckRunHealthResult:
        if WORKER_TAG not in run.tags:
            # Launched a moment ago: the tag follows the start.
            return CheckRunHealthResult(WorkerStatus.RUNNING)
        if live_worker(run.tags) is not None:
            return CheckRunHealthResult(WorkerStatus.RUNNING)
        current = self._instance.get_run_by_id(run.run_id)
        if current is not None and current.is_finished:
            return CheckRunHealthResult(WorkerStatus.SUCCESS)
        return CheckRunHealthResult(
            WorkerStatus.FAILED, f"Run worker process ({run.tags[WORKER_TAG]}) is gone."
        )


def _serialize_ref(instance: Any) -> str:
    from dagster import serialize_value

    return serialize_value(instance.get_ref())
