"""On Databricks the load script runs inside Databricks' own Python process (classic compute) or
its Spark Connect client (serverless): it leaves that process's signals, its exit and its job group
alone, and imports ``databricks.sdk.runtime.dbutils`` only to read a secret.

- The real ``dataloader_pipe.main()`` (Pipes and the load itself replaced by stand-ins) installs
  no SIGINT/SIGTERM handler, no wakeup fd and no watcher thread when ``DATABRICKS_RUNTIME_VERSION``
  is set (classic or serverless), and does install them locally; ``os._exit`` is only in that
  watcher.
- The load's Spark jobs carry a job tag, never a job group (classic session here; Spark Connect in
  tests/loader/spark/test_spark_connect.py), and a stop interrupts them by the tag.
- The secret getter imports dbutils when a secret is read, not before.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import threading
import types
import uuid
from pathlib import Path

import pytest
from test_loader_spark import spark  # noqa: F401 - the session's local (classic) SparkSession

from databricks_scripts import dataloader_pipe as pipe
from databricks_scripts.engines.spark.commits import cancellable, tag_jobs
from databricks_scripts.load.interrupt import StopSignal
from databricks_scripts.load.params import parse_load_spec
from databricks_scripts.script_env import ScriptEnv

REPO = Path(__file__).resolve().parents[3]
MAIN_WITH_STANDINS = """
import contextlib, json, signal, sys, threading
sys.path.insert(0, sys.argv[1])
from databricks_scripts import dataloader_pipe as pipe

seen = {}

def run_load(context, env, secrets, stop):  # what the handlers look like while a load runs
    seen["sigint_default"] = signal.getsignal(signal.SIGINT) is signal.default_int_handler
    seen["sigterm_default"] = signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    seen["wakeup_fd"] = signal.set_wakeup_fd(-1)
    seen["watcher"] = any(t.name == "stop" for t in threading.enumerate())

pipe.choose_pipes_io = lambda env: (None, None, None, "stand-in")
pipe.open_dagster_pipes = lambda **kw: contextlib.nullcontext(object())
pipe.run_load = run_load
seen["exit"] = pipe.main()
print(json.dumps(seen))
"""


def _main(runtime: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "DATABRICKS_RUNTIME_VERSION"}
    if runtime:
        env["DATABRICKS_RUNTIME_VERSION"] = runtime
    done = subprocess.run(
        [sys.executable, "-c", MAIN_WITH_STANDINS, str(REPO)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("runtime", ["15.4.x-scala2.12", "client.2.5"])
def test_on_databricks_the_script_leaves_the_process_signals_alone(runtime):
    assert _main(runtime) == {
        "sigint_default": True,
        "sigterm_default": True,
        "wakeup_fd": -1,
        "watcher": False,
        "exit": 0,
    }


def test_locally_the_script_handles_sigint_and_sigterm():
    seen = _main(None)
    assert not seen["sigint_default"] and not seen["sigterm_default"]
    assert seen["wakeup_fd"] != -1 and seen["watcher"]


def test_os_exit_is_called_only_by_the_local_stop_watcher():
    calls = []
    scripts = REPO / "databricks_scripts"
    for path in sorted(scripts.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for top in ast.walk(tree):
            if not isinstance(top, ast.FunctionDef):
                continue
            for node in ast.walk(top):
                if isinstance(node, ast.Attribute) and node.attr == "_exit":
                    calls.append((path.relative_to(scripts).as_posix(), top.name))
    assert calls == [("load/interrupt.py", "_watch")]


def _tags(session) -> set[str]:
    return set(session.sparkContext.getJobTags())  # a classic session: the context's job tags


def test_the_loads_jobs_carry_a_job_tag_not_a_job_group(spark):  # noqa: F811
    stop = StopSignal()  # not installed: tripped by hand, as the handler would
    with cancellable(spark, stop):
        [tag] = [t for t in _tags(spark) if t.startswith("dataloader-")]
        assert spark.sparkContext.getLocalProperty("spark.jobGroup.id") is None
        assert spark.range(3).count() == 3  # jobs run under the tag
        stop.trip(2)  # SIGINT
        assert "committed nothing" in stop.finish_stop()  # the cancel by tag ran
    assert tag not in _tags(spark)


def test_a_stop_interrupts_the_running_job_by_its_tag(spark):  # noqa: F811
    tag = f"dataloader-{uuid.uuid4().hex[:12]}"
    cancel, remove = tag_jobs(spark, tag)
    tracker = spark.sparkContext.statusTracker()
    done = threading.Event()

    def interrupt() -> None:
        for _ in range(3000):  # until the job runs (bounded: ~5 min)
            if done.wait(0.1):
                return
            if tracker.getActiveJobsIds():
                cancel(tag)
                return

    helper = threading.Thread(target=interrupt)
    helper.start()
    try:
        with pytest.raises(Exception, match="(?i)cancel"):
            spark.range(0, 10**11, 1, 2).selectExpr("sum(id % 7) AS s").collect()
    finally:
        done.set()
        helper.join()
        remove(tag)


def _spec(**config):
    return parse_load_spec(
        {
            "source_schema_name": "s",
            "source_table_name": "t",
            "destination_catalog": "main",
            "destination_schema_name": "raw",
            "destination_table_name": "t",
            "db_type": "postgresql",
            "db_config_value": {"host": "db.example.com", "database": "d", "user": "u", **config},
            "db_kv_scope": "dl-sources",
            "load_strategy": "full",
        }
    )


def test_dbutils_is_imported_only_when_a_secret_is_read(monkeypatch):
    on_databricks = ScriptEnv(databricks_runtime="15.4.x-scala2.12")
    monkeypatch.setitem(sys.modules, "databricks.sdk.runtime", None)  # importing it fails
    assert pipe._password(_spec(), on_databricks) is None  # no secret: no dbutils
    assert pipe._hash_key(_spec(), on_databricks) is None
    with pytest.raises(ImportError):
        pipe._password(_spec(password_secret="pw"), on_databricks)

    runtime = types.ModuleType("databricks.sdk.runtime")
    secrets = types.SimpleNamespace(get=lambda scope, key: f"secret of {scope}/{key}")
    runtime.dbutils = types.SimpleNamespace(secrets=secrets)
    monkeypatch.setitem(sys.modules, "databricks.sdk.runtime", runtime)
    assert pipe._password(_spec(password_secret="pw"), on_databricks) == "secret of dl-sources/pw"
