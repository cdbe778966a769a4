"""Stopping a load on SIGINT/SIGTERM: promptly, committing nothing, leaving no stray files.

When Dagster terminates a run, the local runner sends the script SIGINT (SIGKILL after a grace
period). :class:`StopSignal` turns either signal into:

1. a stop flag the loader checks between batches (``check()``): the writer's input stream
   raises :class:`StopRequested`, so delta-rs aborts before its commit;
2. a watcher thread that acts even when the main thread is blocked in native code (a source
   fetch, the Delta writer), where a Python signal handler would not run: if the load has not
   ended by itself within :data:`GRACE_SECONDS`, the watcher runs the registered hard-stop
   actions (remove this attempt's uncommitted files, report) and ends the process.

On Databricks (classic or serverless) the script runs inside Databricks' own Python process:
:meth:`StopSignal.install` then installs no handler and starts no watcher, so nothing there can
end that process (``os._exit``). A Databricks cancel of the run cancels the load's Spark jobs; the
running statement fails, commits nothing, and the load reports that failure as any other.

Once the writer has passed its last check (``enter_commit()``) a stop no longer aborts it: the
commit is moments away and completes; the load then reports its result as usual.

:func:`data_files` / :func:`remove_uncommitted` decide which files this attempt wrote: data files
in the destination that were not there before the write began and that the Delta log (read
again, after the abort) does not reference. Committed files are never touched.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path

from databricks_scripts.contract import KIND_CANCELLED
from databricks_scripts.failures import DataLoaderFailure

GRACE_SECONDS = 0.5
# When the main thread already reported the stop, it gets this long to close Pipes (flush the
# messages) before the watcher ends the process anyway.
REPORTING_SECONDS = 10.0
EXIT_CODE = 1


class StopRequested(DataLoaderFailure, RuntimeError):
    """The load was asked to stop (SIGINT/SIGTERM) before its commit."""

    kind = KIND_CANCELLED

    step = "stop on signal"


class StopSignal:
    """The stop flag, the commit gate and the watcher of one load process."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.finished = threading.Event()
        self.signal_name: str | None = None
        self._lock = threading.RLock()  # the signal handler may run while main holds it
        self._committing = False
        self._cleanup: Callable[[], int] | None = None
        self._progress: Callable[[], str] | None = None
        self._reporter: Callable[[str], None] | None = None
        self._outcome: str | None = None
        self.reported = False
        # Commits a multi-commit load (chunked upsert, resumable first load) already made.
        self.commits_done = 0

    # -- set up -------------------------------------------------------------------------------

    def install(self, *, on_databricks: bool = False) -> StopSignal:
        """Handle SIGINT and SIGTERM in this process (main thread only; elsewhere a no-op).

        ``on_databricks``: a no-op too. The process is Databricks' (its signal handling, its
        other work); the run's own cancel stops the load there (the module's docstring).
        """
        if on_databricks or threading.current_thread() is not threading.main_thread():
            return self
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        # The C-level handler writes the signal number here at once, whatever the main thread
        # is doing; the Python-level handler below runs only when it returns to Python code.
        signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda signum, frame: self.trip(signum))
        threading.Thread(target=self._watch, args=(read_fd,), daemon=True, name="stop").start()
        return self

    def on_stop(
        self,
        *,
        cleanup: Callable[[], int] | None = None,
        progress: Callable[[], str] | None = None,
        reporter: Callable[[str], None] | None = None,
    ) -> None:
        """What a stop does: ``cleanup()`` removes this attempt's uncommitted files (returns how
        many), ``progress()`` says how far the load got, ``reporter(text)`` tells Dagster (used
        only when the watcher has to end the process itself)."""
        self._cleanup = cleanup or self._cleanup
        self._progress = progress or self._progress
        self._reporter = reporter or self._reporter

    def finish_stop(self) -> str:
        """Clean up once and say what happened (the same sentence however often it is called)."""
        with self._lock:
            if self._outcome is None:
                removed = self._cleanup() if self._cleanup else 0
                progress = f" {self._progress()}" if self._progress else ""
                committed = (
                    f"its {self.commits_done} earlier commit(s) stay and the next load "
                    "repeats or resumes it"
                    if self.commits_done
                    else "committed nothing"
                )
                self._outcome = (
                    f"{self.describe()}{progress}; {committed}; removed {removed} "
                    "uncommitted file(s) this attempt had written"
                )
            return self._outcome

    # -- the loader's side --------------------------------------------------------------------

    def check(self) -> None:
        if self.requested.is_set():
            raise StopRequested(self.describe())

    def enter_commit(self) -> None:
        """The point of no return: raises if a stop came first, else the commit goes ahead."""
        with self._lock:
            self.check()
            self._committing = True

    def leave_commit(self) -> None:
        """One commit of a multi-commit load returned: a stop aborts the next one again."""
        with self._lock:
            self._committing = False
            self.commits_done += 1

    def describe(self) -> str:
        return f"stopped by {self.signal_name or 'a signal'} before the commit"

    # -- the watcher --------------------------------------------------------------------------

    def trip(self, signum: int) -> None:
        with self._lock:
            if self.signal_name is None:
                self.signal_name = signal.Signals(signum).name
            self.requested.set()

    def _watch(self, read_fd: int) -> None:
        while True:
            data = os.read(read_fd, 16)
            if not data:
                return
            for signum in data:
                if signum in (signal.SIGINT, signal.SIGTERM):
                    self.trip(signum)
            if self.requested.is_set():
                break
        if self.finished.wait(GRACE_SECONDS):
            return  # the main thread stopped the load by itself
        if self.reported and self.finished.wait(REPORTING_SECONDS):
            return  # the main thread has the error in hand and is handing it to Dagster
        with self._lock:
            if self._committing:
                return  # the commit completes; the load ends normally
        try:
            text = self.finish_stop()
            if self._reporter is not None and not self.reported:
                self.reported = True
                self._reporter(text)
        except Exception:  # noqa: BLE001, S110 - ending the process matters more
            pass
        os._exit(EXIT_CODE)


def data_files(destination: Path) -> set[str]:
    """Data files under ``destination`` (paths relative to it), the Delta log excluded."""
    if not destination.exists():
        return set()
    found = set()
    for path in destination.rglob("*.parquet"):
        relative = path.relative_to(destination)
        if relative.parts and relative.parts[0] != "_delta_log":
            found.add(relative.as_posix())
    return found


def remove_uncommitted(destination: Path, before: set[str]) -> int:
    """Delete the data files that appeared since ``before`` and that no Delta commit references;
    remove the destination folder when this attempt created it and left it empty. Returns the
    number of files removed."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    new = data_files(destination) - before
    if not new:
        _remove_if_empty(destination)
        return 0
    try:
        referenced = referenced_files(DeltaTable(str(destination)))
    except TableNotFoundError:
        referenced = set()
    removed = 0
    for name in sorted(new - referenced):
        try:
            (destination / name).unlink()
            removed += 1
        except FileNotFoundError:
            pass
    _remove_if_empty(destination)
    return removed


def referenced_files(table) -> set[str]:
    """The data files the table's current version references (paths relative to the table)."""
    from urllib.parse import unquote

    import pyarrow as pa

    actions = pa.table(table.get_add_actions(flatten=True))
    return {unquote(p) for p in actions.column("path").to_pylist()}


def _remove_if_empty(destination: Path) -> None:
    try:
        destination.rmdir()  # only succeeds when empty: a first load that wrote nothing
    except OSError:
        pass
