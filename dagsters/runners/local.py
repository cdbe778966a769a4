"""The local runner: a script from ``databricks_scripts/`` as a subprocess of the step.

Pipes context and messages travel in temp files. The child's environment is an allow-list
(:func:`environment_for_script`): PATH, HOME, the locale, TZ and the like, the scripts' own
documented settings (``script_env.SCRIPT_SETTING_NAMES``), plus ``DATALOADER_HOME``,
``DATALOADER_LAKE_ROOT``, ``PYTHONUNBUFFERED`` and the Pipes bootstrap variables. The load
script gets its own source's ``DATALOADER_SECRET__<SCOPE>__<KEY>`` (and its connection's hash
key when the row hashes columns) and no other secret; the retry script also gets its model's
settings and key, databricks-sdk auth and the source secrets (it only masks them). Neither gets ``LAKEBASE_*``, alert webhooks or the models repository URL. Its stderr is copied to the Dagster compute log and its tail kept for the
error text. A script outliving the timeout is stopped; when the Dagster run is terminated the
script is stopped (SIGINT, then SIGKILL after a grace period) and the interrupt re-raised.
"""

from __future__ import annotations

import collections
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg

from dagsters.runners.outcome import (
    ScriptInterrupted,
    ScriptOutcome,
    error_code_from,
    error_from_custom_messages,
    error_from_stderr_tail,
    error_kind_from,
)
from dagsters.settings import child_environment
from databricks_scripts.contract import PARAMS_EXTRA, error_from_stderr
from databricks_scripts.load.params import secret_env_var
from databricks_scripts.script_env import is_script_base_env_var

LOAD_SCRIPT = "dataloader_pipe.py"
# What the retry script may need: its model's key, databricks-sdk auth for model serving, and the
# source secrets' values (it never connects to a source; it masks them in the model's answer).
_RETRY_SECRET_PREFIXES = ("DATALOADER_AI_", "OPENAI_", "DATABRICKS_", "DATALOADER_SECRET__")

_STDERR_TAIL_LINES = 200


@dataclass(frozen=True)
class LocalRunner:
    """Runs one script with ``python_executable`` and waits for it."""

    scripts_dir: Path
    timeout_seconds: int
    termination_grace_seconds: float
    python_executable: str = sys.executable
    # None: the child inherits this process's value (the script has its own fallback).
    home: str | None = None
    lake_root: str | None = None

    def child_overrides(self) -> dict[str, str]:
        """What the script's environment gets on top of this process's."""
        overrides = {"PYTHONUNBUFFERED": "1"}
        if self.home:
            overrides["DATALOADER_HOME"] = self.home
        if self.lake_root:
            overrides["DATALOADER_LAKE_ROOT"] = self.lake_root
        return overrides

    def run(
        self, context: dg.AssetExecutionContext, script: str, extras: Mapping[str, Any]
    ) -> ScriptOutcome:
        # Not PipesSubprocessClient.run(): on failure it raises before handing back the session
        # (which holds the script's own error message), it cannot both show and keep stderr, and on
        # termination it leaves a child that ignores SIGINT running after 20 s. Same Pipes parts,
        # driven here.
        script_path = self.scripts_dir / script
        command = [self.python_executable, str(script_path)]
        stderr_tail: collections.deque[str] = collections.deque(maxlen=_STDERR_TAIL_LINES)
        interrupted = False
        with dg.open_pipes_session(
            context=context,
            context_injector=dg.PipesTempFileContextInjector(),
            message_reader=dg.PipesTempFileMessageReader(),
            extras=dict(extras),
        ) as session:
            process = subprocess.Popen(
                command,
                cwd=str(script_path.parent),
                env=child_environment(
                    {**self.child_overrides(), **session.get_bootstrap_env_vars()},
                    allow=environment_for_script(script, extras.get(PARAMS_EXTRA) or {}),
                ),
                stdout=None,
                stderr=subprocess.PIPE,
                text=True,
                errors="replace",
            )
            tee = threading.Thread(
                target=_tee_stderr, args=(process, stderr_tail), daemon=True, name="stderr-tee"
            )
            tee.start()
            try:
                returncode = self._wait(process)
            except dg.DagsterExecutionInterruptedError:
                context.log.info("Dagster run terminated: stopping the load subprocess.")
                self._stop(process)
                interrupted = True  # raised below, once the session has read the last messages
                returncode = process.returncode
            finally:
                tee.join(timeout=5)
        if interrupted:
            raise ScriptInterrupted(
                error_from_custom_messages(session.get_custom_messages())
                or error_from_stderr(list(stderr_tail))
            )
        error = self._error(returncode, session.get_custom_messages(), list(stderr_tail))
        return ScriptOutcome(
            results=session.get_reported_results() if error is None else (),
            custom_messages=session.get_custom_messages(),
            error=error,
            error_kind=None
            if error is None or returncode is None
            else error_kind_from(session.get_custom_messages(), list(stderr_tail)),
            error_code=None
            if error is None or returncode is None
            else error_code_from(session.get_custom_messages(), list(stderr_tail)),
        )

    def _error(
        self, returncode: int | None, messages: list[Any], stderr_tail: list[str]
    ) -> str | None:
        if returncode is None:
            return f"Timed out after {self.timeout_seconds} seconds; the load process was killed."
        if returncode != 0:
            return (
                error_from_custom_messages(messages)
                or error_from_stderr_tail(stderr_tail)
                or f"Load process exited with code {returncode}"
            )
        return None

    def _wait(self, process: subprocess.Popen) -> int | None:
        """Exit code, or None after killing a process that outlived the timeout."""
        try:
            return process.wait(timeout=self.timeout_seconds)
        except subprocess.TimeoutExpired:
            self._stop(process)
            return None

    def _stop(self, process: subprocess.Popen) -> None:
        if process.poll() is not None:
            return
        # SIGINT first so the script can close its source connection and say why it stopped.
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=self.termination_grace_seconds)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


def environment_for_script(script: str, params: Mapping[str, Any]) -> Callable[[str], bool]:
    """Which variables of this process the child running ``script`` with ``params`` inherits.

    An allow-list: the process basics and the scripts' settings
    (``script_env.is_script_base_env_var``); the load script adds its own source's secret, the
    retry script its model's and databricks-sdk settings and the source secrets.
    """
    if script == LOAD_SCRIPT:
        config = params.get("db_config_value") or {}
        scope, key = params.get("db_kv_scope"), config.get("password_secret")
        own = {secret_env_var(str(scope), str(key))} if scope and key else set()
        hash_scope, hash_key = params.get("hash_secret_scope"), params.get("hash_secret_key")
        if params.get("columns_hash") and hash_scope and hash_key:
            own.add(secret_env_var(str(hash_scope), str(hash_key)))  # its connection's hash key
        return lambda name: is_script_base_env_var(name) or name.upper() in own
    return lambda name: (
        is_script_base_env_var(name) or name.upper().startswith(_RETRY_SECRET_PREFIXES)
    )


def _tee_stderr(process: subprocess.Popen, tail: collections.deque[str]) -> None:
    """Copy the script's stderr to ours (the Dagster compute log) and keep the last lines."""
    assert process.stderr is not None
    for line in process.stderr:
        tail.append(line.rstrip("\n"))
        sys.stderr.write(line)
        sys.stderr.flush()
