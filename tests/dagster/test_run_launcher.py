"""``dataloader dev``'s fork-server run launcher on a real Dagster instance: a run's worker, forked
from the fork server that has Dagster imported, runs the run as ``dagster api execute_run`` would;
it is terminated the way Dagster's own launcher terminates one (a cancelled run); a worker that
dies, before or during its run, ends the run with the reason; run monitoring sees a dead worker;
and a pid the system has given to another process is never signalled."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import launcher_jobs
import pytest
from dagster._core.definitions.reconstruct import ReconstructableJob

from dagsters.dagster_compat import WorkerStatus
from dagsters.local.cli import dev_environment
from dagsters.local.run_launcher import (
    PRELOAD,
    WORKER_TAG,
    ForkserverRunLauncher,
    interrupt_worker,
    live_worker,
    process_start_time,
)
from dagsters.settings import SettingsError, load_settings

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the fork-server run launcher is Linux only"
)

FINISHED = (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)


@pytest.fixture
def instance(tmp_path):
    env = {"DATALOADER_HOME": str(tmp_path), "DATALOADER_RUN_LAUNCHER": "forkserver"}
    dev_environment("127.0.0.1", 3999, env)
    with dg.DagsterInstance.from_config(str(tmp_path / "dagster_home")) as instance:
        yield instance


def _launch(instance, job, path: Path, recon=None) -> str:
    recon = recon or dg.reconstructable(getattr(launcher_jobs, job.name))
    run = instance.create_run_for_job(
        job_def=job,
        run_config={"ops": {job.graph.node_defs[0].name: {"config": {"path": str(path)}}}},
        job_code_origin=recon.get_python_origin(),
    )
    instance.launch_run(run.run_id, workspace=None)
    return run.run_id


def _dead_pid_tag() -> str:
    """The tag of a worker that has exited."""
    gone = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    tag = f"{gone.pid}:{process_start_time(gone.pid)}"
    gone.kill()
    gone.wait()
    return tag


def _parent_command(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    parent = stat[stat.rindex(")") + 2 :].split()[1]
    return Path(f"/proc/{parent}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def _wait_for(predicate, what: str, seconds: float = 120):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _finished(instance, run_id: str):
    return _wait_for(
        lambda: (r := instance.get_run_by_id(run_id)).status in FINISHED and r, "the run to end"
    )


def _messages(instance, run_id: str) -> list[str]:
    return [
        e.dagster_event.message if e.dagster_event else e.message for e in instance.all_logs(run_id)
    ]


def test_the_generated_instance_forks_run_workers_and_dagsters_own_stays_a_choice(tmp_path):
    assert load_settings({}).run_launcher == "forkserver"  # on Linux
    assert load_settings({"DATALOADER_RUN_LAUNCHER": "Default"}).run_launcher == "default"
    with pytest.raises(SettingsError, match="DATALOADER_RUN_LAUNCHER must be one of"):
        load_settings({"DATALOADER_RUN_LAUNCHER": "fork"})
    # What the fork server imports exists (it would skip a module that does not, silently).
    for module in PRELOAD:
        __import__(module)
    dev_environment(
        "127.0.0.1", 3999, {"DATALOADER_HOME": str(tmp_path), "DATALOADER_RUN_LAUNCHER": "default"}
    )
    with dg.DagsterInstance.from_config(str(tmp_path / "dagster_home")) as default:
        assert type(default.run_launcher).__name__ == "DefaultRunLauncher"


def test_a_forked_worker_runs_the_run_and_is_its_pid(instance, tmp_path):
    assert isinstance(instance.run_launcher, ForkserverRunLauncher)
    run_id = _launch(instance, launcher_jobs.quick_job, tmp_path / "pid")
    run = _finished(instance, run_id)
    assert run.status == dg.DagsterRunStatus.SUCCESS
    worker = int((tmp_path / "pid").read_text())
    assert worker != os.getpid()
    assert run.tags[WORKER_TAG].startswith(f"{worker}:")
    assert f"Started process for run (pid: {worker})." in _messages(instance, run_id)
    # The worker's last event follows the run's end.
    exited = f"Process for run exited (pid: {worker})."
    _wait_for(lambda: exited in _messages(instance, run_id), "the worker's last event")
    # What the run registered to run at exit ran in the worker, as in a process of its own.
    at_exit = tmp_path / "pid.at_exit"
    _wait_for(at_exit.exists, "the worker's exit handlers")
    assert at_exit.read_text() == str(worker)
    # The worker is gone and the run is over: run monitoring counts it a success, not a failure.
    _wait_for(lambda: live_worker(run.tags) is None, "the worker to exit")
    assert instance.run_launcher.check_run_worker_health(run).status == WorkerStatus.SUCCESS


def test_terminate_cancels_the_run_in_its_worker(instance, tmp_path):
    pid_file = tmp_path / "pid"
    run_id = _launch(instance, launcher_jobs.waiting_job, pid_file)
    _wait_for(pid_file.exists, "the op to start")
    run = instance.get_run_by_id(run_id)
    assert instance.run_launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING
    # Forked by the fork server, not started afresh by this process.
    assert "multiprocessing.forkserver" in _parent_command(int(pid_file.read_text()))

    assert instance.run_launcher.terminate(run_id) is True
    run = _finished(instance, run_id)
    assert run.status == dg.DagsterRunStatus.CANCELED
    worker = int(pid_file.read_text())
    _wait_for(lambda: process_start_time(worker) is None, "the worker to exit")
    assert instance.run_launcher.terminate(run_id) is False  # over already


def test_a_worker_killed_during_its_run_fails_the_run_with_the_reason(instance, tmp_path):
    pid_file = tmp_path / "pid"
    run_id = _launch(instance, launcher_jobs.waiting_job, pid_file)
    _wait_for(pid_file.exists, "the op to start")
    seen_running = instance.get_run_by_id(run_id)
    os.kill(int(pid_file.read_text()), signal.SIGKILL)  # e.g. the out-of-memory killer
    run = _finished(instance, run_id)
    assert run.status == dg.DagsterRunStatus.FAILURE
    assert any("signal 9 (SIGKILL)" in (m or "") for m in _messages(instance, run_id))
    # Run monitoring holding the run as it was: the run is over, nothing more to do.
    health = instance.run_launcher.check_run_worker_health(seen_running)
    assert health.status == WorkerStatus.SUCCESS


def test_a_run_whose_code_cannot_load_fails_with_the_reason(instance, tmp_path):
    jobs = tmp_path / "vanishing_jobs.py"
    jobs.write_text(Path(launcher_jobs.__file__).read_text())
    recon = ReconstructableJob.for_file(str(jobs), "quick_job")
    jobs.unlink()  # the worker cannot load the run's code
    run_id = _launch(instance, launcher_jobs.quick_job, tmp_path / "pid", recon=recon)
    run = _finished(instance, run_id)
    assert run.status == dg.DagsterRunStatus.FAILURE
    assert "Could not load job definition." in _messages(instance, run_id)


def test_run_monitoring_and_terminate_see_a_dead_worker(instance):
    """A run whose worker is gone while nobody ended the run (the launching daemon itself died):
    run monitoring fails it; a terminate ends it, which nobody else would."""
    run = instance.create_run_for_job(
        job_def=launcher_jobs.quick_job,
        run_config={"ops": {"note_pid": {"config": {"path": "unused"}}}},
        status=dg.DagsterRunStatus.STARTED,
        tags={WORKER_TAG: _dead_pid_tag()},
    )
    health = instance.run_launcher.check_run_worker_health(run)
    assert health.status == WorkerStatus.FAILED
    assert run.tags[WORKER_TAG] in health.msg
    assert instance.run_launcher.terminate(run.run_id) is False
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.CANCELED
    assert any("No live run worker" in (m or "") for m in _messages(instance, run.run_id))


def test_a_reused_pid_is_not_the_worker():
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        started = process_start_time(sleeper.pid)
        assert started is not None
        assert live_worker({WORKER_TAG: f"{sleeper.pid}:{started}"}) == sleeper.pid
        # Same pid, another start: a process the system gave the dead worker's pid.
        other = str(int(started) + 1)
        assert live_worker({WORKER_TAG: f"{sleeper.pid}:{other}"}) is None
        assert live_worker({WORKER_TAG: "garbage"}) is None
        assert live_worker({}) is None
        assert interrupt_worker({WORKER_TAG: f"{sleeper.pid}:{other}"}) is False
        assert sleeper.poll() is None  # not signalled
        assert interrupt_worker({WORKER_TAG: f"{sleeper.pid}:{started}"}) is True
        assert sleeper.wait(timeout=60) != 0  # SIGINT: KeyboardInterrupt
    finally:
        sleeper.kill()
        sleeper.wait()
    assert process_start_time(sleeper.pid) is None
    assert interrupt_worker({WORKER_TAG: f"{sleeper.pid}:{started}"}) is False
