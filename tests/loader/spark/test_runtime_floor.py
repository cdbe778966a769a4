"""The scripts refuse a Databricks Runtime older than they support, at start, with one clear
message (issue 12, item 1): 15.4 LTS and later (Spark 3.5, Python 3.11+), serverless always."""

import glob
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from databricks_fixtures import BACKENDS, claim_and_materialize, standin  # noqa: F401
from databricks_standin import VOLUME, databricks_standin  # noqa: F401
from helpers import add_control_row, control_row
from test_loader_pipe import run_raw

from databricks_scripts.contract import STDERR_ERROR_PREFIX
from databricks_scripts.script_env import MIN_DATABRICKS_RUNTIME, ScriptEnv, runtime_problem

REPO = Path(__file__).resolve().parents[3]
PY311 = (3, 11, 0)


@pytest.mark.parametrize(
    "runtime",
    ["15.4", "15.4.x-scala2.12", "16.4.x-photon-scala2.13", "17.3.x-scala2.13", "client.2.1", None],
)
def test_supported_runtimes_pass(runtime):
    assert runtime_problem(runtime, PY311) is None
    ScriptEnv(databricks_runtime=runtime).check_runtime()  # this interpreter is 3.11+


@pytest.mark.parametrize("runtime", ["14.3.x-scala2.12", "13.3", "15.3.x-cpu-ml-scala2.12", "9.1"])
def test_older_runtimes_are_refused_naming_the_floor(runtime):
    problem = runtime_problem(runtime, PY311)
    assert problem is not None
    assert f"Databricks Runtime {runtime} is not supported" in problem
    assert "15.4 LTS or later" in problem
    assert MIN_DATABRICKS_RUNTIME == (15, 4)


def test_python_older_than_311_is_refused_whatever_the_runtime_says():
    problem = runtime_problem("client.1", (3, 10, 12))
    assert problem and problem.startswith("Python 3.10.12 is too old")


def test_the_load_script_refuses_an_old_runtime_before_touching_the_source(tmp_path):
    # No source at all: the refusal must come first, through Pipes and the stderr error line.
    # On a runtime the Pipes files are on DBFS: "/" plays the /dbfs mount for the local files.
    env = {"DATABRICKS_RUNTIME_VERSION": "14.3.x-scala2.12", "DATALOADER_DBFS_ROOT": "/"}
    proc, _ = run_raw({"control_key": "old.runtime"}, tmp_path, env)
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(STDERR_ERROR_PREFIX)
    assert "failed at step 'check runtime'" in last
    assert "Databricks Runtime 14.3.x-scala2.12 is not supported" in last
    assert "15.4 LTS or later" in last


def test_an_old_cluster_fails_the_row_with_the_runtime_message(
    standin,  # noqa: F811
    control_db,
    source_db,
    source,
    lake_root,
    db,
    instance,
):
    """Through the Databricks backend: the row's message is the refusal, the person sees it."""
    standin.add_cluster(
        "0101-000000-old", spark_env_vars={"DATABRICKS_RUNTIME_VERSION": "14.3.x-scala2.12"}
    )
    add_control_row(db, source_db, "pg.orders", "orders")
    backend = {"cluster_id": "0101-000000-old", "volume_path": VOLUME}
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(BACKENDS, "old_cluster", backend)
        result, _ = claim_and_materialize(control_db, instance, "pg.orders", "old_cluster")

    assert not result.success
    row = control_row(db, "pg.orders")
    assert row["last_status"] == "Failed"
    assert "Databricks Runtime 14.3.x-scala2.12 is not supported" in row["last_message"]
    assert "step 'check runtime'" in row["last_message"]
    assert not (lake_root / "lake" / "raw" / "orders").exists()


def _python310() -> str | None:
    """A working Python 3.10 (pyenv's own build first: its PATH shim may name no version)."""
    pyenv = sorted(glob.glob(str(Path.home() / ".pyenv" / "versions" / "3.10*" / "bin" / "python")))
    for candidate in [*reversed(pyenv), shutil.which("python3.10")]:
        if candidate and subprocess.run([candidate, "-c", ""], check=False).returncode == 0:
            return candidate
    return None


def test_the_refusal_itself_runs_on_python_310():
    """A 14.3 LTS cluster runs Python 3.10: the check must run there to say so."""
    python = _python310()
    if python is None:
        pytest.skip("no Python 3.10 interpreter on this machine (pyenv or PATH)")
    code = (
        "import json, sys\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "from databricks_scripts.script_env import ScriptEnv\n"
        "env = ScriptEnv.from_environ({'DATABRICKS_RUNTIME_VERSION': '14.3.x-scala2.12'})\n"
        "try:\n    env.check_runtime()\nexcept RuntimeError as exc:\n"
        "    print(json.dumps(str(exc)))\n"
    )
    proc = subprocess.run(
        [python, "-I", "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout).startswith("Python 3.10")
