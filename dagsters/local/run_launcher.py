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
run; the load stops its script), and a worker that dies failing its run with the reason (the
launching daemon watches each worker it started, as the code server does; run monitoring asks
the launcher too). The worker's pid and start time are written to a run tag
(``.dagster/dataloader_run_worker``: Dagster's prefix of tags the UI does not show, where its own
launcher keeps the code server's address) before the worker touches the run (a handshake: the
worker's own writes to the run could otherwise drop the tag), so the webserver, which did not
start it, can signal it, and a pid the system has since given to another process is never
signalled.

Linux only (``/proc`` identifies the worker; forking is what macOS discourages); elsewhere, or
with ``DATALOADER_RUN_LAUNCHER=default``, ``dataloader dev`` keeps Dagster's default launcher.
"""

from __future__ import annotations

import atexit
import multiprocessing
import multiprocessing.connection
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
    get_run_crash_explanation,
)

WORKER_TAG = ".dagster/dataloader_run_worker"
# How long a forked worker may take to say it is ready (it unpickles its arguments; the fork
# server itself is started, and its modules imported, inside Process.start()).
READY_SECONDS = 300.0

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


class LaunchError(RuntimeError):
    """The run's worker did not start; the run fails with this message."""


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


def _tagged_worker(tags: Mapping[str, str]) -> tuple[int, str] | None:
    pid_text, _, started = tags.get(WORKER_TAG, "").partition(":")
    return (int(pid_text), started) if pid_text.isdigit() and started else None


def live_worker(tags: Mapping[str, str]) -> int | None:
    """The pid of the run's worker if that very process is still running."""
    worker = _tagged_worker(tags)
    return worker[0] if worker and process_start_time(worker[0]) == worker[1] else None


def interrupt_worker(tags: Mapping[str, str]) -> bool:
    """SIGINT to the run's worker if that very process still runs; False when it does not. A
    pidfd holds the process between the identity check and the signal, so a pid freed and
    reused in between is never signalled."""
    worker = _tagged_worker(tags)
    if worker is None:
        return False
    pid, started = worker
    try:
        handle: int | None = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    except OSError:  # no pidfd (kernel before 5.3): the check, then the signal
        handle = None
    try:
        if process_start_time(pid) != started:
            return False
        if handle is None:
            os.kill(pid, signal.SIGINT)
        else:
            signal.pidfd_send_signal(handle, signal.SIGINT)
        return True
    except ProcessLookupError:
        return False
    finally:
        if handle is not None:
            os.close(handle)


def run_worker(run_id: str, instance_ref: str, launcher: Any) -> None:
    """A forked run worker's body (the fork server's child). It says it is ready once a SIGINT
    would be kept for the run, and touches the run only after the launcher has tagged it."""

    def handshake() -> None:
        launcher.send("ready")
        launcher.recv()  # "go": the run carries this worker's tag
        launcher.close()

    try:
        code = execute_run(run_id, instance_ref, before=handshake)
    finally:
        # A fork server's child ends with os._exit, which skips what registered to run at exit:
        # run it here, as a process of its own would. The embedded PostgreSQL's handle is one
        # (each run holds it): unreleased, `dataloader dev` could not stop the server at its end.
        atexit._run_exitfuncs()
    sys.exit(code)


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
            fork_server = self._fork_server()
            ours, theirs = fork_server.Pipe()
            process = fork_server.Process(
                target=run_worker,
                args=(run.run_id, instance_ref, theirs),
                name=f"dagster-run-{run.run_id}",
            )
            process.start()
            theirs.close()
            # The fork server reaps its children, and _watch waits for this one; left in
            # multiprocessing's list of this process's children, every running load would be
            # joined when the daemon exits.
            multiprocessing.process._children.discard(process)  # type: ignore[attr-defined]
        try:
            self._hand_over(run.run_id, process, ours)
        except BaseException:
            process.kill()
            raise
        finally:
            ours.close()
        threading.Thread(
            target=self._watch, args=(run.run_id, process), name="run-worker-watch", daemon=True
        ).start()

    def _hand_over(self, run_id: str, process: Any, ours: Any) -> None:
        """Wait for the worker to be ready, tag the run with it, let it go."""
        ready = multiprocessing.connection.wait([ours, process.sentinel], timeout=READY_SECONDS)
        if ours not in ready:
            process.join(timeout=0)
            why = (
                get_run_crash_explanation(f"The run worker (pid {process.pid})", process.exitcode)
                if process.exitcode is not None
                else f"The run worker (pid {process.pid}) was not ready in {READY_SECONDS:.0f} s."
            )
            raise LaunchError(f"{why} Its output is in the dataloader dev terminal.")
        ours.recv()
        self._instance.add_run_tags(run_id, {WORKER_TAG: worker_tag(process.pid)})
        ours.send("go")

    def _watch(self, run_id: str, process: Any) -> None:
        """When the worker exits, end its run if the worker could not (killed, out of memory,
        failed before the run started), with the reason, as the code server does."""
        process.join()
        run = self._instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            return
        why = get_run_crash_explanation(f"Run worker (pid {process.pid})", process.exitcode)
        if run.status.value == "CANCELING":
            self._instance.report_run_canceled(run, why)
        else:
            self._instance.report_run_failed(run, why)

    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            return False
        self._instance.report_run_canceling(run)
        if interrupt_worker(run.tags):
            return True
        if WORKER_TAG in run.tags:
            # Nobody is left to finish the run: it would stay "Canceling" until run
            # monitoring's timeout.
            self._instance.report_run_canceled(
                run, "No live run worker to send the termination to: the run is canceled."
            )
        else:
            self._instance.report_engine_event(
                "The run's worker has not started the run yet: the run ends when it does.",
                run,
                cls=self.__class__,
            )
        return False

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: Any) -> CheckRunHealthResult:
        if WORKER_TAG not in run.tags:
            # Being launched: the tag is written before the worker starts the run.
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
