"""A local stand-in of the Databricks REST API (test fixture only).

It serves, on 127.0.0.1, the parts of the API that ``databricks-sdk`` and dagster-databricks'
``PipesDatabricksClient`` / ``PipesDatabricksServerlessClient`` call: Jobs ``runs/submit``,
``runs/get``, ``runs/get-output``, ``runs/cancel`` (2.1 and 2.2), DBFS (2.0), ``clusters/get``,
and the Unity Catalog Files/Directories API. Each submitted ``spark_python_task`` runs the real
script as a subprocess, the way Databricks would hand it its inputs:

* existing cluster / serverless: task ``parameters`` appended to ``argv``;
* new cluster: ``new_cluster.spark_env_vars`` added to the environment;
* only what a cluster has in its environment (never the test process'), and secrets through
  ``secrets/get`` (the runtime's ``dbutils.secrets``);
* life cycle PENDING -> (QUEUED or BLOCKED, when held) -> RUNNING -> TERMINATING -> TERMINATED;
  ``runs/get-output`` gives the uncaught exception (``error``) and its traceback (``error_trace``).

Remote storage is mapped to local directories the script is told about through environment
variables, because Databricks exposes them as FUSE mounts the script opens with plain file IO:

* ``DATALOADER_DBFS_ROOT`` stands for the ``/dbfs`` mount: DBFS ``/tmp/x`` -> ``$ROOT/tmp/x``;
* ``DATALOADER_VOLUMES_ROOT`` is prefixed to volume paths: ``/Volumes/c/s/v/x`` ->
  ``$ROOT/Volumes/c/s/v/x`` (the loader's ``pipes_io`` convention).

Other test modules can add endpoints with :meth:`DatabricksStandin.add_route`, inject transient
faults with :meth:`DatabricksStandin.inject_fault`, and assert on :attr:`DatabricksStandin.requests`.
Use the ``databricks_standin`` fixture (``from databricks_standin import databricks_standin``).
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self
from urllib.parse import parse_qsl, unquote, urlsplit

import pytest

DEFAULT_TOKEN = "dapi-standin-0123456789abcdef"
# The repository's scripts and where databricks.yml's targets sync them (workspace.file_path of the
# bundle): what tests deploy with :meth:`DatabricksStandin.deploy`.
REPO_SCRIPTS = Path(__file__).resolve().parents[1] / "databricks_scripts"
WORKSPACE_SCRIPTS = "/Workspace/Shared/dataloader/databricks_scripts"
CLUSTER = "0101-000000-standin"  # the fixture's all-purpose cluster
VOLUME = "/Volumes/main/dataloader/pipes"  # the fixture's volume
# Real limits of the DBFS API: reads default to 0.5 MB and refuse more than 1 MB.
DBFS_READ_DEFAULT = 512 * 1024
DBFS_MAX_BLOCK = 1024 * 1024
# The state message Databricks shows for a python task that exited non-zero; the script's own
# error only reaches the caller through runs/get-output (or the Pipes messages).
FAILED_STATE_MESSAGE = "Workload failed, see run output for details"
TERMINAL_STATES = ("TERMINATED", "SKIPPED", "INTERNAL_ERROR")
# What a cluster's process has of the machine's environment (nothing else of the test process).
_MACHINE_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TZ")
# Where the exec driver records the exception that ended the task (in the run's directory).
RUN_ERROR_FILE = ".standin-run-error.json"
# How Databricks runs a spark_python_task's file: its source through exec(compile(...)) in a
# Python process of its own, ``sys.argv = [path, *parameters]``, no ``__file__``, another cwd.
# An exception escaping the file (``SystemExit`` with a non-zero code included) fails the task;
# runs/get-output then reports it as the service does: ``error`` is its ``Type: message`` line
# and ``error_trace`` its traceback (not whatever the process wrote last on stderr).
EXEC_DRIVER = (
    "import json, os, sys, traceback\n"
    "path = sys.argv[1]\n"
    "sys.argv = sys.argv[1:]\n"
    f"record = os.path.abspath({RUN_ERROR_FILE!r})\n"
    "with open(path, encoding='utf-8') as f:\n"
    "    source = f.read()\n"
    "try:\n"
    "    exec(compile(source, path, 'exec'),\n"
    "         {'__name__': '__main__', '__builtins__': __builtins__})\n"
    "except BaseException as exc:\n"
    "    if isinstance(exc, SystemExit) and exc.code in (None, 0):\n"
    "        raise\n"
    "    kind = type(exc).__qualname__\n"
    "    if type(exc).__module__ not in ('__main__', 'builtins'):\n"
    "        kind = type(exc).__module__ + '.' + kind\n"
    "    text = str(exc)\n"
    "    trace = ''.join(traceback.format_exception(exc))\n"
    "    with open(record, 'w', encoding='utf-8') as f:\n"
    "        json.dump({'error': kind + ': ' + text if text else kind, 'error_trace': trace}, f)\n"
    "    sys.stderr.write(trace)\n"
    "    sys.stderr.flush()\n"
    "    code = exc.code if isinstance(exc, SystemExit) else 1\n"
    "    sys.exit(code if isinstance(code, int) else 1)\n"
)
# What runs/get reports while a run waits before it starts (``hold_in``).
HOLD_MESSAGES = {
    "QUEUED": "Queued due to reaching maximum concurrent runs of the job.",
    "BLOCKED": "The run is blocked on an upstream dependency.",
}
SERVERLESS_RUNTIME = "client.2.5"  # what serverless environment version 2 reports


class ApiError(Exception):
    """Raise from a handler to answer with the Databricks error body shape."""

    def __init__(self, status: int, error_code: str, message: str, headers: Mapping | None = None):
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.message = message
        self.headers = dict(headers or {})


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: Mapping[str, str]
    body: bytes
    match: re.Match | None = None

    def json(self) -> dict:
        if not self.body:
            return {}
        try:
            return json.loads(self.body)
        except ValueError as exc:
            raise ApiError(400, "MALFORMED_REQUEST", f"Invalid JSON given: {exc}") from exc


@dataclass
class Response:
    status: int = 200
    body: bytes | dict | list | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    body: Any  # decoded JSON when the body was JSON, else raw bytes (None when empty)
    status: int


@dataclass
class _Fault:
    status: int
    remaining: int
    retry_after: int | None
    method: str | None
    path: re.Pattern | None
    error_code: str | None = None
    message: str | None = None


# What the service answers for a fault of this status (error_code, message) unless the test says.
# 500 and 403 are not retried by databricks-sdk: they reach the caller as the SDK's exceptions.
_FAULT_TEXT = {
    429: ("REQUEST_LIMIT_EXCEEDED", "Too many requests. Please wait a moment and try again."),
    500: ("INTERNAL_ERROR", "Internal Server Error"),
    401: ("UNAUTHENTICATED", "Credential was not sent or was of an unsupported type for this API."),
    403: ("PERMISSION_DENIED", "Invalid access token."),
}


def _sdk_fields(cls: type) -> set[str]:
    import dataclasses

    return {f.name for f in dataclasses.fields(cls)}


def _unknown_fields(body: Mapping[str, Any], allowed: set[str], where: str) -> None:
    """Refuse a request body naming fields the API (the SDK's dataclass) does not know."""
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ApiError(
            400,
            "INVALID_PARAMETER_VALUE",
            f"Invalid JSON given in the body of the request - unknown field(s) {unknown} in {where}",
        )


def validate_submit_body(body: Mapping[str, Any]) -> None:
    """``runs/submit`` as strictly as the SDK's own model of it: unknown fields refused at the top
    level (``JobsAPI.submit``'s parameters), in each task (``SubmitTask``), its
    ``spark_python_task``, ``new_cluster`` (``ClusterSpec``), libraries and environments."""
    import inspect

    from databricks.sdk.service import compute, jobs

    top = set(inspect.signature(jobs.JobsAPI.submit).parameters) - {"self"}
    _unknown_fields(body, top, "the run")
    for task in body.get("tasks") or []:
        _unknown_fields(task, _sdk_fields(jobs.SubmitTask), f"task {task.get('task_key')}")
        if isinstance(task.get("spark_python_task"), Mapping):
            _unknown_fields(
                task["spark_python_task"], _sdk_fields(jobs.SparkPythonTask), "spark_python_task"
            )
        if isinstance(task.get("new_cluster"), Mapping):
            _unknown_fields(task["new_cluster"], _sdk_fields(compute.ClusterSpec), "new_cluster")
        for library in task.get("libraries") or []:
            _unknown_fields(library, _sdk_fields(compute.Library), "libraries")
    for env in body.get("environments") or []:
        _unknown_fields(env, _sdk_fields(jobs.JobEnvironment), "environments")
        _unknown_fields(env.get("spec") or {}, _sdk_fields(compute.Environment), "environment spec")


@dataclass
class StandinRun:
    run_id: int
    task_run_id: int
    job_id: int
    run_name: str
    task: dict
    submit_body: dict
    cluster_id: str | None
    life_cycle_state: str = "PENDING"
    result_state: str | None = None
    state_message: str = "Waiting for cluster"
    start_time: int = field(default_factory=lambda: int(time.time() * 1000))
    end_time: int = 0
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    returncode: int | None = None
    pid: int | None = None
    stdout_path: Path | None = None
    stderr_path: Path | None = None
    served_states: list[str] = field(default_factory=list)  # life-cycle states runs/get gave
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def stdout(self) -> str:
        return _read_text(self.stdout_path)

    @property
    def stderr(self) -> str:
        return _read_text(self.stderr_path)


@dataclass
class StandinJobRun:
    """A run of several tasks (``runs/submit`` with more than one task or with job clusters)."""

    run_id: int
    job_id: int
    run_name: str
    submit_body: dict
    task_runs: list[StandinRun]
    start_time: int = field(default_factory=lambda: int(time.time() * 1000))
    idempotency_token: str | None = None
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)

    def state(self) -> tuple[str, str | None, str]:
        """(life cycle, result, message) of the run from its tasks' states."""
        lives = [t.life_cycle_state for t in self.task_runs]
        if not self.done.is_set():
            return ("RUNNING" if "PENDING" not in lives[:1] else "PENDING"), None, "In run"
        results = [t.result_state for t in self.task_runs]
        if self.cancel_requested.is_set():
            return "TERMINATED", "CANCELED", "Run cancelled."
        if all(r == "SUCCESS" for r in results):
            return "TERMINATED", "SUCCESS", ""
        failed = sum(r != "SUCCESS" for r in results)
        return "TERMINATED", "FAILED", f"{failed} of {len(results)} tasks failed."


def _read_text(path: Path | None) -> str:
    if path is None or not path.exists():
        return ""
    return path.read_text(encoding="utf-8", errors="replace")


class DatabricksStandin:
    """The stand-in server. Start with :meth:`start` (or use as a context manager)."""

    def __init__(
        self,
        root: Path,
        *,
        token: str = DEFAULT_TOKEN,
        python: str = sys.executable,
        pending_seconds: float = 0.2,
        hold_in: str | None = None,
        runtime_env: Mapping[str, str] | None = None,
    ):
        self.root = Path(os.path.abspath(root))
        self.token = token
        self.python = python
        self.pending_seconds = pending_seconds
        # "QUEUED" (waiting for capacity, as with job queueing) or "BLOCKED" (held by an
        # upstream run or a concurrency limit): PENDING -> that state until the test sets
        # ``release`` (no timing: it can wait until a poll has seen the state). None: no wait.
        self.hold_in = hold_in
        self.release = threading.Event()
        # What the stand-in's "runtime image" sets in every run, in place of what it lacks: it
        # has no Spark and no Unity Catalog storage, so tests give DATALOADER_ENGINE=arrow and a
        # local DATALOADER_LAKE_ROOT here. Nothing else of the test process reaches a run: it
        # sees the machine basics, DATABRICKS_RUNTIME_VERSION, this, and the cluster's
        # spark_env_vars (``_cluster_env``).
        self.runtime_env: dict[str, str] = dict(runtime_env or {})
        self.dbfs_root = self.root / "dbfs"
        # The directory that plays "/": volume paths keep their /Volumes prefix under it.
        self.volumes_fs_root = self.root / "volfs"
        self.volumes_root = self.volumes_fs_root / "Volumes"
        self.workspace_root = self.root / "workspace"
        self.runs_dir = self.root / "runs"
        for d in (self.dbfs_root, self.volumes_root, self.workspace_root, self.runs_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.requests: list[RecordedRequest] = []
        self.runs: dict[int, StandinRun] = {}
        self.job_runs: dict[int, StandinJobRun] = {}  # runs of several tasks
        self.cluster_starts: list[str] = []  # each new or job cluster started, once
        self.jobs: dict[int, dict] = {}  # jobs/create settings by job id
        self.deleted_jobs: list[int] = []
        self.clusters: dict[str, dict] = {}
        self.volumes: set[str] = set()
        self.secrets: dict[tuple[str, str], str] = {}
        self._routes: list[tuple[str, re.Pattern, Callable[[Request], Any]]] = []
        self._faults: list[_Fault] = []
        self._lock = threading.RLock()
        self._ids = itertools.count(1001)
        self._dbfs_handles: dict[int, tuple[Path, bytearray]] = {}
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._register_builtin_routes()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> DatabricksStandin:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                standin._handle(self)

            do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_GET

            def log_message(self, format, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="databricks-standin", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        for run in list(self.runs.values()):
            if not run.done.is_set():
                run.cancel_requested.set()
        for run in list(self.runs.values()):
            run.done.wait(timeout=15)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def host(self) -> str:
        assert self._server is not None, "stand-in not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def workspace_client(self, token: str | None = None):
        """A real ``databricks.sdk.WorkspaceClient`` pointed at the stand-in (PAT auth)."""
        from databricks.sdk import WorkspaceClient

        return WorkspaceClient(host=self.host, token=token or self.token, auth_type="pat")

    def env(self) -> dict[str, str]:
        """Environment variables that point databricks-sdk's default auth at the stand-in."""
        return {"DATABRICKS_HOST": self.host, "DATABRICKS_TOKEN": self.token}

    # ------------------------------------------------------------------ test setup API
    def add_route(self, method: str, pattern: str, handler: Callable[[Request], Any]) -> None:
        """Serve ``method`` on paths fully matching ``pattern`` (checked before built-ins).

        The handler receives a :class:`Request` (``request.match`` holds the regex match) and
        returns a :class:`Response`, a dict/list (200 JSON) or ``None`` (200 ``{}``); raise
        :class:`ApiError` for an error body like the real API's.
        """
        with self._lock:
            self._routes.insert(0, (method.upper(), re.compile(pattern), handler))

    def add_cluster(
        self,
        cluster_id: str = "0101-000000-standin",
        *,
        log_destination: str | None = None,
        spark_env_vars: Mapping[str, str] | None = None,
        state: str = "RUNNING",
    ) -> str:
        """Register an all-purpose cluster; ``log_destination`` (``dbfs:/...``) turns on log
        delivery; ``spark_env_vars`` are what the cluster was configured with."""
        info: dict[str, Any] = {
            "cluster_id": cluster_id,
            "cluster_name": f"standin {cluster_id}",
            "spark_version": "15.4.x-scala2.12",
            "node_type_id": "i3.xlarge",
            "num_workers": 1,
            "state": state,
            "spark_env_vars": dict(spark_env_vars or {}),
            "creator_user_name": "standin@localhost",
        }
        if log_destination:
            info["cluster_log_conf"] = {"dbfs": {"destination": log_destination}}
        self.clusters[cluster_id] = info
        return cluster_id

    def add_volume(self, full_name: str) -> str:
        """Create Unity Catalog volume ``catalog.schema.volume``; returns its ``/Volumes`` path."""
        catalog, schema, volume = full_name.split(".")
        (self.volumes_root / catalog / schema / volume).mkdir(parents=True, exist_ok=True)
        self.volumes.add(f"{catalog}/{schema}/{volume}")
        return f"/Volumes/{catalog}/{schema}/{volume}"

    def deploy(self, local_path: Path, workspace_path: str) -> str:
        """Make ``local_path`` (file or directory) visible at ``workspace_path``
        (``/Workspace/...``, ``dbfs:/...`` or ``/Volumes/...``), as a bundle deploy would.
        A symlink, so the script that runs is the repository's file, unmodified."""
        target = self.local_path(workspace_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink() or target.exists():
            target.unlink()
        target.symlink_to(Path(local_path).resolve())
        return workspace_path

    def inject_fault(
        self,
        status: int = 503,
        *,
        count: int = 1,
        retry_after: int | None = 1,
        method: str | None = "GET",
        path: str | None = r"/api/2\.[12]/jobs/runs/get",
        error_code: str | None = None,
        message: str | None = None,
    ) -> None:
        """Answer the next ``count`` matching requests with ``status`` (and ``Retry-After``).

        The body is the service's for that status (``_FAULT_TEXT``; 503 otherwise), or
        ``error_code`` / ``message`` when given. The run itself is not affected: a run whose
        polling fails keeps running until it ends or is cancelled."""
        with self._lock:
            self._faults.append(
                _Fault(
                    status=status,
                    remaining=count,
                    retry_after=retry_after,
                    method=method.upper() if method else None,
                    path=re.compile(path) if path else None,
                    error_code=error_code,
                    message=message,
                )
            )

    def faults_pending(self) -> int:
        with self._lock:
            return sum(f.remaining for f in self._faults)

    def requests_to(self, method: str, path_pattern: str) -> list[RecordedRequest]:
        rx = re.compile(path_pattern)
        with self._lock:
            return [r for r in self.requests if r.method == method.upper() and rx.fullmatch(r.path)]

    def only_run(self) -> StandinRun:
        assert len(self.runs) == 1, f"expected exactly one run, got {sorted(self.runs)}"
        return next(iter(self.runs.values()))

    def wait_for_state(self, run_id: int, *states: str, timeout: float = 60) -> StandinRun:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.runs.get(run_id)
            if run is not None and run.life_cycle_state in states:
                return run
            time.sleep(0.05)
        raise TimeoutError(f"run {run_id} never reached {states}")

    def wait_for_run(self, *states: str, timeout: float = 60) -> StandinRun:
        """Wait until some run exists and reaches one of ``states``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for run in list(self.runs.values()):
                if run.life_cycle_state in states:
                    return run
            time.sleep(0.05)
        raise TimeoutError(f"no run reached {states}")

    # ------------------------------------------------------------------ path mapping
    def local_path(self, remote: str) -> Path:
        """Local file standing for a remote path (``dbfs:/``, ``/dbfs/``, ``/Volumes/``,
        ``/Workspace/``; a bare absolute path is a DBFS path, as the DBFS API reads it)."""
        if remote.startswith("dbfs:"):
            return _under(self.dbfs_root, remote[len("dbfs:") :])
        if remote.startswith("/dbfs/"):
            return _under(self.dbfs_root, remote[len("/dbfs") :])
        if remote.startswith("/Volumes/"):
            return _under(self.volumes_root, remote[len("/Volumes") :])
        if remote.startswith("/Workspace/"):
            return _under(self.workspace_root, remote[len("/Workspace") :])
        if remote.startswith("/"):
            return _under(self.dbfs_root, remote)
        raise ApiError(400, "INVALID_PARAMETER_VALUE", f"Path must be absolute: {remote}")

    # ------------------------------------------------------------------ HTTP plumbing
    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(h.path)
        path = unquote(parts.path)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        req = Request(h.command, path, query, h.headers, body)
        try:
            response = self._dispatch(req)
        except ApiError as err:
            response = Response(
                err.status,
                {"error_code": err.error_code, "message": err.message},
                err.headers,
            )
        except Exception as exc:  # noqa: BLE001 - a handler bug answers 500 like the platform
            response = Response(500, {"error_code": "INTERNAL_ERROR", "message": repr(exc)})
        self._record(req, response.status)
        self._send(h, response)

    def _record(self, req: Request, status: int) -> None:
        decoded: Any = None
        if req.body:
            try:
                decoded = json.loads(req.body)
            except ValueError:
                decoded = req.body
        with self._lock:
            self.requests.append(RecordedRequest(req.method, req.path, req.query, decoded, status))

    def _send(self, h: BaseHTTPRequestHandler, response: Response) -> None:
        headers = dict(response.headers)
        payload = response.body
        if isinstance(payload, (dict, list)):
            data = json.dumps(payload).encode()
            headers.setdefault("Content-Type", "application/json")
        else:
            data = payload or b""
        h.send_response(response.status)
        for k, v in headers.items():
            h.send_header(k, v)
        if "Content-Length" not in headers:
            h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if h.command != "HEAD" and data:
            h.wfile.write(data)

    def _dispatch(self, req: Request) -> Response:
        self._check_auth(req)
        self._maybe_fault(req)
        with self._lock:
            routes = list(self._routes)
        path_matched = False
        for method, rx, handler in routes:
            m = rx.fullmatch(req.path)
            if m is None:
                continue
            path_matched = True
            if method != req.method:
                continue
            req.match = m
            result = handler(req)
            if isinstance(result, Response):
                return result
            return Response(200, {} if result is None else result)
        if path_matched:
            raise ApiError(405, "BAD_REQUEST", f"{req.method} not allowed on {req.path}")
        raise ApiError(404, "ENDPOINT_NOT_FOUND", f"No API found for '{req.method} {req.path}'")

    def _check_auth(self, req: Request) -> None:
        auth = req.headers.get("Authorization") or ""
        if not auth.startswith("Bearer "):
            raise ApiError(
                401,
                "401",
                "Credential was not sent or was of an unsupported type for this API.",
            )
        if auth[len("Bearer ") :] != self.token:
            raise ApiError(403, "403", "Invalid access token.")

    def _maybe_fault(self, req: Request) -> None:
        with self._lock:
            for fault in self._faults:
                if fault.remaining <= 0:
                    continue
                if fault.method and fault.method != req.method:
                    continue
                if fault.path and not fault.path.fullmatch(req.path):
                    continue
                fault.remaining -= 1
                headers = {}
                if fault.retry_after is not None:
                    headers["Retry-After"] = str(fault.retry_after)
                code, text = _FAULT_TEXT.get(
                    fault.status,
                    (
                        "TEMPORARILY_UNAVAILABLE",
                        f"The service at {req.path} is temporarily unavailable. "
                        + "Please try again later.",
                    ),
                )
                raise ApiError(
                    fault.status, fault.error_code or code, fault.message or text, headers
                )

    def _register_builtin_routes(self) -> None:
        jobs = r"/api/2\.[12]/jobs/runs"
        routes: list[tuple[str, str, Callable[[Request], Any]]] = [
            ("POST", jobs + "/submit", self._runs_submit),
            ("GET", jobs + "/get", self._runs_get),
            ("GET", jobs + "/get-output", self._runs_get_output),
            ("POST", jobs + "/cancel", self._runs_cancel),
            ("POST", r"/api/2\.[12]/jobs/create", self._jobs_create),
            ("POST", r"/api/2\.[12]/jobs/run-now", self._jobs_run_now),
            ("POST", r"/api/2\.[12]/jobs/delete", self._jobs_delete),
            ("GET", r"/api/2\.[01]/clusters/get", self._clusters_get),
            ("GET", r"/api/2\.0/preview/scim/v2/Me", self._me),
            ("GET", r"/api/2\.0/secrets/get", self._secrets_get),
            ("POST", r"/api/2\.0/dbfs/mkdirs", self._dbfs_mkdirs),
            ("POST", r"/api/2\.0/dbfs/put", self._dbfs_put),
            ("POST", r"/api/2\.0/dbfs/create", self._dbfs_create),
            ("POST", r"/api/2\.0/dbfs/add-block", self._dbfs_add_block),
            ("POST", r"/api/2\.0/dbfs/close", self._dbfs_close),
            ("GET", r"/api/2\.0/dbfs/get-status", self._dbfs_get_status),
            ("GET", r"/api/2\.0/dbfs/read", self._dbfs_read),
            ("GET", r"/api/2\.0/dbfs/list", self._dbfs_list),
            ("POST", r"/api/2\.0/dbfs/delete", self._dbfs_delete),
            ("PUT", r"/api/2\.0/fs/files(/Volumes/.+)", self._files_put),
            ("GET", r"/api/2\.0/fs/files(/Volumes/.+)", self._files_get),
            ("HEAD", r"/api/2\.0/fs/files(/Volumes/.+)", self._files_head),
            ("DELETE", r"/api/2\.0/fs/files(/Volumes/.+)", self._files_delete),
            ("PUT", r"/api/2\.0/fs/directories(/Volumes/.+?)/?", self._dirs_put),
            ("GET", r"/api/2\.0/fs/directories(/Volumes/.+?)/?", self._dirs_get),
            ("HEAD", r"/api/2\.0/fs/directories(/Volumes/.+?)/?", self._dirs_head),
            ("DELETE", r"/api/2\.0/fs/directories(/Volumes/.+?)/?", self._dirs_delete),
        ]
        # Appended (not add_route) so routes added by tests take precedence.
        for method, pattern, handler in routes:
            self._routes.append((method, re.compile(pattern), handler))

    # ------------------------------------------------------------------ Jobs
    def _runs_submit(self, req: Request) -> dict:
        body = req.json()
        validate_submit_body(body)
        token = body.get("idempotency_token")
        if token is not None:
            if len(str(token)) > 64:
                raise ApiError(
                    400,
                    "INVALID_PARAMETER_VALUE",
                    "idempotency_token must be at most 64 characters",
                )
            with self._lock:
                for existing in self.runs.values():
                    if existing.submit_body.get("idempotency_token") == token:
                        # Databricks starts exactly one run per token: a retry gets its id.
                        return {"run_id": existing.run_id}
        tasks = body.get("tasks") or []
        if not tasks:
            raise ApiError(400, "INVALID_PARAMETER_VALUE", "At least one task is required.")
        if len(tasks) > 1 or body.get("job_clusters"):
            return self._submit_job(body)
        task = tasks[0]
        cluster_id, env = self._task_compute(body, task, {})
        with self._lock:
            run_id = next(self._ids)
            run = StandinRun(
                run_id=run_id,
                task_run_id=next(self._ids),
                job_id=next(self._ids),
                run_name=body.get("run_name") or "Untitled",
                task=task,
                submit_body=body,
                cluster_id=cluster_id,
                env=env,
            )
            self.runs[run_id] = run
        threading.Thread(target=self._execute, args=(run,), daemon=True).start()
        return {"run_id": run_id}

    def _task_compute(
        self, body: Mapping[str, Any], task: Mapping[str, Any], job_clusters: dict[str, str]
    ) -> tuple[str | None, dict[str, str]]:
        """(cluster id, process environment) of one task; ``job_clusters`` maps the run's job
        cluster keys to the cluster started for each (one start per key and run)."""
        if not task.get("task_key"):
            raise ApiError(400, "INVALID_PARAMETER_VALUE", "Task key must be specified.")
        spt = task.get("spark_python_task")
        if not spt or not spt.get("python_file"):
            raise ApiError(
                400, "INVALID_PARAMETER_VALUE", "The stand-in runs spark_python_task tasks only."
            )
        kinds = ("existing_cluster_id", "new_cluster", "environment_key", "job_cluster_key")
        compute = [k for k in kinds if k in task]
        if len(compute) != 1:
            raise ApiError(
                400,
                "INVALID_PARAMETER_VALUE",
                "Exactly one of existing_cluster_id, new_cluster, job_cluster_key or "
                f"environment_key must be set on task {task['task_key']}, got {compute or 'none'}.",
            )
        env: dict[str, str] = {}
        cluster_id: str | None
        if "job_cluster_key" in task:
            key = task["job_cluster_key"]
            specs = {c.get("job_cluster_key"): c for c in body.get("job_clusters") or []}
            if key not in specs:
                raise ApiError(
                    400,
                    "INVALID_PARAMETER_VALUE",
                    f"Job cluster key {key} of task {task['task_key']} is not in job_clusters.",
                )
            spec = specs[key].get("new_cluster") or {}
            if not spec.get("spark_version"):
                raise ApiError(
                    400, "INVALID_PARAMETER_VALUE", "Missing required field: spark_version"
                )
            if key not in job_clusters:
                job_clusters[key] = f"job-{next(self._ids)}"
                self.cluster_starts.append(job_clusters[key])
            cluster_id = job_clusters[key]
            env.update(self._cluster_env(spec.get("spark_version")))
            env.update(spec.get("spark_env_vars") or {})
        elif "existing_cluster_id" in task:
            cluster_id = task["existing_cluster_id"]
            cluster = self.clusters.get(cluster_id)
            if cluster is None:
                raise ApiError(
                    400, "INVALID_PARAMETER_VALUE", f"Cluster {cluster_id} does not exist"
                )
            env.update(self._cluster_env(cluster.get("spark_version")))
            env.update(cluster.get("spark_env_vars") or {})
        elif "new_cluster" in task:
            spec = task["new_cluster"]
            if not spec.get("spark_version"):
                raise ApiError(
                    400, "INVALID_PARAMETER_VALUE", "Missing required field: spark_version"
                )
            cluster_id = f"new-{next(self._ids)}"
            self.cluster_starts.append(cluster_id)
            env.update(self._cluster_env(spec.get("spark_version")))
            env.update(spec.get("spark_env_vars") or {})
        else:
            keys = [e.get("environment_key") for e in body.get("environments") or []]
            if task["environment_key"] not in keys:
                raise ApiError(
                    400,
                    "INVALID_PARAMETER_VALUE",
                    f"Environment key {task['environment_key']} is not defined in environments.",
                )
            cluster_id = None
            env.update(self._cluster_env(SERVERLESS_RUNTIME))
        env["DATALOADER_DBFS_ROOT"] = str(self.dbfs_root)
        env["DATALOADER_VOLUMES_ROOT"] = str(self.volumes_fs_root)
        env.setdefault("PYTHONUNBUFFERED", "1")
        return cluster_id, env

    def _submit_job(self, body: Mapping[str, Any]) -> dict:
        """A run of several tasks (or on a job cluster): each task a run of its own under one
        parent run; tasks run in their listed order once their ``depends_on`` tasks ended."""
        tasks = body["tasks"]
        keys = [t.get("task_key") for t in tasks]
        if len(set(keys)) != len(keys):
            raise ApiError(400, "INVALID_PARAMETER_VALUE", f"Duplicate task keys: {keys}")
        job_clusters: dict[str, str] = {}
        with self._lock:
            run_id, job_id = next(self._ids), next(self._ids)
            task_runs = []
            for index, task in enumerate(tasks):
                for dep in task.get("depends_on") or []:
                    if dep.get("task_key") not in keys[:index]:
                        raise ApiError(
                            400,
                            "INVALID_PARAMETER_VALUE",
                            f"Task {task['task_key']} depends on {dep.get('task_key')}, not an "
                            "earlier task of this run.",
                        )
                cluster_id, env = self._task_compute(body, task, job_clusters)
                task_run_id = next(self._ids)
                task_runs.append(
                    StandinRun(
                        run_id=task_run_id,
                        task_run_id=task_run_id,
                        job_id=job_id,
                        run_name=task["task_key"],
                        task=task,
                        submit_body=body,
                        cluster_id=cluster_id,
                        env=env,
                    )
                )
            job = StandinJobRun(run_id, job_id, body.get("run_name") or "Untitled", body, task_runs)
            self.job_runs[run_id] = job
        threading.Thread(target=self._execute_job, args=(job,), daemon=True).start()
        return {"run_id": run_id}

    def _jobs_create(self, req: Request) -> dict:
        """``jobs/create``, as strictly as the SDK's model of it (``JobsAPI.create``, ``Task``)."""
        import inspect

        from databricks.sdk.service import compute, jobs

        body = req.json()
        top = set(inspect.signature(jobs.JobsAPI.create).parameters) - {"self"}
        _unknown_fields(body, top, "the job")
        for task in body.get("tasks") or []:
            _unknown_fields(task, _sdk_fields(jobs.Task), f"task {task.get('task_key')}")
        for cluster in body.get("job_clusters") or []:
            _unknown_fields(cluster, _sdk_fields(jobs.JobCluster), "job_clusters")
            spec = cluster.get("new_cluster") or {}
            _unknown_fields(spec, _sdk_fields(compute.ClusterSpec), "job cluster")
        with self._lock:
            job_id = next(self._ids)
            self.jobs[job_id] = body
        return {"job_id": job_id}

    def _jobs_run_now(self, req: Request) -> dict:
        body = req.json()
        with self._lock:
            settings = self.jobs.get(int(body.get("job_id") or 0))
            token = body.get("idempotency_token")
            for existing in self.job_runs.values():
                if token is not None and existing.idempotency_token == token:
                    return {"run_id": existing.run_id}
        if settings is None:
            raise ApiError(400, "INVALID_PARAMETER_VALUE", f"Job {body.get('job_id')} not found")
        started = self._submit_job({**settings, "run_name": settings.get("name")})
        self.job_runs[started["run_id"]].idempotency_token = token
        return started

    def _jobs_delete(self, req: Request) -> dict:
        job_id = int(req.json().get("job_id") or 0)
        with self._lock:
            if self.jobs.pop(job_id, None) is None:
                raise ApiError(404, "RESOURCE_DOES_NOT_EXIST", f"Job {job_id} does not exist.")
            self.deleted_jobs.append(job_id)
        return {}

    def _execute_job(self, job: StandinJobRun) -> None:
        results: dict[str, str | None] = {}
        for run in job.task_runs:
            deps = [d["task_key"] for d in run.task.get("depends_on") or []]
            upstream_ok = all(results.get(d) == "SUCCESS" for d in deps)
            if job.cancel_requested.is_set():
                self._set_state(run, "TERMINATED", "CANCELED", "Run cancelled.")
            elif not upstream_ok and (run.task.get("run_if") or "ALL_SUCCESS") == "ALL_SUCCESS":
                self._set_state(run, "SKIPPED", "UPSTREAM_FAILED", "Upstream task failed.")
            else:
                self._execute(run)
            run.done.set()
            results[run.task["task_key"]] = run.result_state
        job.done.set()

    def _cluster_env(self, runtime: str | None) -> dict[str, str]:
        """What every process on the compute starts with: the machine basics, the runtime
        version (from ``spark_version``, e.g. ``15.4.x-scala2.12``), a credential for the
        workspace (standing for the runtime's own, so the SDK's ``dbutils`` can call
        ``secrets/get`` off a real cluster) and :attr:`runtime_env`. The cluster's
        ``spark_env_vars`` go on top (the caller)."""
        env = {k: os.environ[k] for k in _MACHINE_ENV if k in os.environ}
        if runtime:
            env["DATABRICKS_RUNTIME_VERSION"] = str(runtime)
        env.update(DATABRICKS_HOST=self.host, DATABRICKS_TOKEN=self.token)
        env.update(self.runtime_env)
        return env

    def _set_state(self, run: StandinRun, life: str, result: str | None = None, msg: str = ""):
        with self._lock:
            run.life_cycle_state = life
            run.result_state = result
            run.state_message = msg
            if life in TERMINAL_STATES:
                run.end_time = int(time.time() * 1000)

    def _execute(self, run: StandinRun) -> None:
        try:
            self._execute_inner(run)
        except Exception as exc:  # noqa: BLE001 - platform faults surface as INTERNAL_ERROR
            self._set_state(run, "INTERNAL_ERROR", "FAILED", f"Stand-in error: {exc!r}")
        finally:
            run.done.set()

    def _execute_inner(self, run: StandinRun) -> None:
        if run.cancel_requested.wait(self.pending_seconds):
            self._set_state(run, "TERMINATED", "CANCELED", "Run cancelled.")
            return
        if self.hold_in:
            self._set_state(run, self.hold_in, None, HOLD_MESSAGES[self.hold_in])
            while not self.release.wait(0.05):
                if run.cancel_requested.is_set():
                    self._set_state(run, "TERMINATED", "CANCELED", "Run cancelled.")
                    return
        spt = run.task["spark_python_task"]
        python_file = spt["python_file"]
        try:
            local_file = self.local_path(python_file)
        except ApiError:
            local_file = None
        if local_file is None or not local_file.is_file():
            self._set_state(
                run,
                "INTERNAL_ERROR",
                "FAILED",
                f"Cannot read the python file {python_file}. "
                "Please check driver logs for more details.",
            )
            return
        run_dir = self.runs_dir / str(run.run_id)
        run_dir.mkdir(parents=True, exist_ok=True)
        run.stdout_path = run_dir / "stdout"
        run.stderr_path = run_dir / "stderr"
        # As Databricks does: exec(compile(source, path)) without __file__, cwd elsewhere.
        parameters = [str(p) for p in spt.get("parameters") or []]
        run.argv = [self.python, "-c", EXEC_DRIVER, str(local_file), *parameters]
        with open(run.stdout_path, "wb") as out, open(run.stderr_path, "wb") as err:
            proc = subprocess.Popen(
                run.argv,
                env=run.env,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                cwd=run_dir,
                start_new_session=True,  # so cancellation kills the script's children too
            )
            run.pid = proc.pid
            self._set_state(run, "RUNNING", None, "In run")
            timeout = run.task.get("timeout_seconds") or run.submit_body.get("timeout_seconds")
            deadline = time.monotonic() + timeout if timeout else None
            last_log_copy = 0.0
            outcome = None
            while proc.poll() is None:
                if run.cancel_requested.wait(0.05):
                    outcome = ("CANCELED", "Run cancelled.")
                elif deadline is not None and time.monotonic() > deadline:
                    outcome = ("TIMEDOUT", f"Run timed out after {timeout} seconds.")
                if outcome:
                    self._set_state(run, "TERMINATING", None, outcome[1])
                    _kill_group(proc)
                    break
                if time.monotonic() - last_log_copy > 0.5:
                    self._deliver_logs(run)
                    last_log_copy = time.monotonic()
            run.returncode = proc.wait()
        self._deliver_logs(run)
        if outcome:
            self._set_state(run, "TERMINATED", outcome[0], outcome[1])
            return
        # Databricks shows TERMINATING while it tears the execution context down.
        self._set_state(run, "TERMINATING", None, "")
        time.sleep(0.1)
        if run.returncode == 0:
            self._set_state(run, "TERMINATED", "SUCCESS", "")
        else:
            self._set_state(run, "TERMINATED", "FAILED", FAILED_STATE_MESSAGE)

    def _log_destination(self, run: StandinRun) -> str | None:
        if "new_cluster" in run.task:
            conf = run.task["new_cluster"].get("cluster_log_conf") or {}
        else:
            conf = (self.clusters.get(run.cluster_id or "") or {}).get("cluster_log_conf") or {}
        return (conf.get("dbfs") or {}).get("destination")

    def _deliver_logs(self, run: StandinRun) -> None:
        """Cluster log delivery: driver stdout/stderr to <dest>/<cluster_id>/driver/."""
        dest = self._log_destination(run)
        if not dest or run.cluster_id is None:
            return
        driver = self.local_path(f"{dest.rstrip('/')}/{run.cluster_id}/driver")
        driver.mkdir(parents=True, exist_ok=True)
        for src in (run.stdout_path, run.stderr_path):
            if src is not None and src.exists():
                shutil.copyfile(src, driver / src.name)

    def _run_or_error(self, req: Request) -> tuple[StandinRun, bool]:
        raw = req.query.get("run_id") if req.method == "GET" else req.json().get("run_id")
        try:
            wanted = int(raw)  # type: ignore[arg-type]
        except (TypeError, ValueError) as exc:
            raise ApiError(400, "INVALID_PARAMETER_VALUE", "Invalid run_id") from exc
        with self._lock:
            for job in self.job_runs.values():
                if job.run_id == wanted:
                    return job, False  # type: ignore[return-value]
                for task in job.task_runs:
                    if task.task_run_id == wanted:
                        return task, True
            for run in self.runs.values():
                if run.run_id == wanted:
                    return run, False
                if run.task_run_id == wanted:
                    return run, True
        raise ApiError(400, "INVALID_PARAMETER_VALUE", f"Run {wanted} does not exist.")

    def run_page_url(self, run: StandinRun) -> str:
        return f"{self.host}/?o=0#job/{run.job_id}/run/{run.run_id}"

    def _state(self, run: StandinRun) -> dict:
        state: dict[str, Any] = {
            "life_cycle_state": run.life_cycle_state,
            "state_message": run.state_message,
            "user_cancelled_or_timedout": run.result_state in ("CANCELED", "TIMEDOUT"),
        }
        if run.result_state:
            state["result_state"] = run.result_state
        return state

    def _status(self, run: StandinRun) -> dict:
        status: dict[str, Any] = {"state": run.life_cycle_state}
        if run.life_cycle_state in TERMINAL_STATES:
            code = {"SUCCESS": "SUCCESS", "CANCELED": "CANCELED", "TIMEDOUT": "RUN_EXECUTION_ERROR"}
            status["termination_details"] = {
                "code": code.get(run.result_state or "", "RUN_EXECUTION_ERROR"),
                "type": "SUCCESS" if run.result_state == "SUCCESS" else "CLIENT_ERROR",
                "message": run.state_message,
            }
        return status

    def _task_json(self, run: StandinRun) -> dict:
        task = {k: v for k, v in run.task.items() if k not in ("libraries",)}
        task.update(
            run_id=run.task_run_id,
            state=self._state(run),
            status=self._status(run),
            attempt_number=0,
            start_time=run.start_time,
            end_time=run.end_time,
            run_page_url=f"{self.host}/?o=0#job/{run.job_id}/run/{run.task_run_id}",
        )
        if run.cluster_id:
            task["cluster_instance"] = {"cluster_id": run.cluster_id}
        return task

    def run_json(self, run: StandinRun) -> dict:
        with self._lock:
            return {
                "job_id": run.job_id,
                "run_id": run.run_id,
                "number_in_job": run.run_id,
                "original_attempt_run_id": run.run_id,
                "creator_user_name": "standin@localhost",
                "run_name": run.run_name,
                "run_type": "SUBMIT_RUN",
                "run_page_url": self.run_page_url(run),
                "state": self._state(run),
                "status": self._status(run),
                "start_time": run.start_time,
                "end_time": run.end_time,
                "tasks": [self._task_json(run)],
                "format": "MULTI_TASK",
            }

    def job_run_json(self, job: StandinJobRun) -> dict:
        life, result, message = job.state()
        state: dict[str, Any] = {
            "life_cycle_state": life,
            "state_message": message,
            "user_cancelled_or_timedout": result == "CANCELED",
        }
        if result:
            state["result_state"] = result
        with self._lock:
            return {
                "job_id": job.job_id,
                "run_id": job.run_id,
                "number_in_job": job.run_id,
                "original_attempt_run_id": job.run_id,
                "creator_user_name": "standin@localhost",
                "run_name": job.run_name,
                "run_type": "SUBMIT_RUN",
                "run_page_url": f"{self.host}/?o=0#job/{job.job_id}/run/{job.run_id}",
                "state": state,
                "start_time": job.start_time,
                "tasks": [self._task_json(t) for t in job.task_runs],
                "job_clusters": job.submit_body.get("job_clusters") or [],
                "format": "MULTI_TASK",
            }

    def only_job_run(self) -> StandinJobRun:
        assert len(self.job_runs) == 1, f"expected one run of tasks, got {sorted(self.job_runs)}"
        return next(iter(self.job_runs.values()))

    def _runs_get(self, req: Request) -> dict:
        run, is_task = self._run_or_error(req)
        if isinstance(run, StandinJobRun):
            return self.job_run_json(run)
        with self._lock:
            run.served_states.append(run.life_cycle_state)
        if is_task:
            return {**self._task_json(run), "run_name": run.task["task_key"]}
        return self.run_json(run)

    def _runs_get_output(self, req: Request) -> dict:
        run, is_task = self._run_or_error(req)
        if not is_task:
            # The real API refuses the parent of a multi-task (any runs/submit) run.
            raise ApiError(
                400,
                "INVALID_PARAMETER_VALUE",
                "Retrieving the output of runs with multiple tasks is not supported. "
                "Please retrieve the output of each individual task run instead.",
            )
        out: dict[str, Any] = {"metadata": self._task_json(run)}
        stdout = run.stdout
        out["logs"] = stdout[-5 * 1024 * 1024 :]
        out["logs_truncated"] = len(stdout) > 5 * 1024 * 1024
        if run.result_state == "FAILED" and run.returncode not in (None, 0):
            # The exception that ended the task, as the service reports it; a process that died
            # without one (killed, os._exit) has no error text beyond the run's state message.
            raised = self.run_error(run)
            out["error"] = raised.get("error") or run.state_message
            if raised.get("error_trace"):
                out["error_trace"] = raised["error_trace"][-64 * 1024 :]
        elif run.life_cycle_state == "INTERNAL_ERROR":
            out["error"] = run.state_message
        return out

    def run_error(self, run: StandinRun) -> dict[str, str]:
        """``{"error", "error_trace"}`` the exec driver recorded for ``run``, else ``{}``."""
        record = self.runs_dir / str(run.run_id) / RUN_ERROR_FILE
        if not record.is_file():
            return {}
        return json.loads(record.read_text(encoding="utf-8"))

    def _runs_cancel(self, req: Request) -> dict:
        run, _ = self._run_or_error(req)
        run.cancel_requested.set()
        for task in getattr(run, "task_runs", ()):  # a run of tasks: every task of it
            task.cancel_requested.set()
        return {}

    def add_secret(self, scope: str, key: str, value: str) -> None:
        """A secret the run identity may read (``dbutils.secrets.get`` / ``secrets/get``)."""
        with self._lock:
            self.secrets[(scope, key)] = value

    def _secrets_get(self, req: Request) -> dict:
        scope, key = req.query.get("scope") or "", req.query.get("key") or ""
        with self._lock:
            value = self.secrets.get((scope, key))
        if value is None:
            raise ApiError(
                404,
                "RESOURCE_DOES_NOT_EXIST",
                f"Failed to get secret {key} for scope {scope}.",
            )
        return {"key": key, "value": base64.b64encode(value.encode()).decode()}

    def _clusters_get(self, req: Request) -> dict:
        cluster_id = req.query.get("cluster_id", "")
        if cluster_id not in self.clusters:
            raise ApiError(400, "INVALID_PARAMETER_VALUE", f"Cluster {cluster_id} does not exist")
        return self.clusters[cluster_id]

    def _me(self, req: Request) -> dict:
        return {"id": "1", "userName": "standin@localhost", "active": True}

    # ------------------------------------------------------------------ DBFS
    def _dbfs_path(self, raw: Any) -> tuple[str, Path]:
        if not isinstance(raw, str) or not raw:
            raise ApiError(400, "INVALID_PARAMETER_VALUE", "Path is required")
        remote = raw.removeprefix("dbfs:")
        if not remote.startswith("/"):
            raise ApiError(400, "INVALID_PARAMETER_VALUE", f"Path must be absolute: {raw}")
        return remote, _under(self.dbfs_root, remote)

    @staticmethod
    def _not_found(remote: str) -> ApiError:
        return ApiError(
            404, "RESOURCE_DOES_NOT_EXIST", f"No file or directory exists on path {remote}."
        )

    def _file_info(self, remote: str, local: Path) -> dict:
        st = local.stat()
        return {
            "path": remote,
            "is_dir": local.is_dir(),
            "file_size": 0 if local.is_dir() else st.st_size,
            "modification_time": int(st.st_mtime * 1000),
        }

    def _dbfs_mkdirs(self, req: Request) -> dict:
        remote, local = self._dbfs_path(req.json().get("path"))
        for parent in [local, *local.parents]:
            if parent == self.dbfs_root:
                break
            if parent.exists() and not parent.is_dir():
                raise ApiError(
                    400,
                    "RESOURCE_ALREADY_EXISTS",
                    f"A file or directory already exists at the input path {remote}.",
                )
        local.mkdir(parents=True, exist_ok=True)
        return {}

    def _write_dbfs(self, remote: str, local: Path, data: bytes, overwrite: bool) -> None:
        if local.is_dir() or (local.exists() and not overwrite):
            raise ApiError(
                400,
                "RESOURCE_ALREADY_EXISTS",
                f"A file or directory already exists at the input path {remote}.",
            )
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(local.name + ".standin-partial")
        tmp.write_bytes(data)
        tmp.replace(local)  # readers never see half a file

    def _dbfs_put(self, req: Request) -> dict:
        body = req.json()
        remote, local = self._dbfs_path(body.get("path"))
        try:
            data = base64.b64decode(body.get("contents") or "", validate=True)
        except ValueError as exc:
            raise ApiError(400, "INVALID_PARAMETER_VALUE", "contents must be base64") from exc
        if len(data) > DBFS_MAX_BLOCK:
            raise ApiError(
                400, "MAX_BLOCK_SIZE_EXCEEDED", "Single put request exceeds the 1 MB limit."
            )
        self._write_dbfs(remote, local, data, bool(body.get("overwrite")))
        return {}

    def _dbfs_create(self, req: Request) -> dict:
        body = req.json()
        remote, local = self._dbfs_path(body.get("path"))
        if local.exists() and not body.get("overwrite"):
            raise ApiError(
                400,
                "RESOURCE_ALREADY_EXISTS",
                f"A file or directory already exists at the input path {remote}.",
            )
        with self._lock:
            handle = next(self._ids)
            self._dbfs_handles[handle] = (local, bytearray())
        return {"handle": handle}

    def _dbfs_add_block(self, req: Request) -> dict:
        body = req.json()
        entry = self._dbfs_handles.get(body.get("handle"))
        if entry is None:
            raise ApiError(404, "RESOURCE_DOES_NOT_EXIST", "The handle does not exist.")
        block = base64.b64decode(body.get("data") or "")
        if len(block) > DBFS_MAX_BLOCK:
            raise ApiError(400, "MAX_BLOCK_SIZE_EXCEEDED", "Block exceeds the 1 MB limit.")
        entry[1].extend(block)
        return {}

    def _dbfs_close(self, req: Request) -> dict:
        entry = self._dbfs_handles.pop(req.json().get("handle"), None)
        if entry is None:
            raise ApiError(404, "RESOURCE_DOES_NOT_EXIST", "The handle does not exist.")
        local, data = entry
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(bytes(data))
        return {}

    def _dbfs_get_status(self, req: Request) -> dict:
        remote, local = self._dbfs_path(req.query.get("path"))
        if not local.exists():
            raise self._not_found(remote)
        return self._file_info(remote, local)

    def _dbfs_read(self, req: Request) -> dict:
        remote, local = self._dbfs_path(req.query.get("path"))
        offset = int(req.query.get("offset") or 0)
        length = int(req.query.get("length") or DBFS_READ_DEFAULT)
        if not local.exists():
            raise self._not_found(remote)
        if local.is_dir():
            raise ApiError(400, "INVALID_PARAMETER_VALUE", f"Cannot read a directory: {remote}")
        if offset < 0 or length < 0:
            raise ApiError(400, "INVALID_PARAMETER_VALUE", "offset and length must be >= 0")
        if length > DBFS_MAX_BLOCK:
            raise ApiError(400, "MAX_READ_SIZE_EXCEEDED", "Cannot read more than 1 MB at once.")
        with open(local, "rb") as f:
            f.seek(offset)
            data = f.read(length)
        return {"bytes_read": len(data), "data": base64.b64encode(data).decode()}

    def _dbfs_list(self, req: Request) -> dict:
        remote, local = self._dbfs_path(req.query.get("path"))
        if not local.exists():
            raise self._not_found(remote)
        if local.is_file():
            return {"files": [self._file_info(remote, local)]}
        files = [
            self._file_info(f"{remote.rstrip('/')}/{child.name}", child)
            for child in sorted(local.iterdir())
            if not child.name.endswith(".standin-partial")
        ]
        return {"files": files} if files else {}

    def _dbfs_delete(self, req: Request) -> dict:
        body = req.json()
        remote, local = self._dbfs_path(body.get("path"))
        if local == self.dbfs_root:
            raise ApiError(400, "INVALID_PARAMETER_VALUE", "Cannot delete the root.")
        if not local.exists() and not local.is_symlink():
            return {}  # deleting a missing path succeeds on DBFS
        if local.is_dir() and not local.is_symlink():
            if any(local.iterdir()) and not body.get("recursive"):
                raise ApiError(
                    400,
                    "IO_ERROR",
                    f"Directory {remote} is not empty and recursive is false.",
                )
            shutil.rmtree(local)
        else:
            local.unlink()
        return {}

    # ------------------------------------------------------------------ UC Files API
    def _volume_path(self, req: Request) -> tuple[str, Path]:
        remote = req.match.group(1) if req.match else ""
        parts = remote.strip("/").split("/")
        if len(parts) < 4 or "/".join(parts[1:4]) not in self.volumes:
            raise ApiError(
                404,
                "NOT_FOUND",
                f"Volume '{'.'.join(parts[1:4])}' does not exist.",
            )
        return remote, _under(self.volumes_root, remote[len("/Volumes") :])

    def _files_put(self, req: Request) -> Response:
        remote, local = self._volume_path(req)
        overwrite = req.query.get("overwrite", "true").lower() != "false"
        if local.is_dir():
            raise ApiError(409, "ALREADY_EXISTS", f"A directory exists at {remote}.")
        if local.exists() and not overwrite:
            raise ApiError(409, "ALREADY_EXISTS", f"The file {remote} already exists.")
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(local.name + ".standin-partial")
        tmp.write_bytes(req.body)
        tmp.replace(local)
        return Response(204)

    def _file_headers(self, local: Path) -> dict[str, str]:
        st = local.stat()
        return {
            "Content-Type": "application/octet-stream",
            "Content-Length": str(st.st_size),
            "Last-Modified": email.utils.formatdate(st.st_mtime, usegmt=True),
        }

    def _files_get(self, req: Request) -> Response:
        remote, local = self._volume_path(req)
        if not local.is_file():
            raise ApiError(404, "NOT_FOUND", f"The file {remote} does not exist.")
        data = local.read_bytes()
        headers = self._file_headers(local)
        rng = re.fullmatch(r"bytes=(\d+)-(\d*)", req.headers.get("Range") or "")
        if rng:
            start = int(rng.group(1))
            end = int(rng.group(2)) + 1 if rng.group(2) else len(data)
            data = data[start:end]
            headers["Content-Length"] = str(len(data))
            return Response(206, data, headers)
        return Response(200, data, headers)

    def _files_head(self, req: Request) -> Response:
        _, local = self._volume_path(req)
        if not local.is_file():
            return Response(404)
        return Response(200, b"", self._file_headers(local))

    def _files_delete(self, req: Request) -> Response:
        remote, local = self._volume_path(req)
        if not local.is_file():
            raise ApiError(404, "NOT_FOUND", f"The file {remote} does not exist.")
        local.unlink()
        return Response(204)

    def _dirs_put(self, req: Request) -> Response:
        remote, local = self._volume_path(req)
        if local.exists() and not local.is_dir():
            raise ApiError(409, "ALREADY_EXISTS", f"A file exists at {remote}.")
        local.mkdir(parents=True, exist_ok=True)
        return Response(204)

    def _dirs_get(self, req: Request) -> dict:
        remote, local = self._volume_path(req)
        if not local.is_dir():
            raise ApiError(404, "NOT_FOUND", f"The directory {remote} does not exist.")
        entries = []
        for child in sorted(local.iterdir()):
            if child.name.endswith(".standin-partial"):
                continue
            st = child.stat()
            entry: dict[str, Any] = {
                "path": f"{remote.rstrip('/')}/{child.name}",
                "name": child.name,
                "is_directory": child.is_dir(),
                "last_modified": int(st.st_mtime * 1000),
            }
            if child.is_file():
                entry["file_size"] = st.st_size
            entries.append(entry)
        page_size = min(int(req.query.get("page_size") or 1000), 1000)
        start = int(req.query.get("page_token") or 0)
        page = entries[start : start + page_size]
        out: dict[str, Any] = {"contents": page} if page else {}
        if start + page_size < len(entries):
            out["next_page_token"] = str(start + page_size)
        return out

    def _dirs_head(self, req: Request) -> Response:
        _, local = self._volume_path(req)
        return Response(200 if local.is_dir() else 404)

    def _dirs_delete(self, req: Request) -> Response:
        remote, local = self._volume_path(req)
        if not local.is_dir():
            raise ApiError(404, "NOT_FOUND", f"The directory {remote} does not exist.")
        if any(local.iterdir()):
            raise ApiError(409, "DIRECTORY_NOT_EMPTY", f"The directory {remote} is not empty.")
        local.rmdir()
        return Response(204)


def _under(root: Path, remote: str) -> Path:
    """``root`` joined with an absolute remote path, refusing escapes via ``..``."""
    candidate = Path(os.path.normpath(root / remote.lstrip("/")))
    if candidate != root and root not in candidate.parents:
        raise ApiError(400, "INVALID_PARAMETER_VALUE", f"Invalid path {remote}")
    return candidate


def _kill_group(proc: subprocess.Popen) -> None:
    """Terminate the script and its children, then make sure they are gone."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture
def databricks_standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DatabricksStandin]:
    """A started stand-in with one all-purpose cluster (``0101-000000-standin``, no log
    delivery) and one volume (``/Volumes/main/dataloader/pipes``)."""
    standin = DatabricksStandin(tmp_path_factory.mktemp("databricks"))
    standin.add_cluster(CLUSTER)
    standin.add_volume("main.dataloader.pipes")
    with standin:
        yield standin


def arrow_runtime(lake_root: Path) -> dict[str, str]:
    """A :attr:`DatabricksStandin.runtime_env` for loads: the stand-in has no Spark, so its
    runtime loads with the Arrow engine into ``lake_root`` (a local Delta lake)."""
    return {"DATALOADER_ENGINE": "arrow", "DATALOADER_LAKE_ROOT": str(lake_root)}


def event_text(instance: Any, run_id: str) -> str:
    """Every user message and error of a Dagster run's event log, for assertion messages."""
    parts = []
    for entry in instance.all_logs(run_id):
        parts.append(entry.user_message)
        data = entry.dagster_event.event_specific_data if entry.dagster_event else None
        error = getattr(data, "error", None)
        if error is not None:
            parts.append(error.to_string())
    return "\n".join(parts)
