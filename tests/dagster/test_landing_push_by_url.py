"""Landing files survive an ephemeral container: clone by URL, commit, push, then mark the rows.

Real git against a bare remote on disk. A failed push leaves the rows unprocessed and the next
landing_table_monitor tick launches the same batch again.
"""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import psycopg
import pyarrow as pa
import pytest
from databricks_standin import databricks_standin  # noqa: F401
from deltalake import write_deltalake
from helpers import evaluate, lakebase_for
from psycopg.rows import dict_row

from dagsters.jobs.landing_table_git_job import landing_table_git_job
from dagsters.landing.git_repo import GitError, ModelsRepo, clone_shallow
from dagsters.resources.databricks_rest import DatabricksRestResource
from dagsters.resources.models_repo import ModelsRepoResource
from dagsters.sensors.dataloader_landing_table_monitor import build_landing_table_monitor
from dagsters.settings import Settings, load_settings

BRANCH = "dataloader/landing-tables"
REJECT_HOOK = """#!/bin/sh
if [ -e "$(dirname "$0")/../reject-pushes" ]; then
  echo "push rejected: the remote is down for maintenance" >&2
  exit 1
fi
"""


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    """A bare repository with a main branch holding a README (a team's dbt project)."""
    bare = tmp_path / "models.git"
    git(tmp_path, "init", "--quiet", "--bare", "--initial-branch=main", str(bare))
    seed = tmp_path / "seed"
    git(tmp_path, "clone", "--quiet", str(bare), str(seed))
    (seed / "README.md").write_text("dbt project\n")
    git(seed, "add", "README.md")
    git(seed, "-c", "user.name=t", "-c", "user.email=t@x", "commit", "--quiet", "-m", "init")
    git(seed, "push", "--quiet", "origin", "HEAD:main")
    hook = bare / "hooks" / "pre-receive"
    hook.write_text(REJECT_HOOK)
    hook.chmod(0o755)
    return bare


@pytest.fixture
def control(control_db: str) -> Iterator[str]:
    yield control_db
    lakebase_for(control_db).get_client().close()


def add_landed(conninfo: str, lake_root: Path, table: str) -> int:
    write_deltalake(
        str(lake_root / "main" / "sales" / table),
        pa.table({"id": pa.array([1], pa.int64()), "name": pa.array(["a"], pa.string())}),
    )
    with psycopg.connect(conninfo) as conn:
        return conn.execute(
            "INSERT INTO table_control (control_key, source_table_name, destination_catalog,"
            " destination_schema_name, destination_table_name, db_type, load_strategy,"
            " last_status, last_message, staging_model_processed)"
            " VALUES (%s, %s, 'main', 'sales', %s, 'postgresql', 'full', 'Succeeded', 'loaded',"
            " false) RETURNING config_id",
            (f"sales.{table}", table, table),
        ).fetchone()[0]


def processed(conninfo: str) -> dict[str, bool]:
    with psycopg.connect(conninfo, row_factory=dict_row) as conn:
        rows = conn.execute("SELECT control_key, staging_model_processed FROM table_control")
        return {r["control_key"]: r["staging_model_processed"] for r in rows}


def settings_env(tmp_path: Path, lake_root: Path, remote: Path) -> dict[str, str]:
    return {
        "DATALOADER_HOME": str(tmp_path / "home"),
        "DATALOADER_LAKE_ROOT": str(lake_root),
        "DATALOADER_MODELS_URL": remote.as_uri(),
    }


def run_landing(conninfo, env, instance, request: dg.RunRequest | None = None):
    config = request.run_config if request else {}
    return landing_table_git_job.execute_in_process(
        run_config=config,
        resources={
            "lakebase": lakebase_for(conninfo),
            "databricks_rest": DatabricksRestResource(),
            "models_repo": ModelsRepoResource.from_settings(load_settings(env)),
        },
        instance=instance,
        tags=request.tags if request else None,
        raise_on_error=False,
    )


def remote_files(remote: Path, branch: str = BRANCH) -> set[str]:
    listing = git(remote, "ls-tree", "-r", "--name-only", branch)
    return set(listing.splitlines())


def test_files_are_cloned_committed_and_pushed_before_rows_are_marked(
    control, lake_root, tmp_path, remote, instance
):
    add_landed(control, lake_root, "orders")
    env = settings_env(tmp_path, lake_root, remote)

    result = run_landing(control, env, instance)

    assert result.success
    assert processed(control) == {"sales.orders": True}
    files = remote_files(remote)
    assert "README.md" in files  # the branch starts from the team's default branch
    assert any(f.endswith("stg_sales__orders.sql") for f in files), files
    # Nothing is left on this machine's disk that the rows depend on.
    assert not (tmp_path / "home" / "models_repo").exists()
    assert not list(Path(tmp_path / "home").glob("**/*.sql"))
    summary = result.output_for_node("landing_table_git_op")
    assert summary["repository"] == remote.as_uri()
    assert summary["pushed_to"] == "origin"

    # A second batch clones the branch (not main) and adds to it.
    add_landed(control, lake_root, "customers")
    assert run_landing(control, env, instance).success
    files = remote_files(remote)
    assert any(f.endswith("stg_sales__orders.sql") for f in files)
    assert any(f.endswith("stg_sales__customers.sql") for f in files)
    assert git(remote, "rev-list", "--count", BRANCH) == "3"


def test_a_failed_push_leaves_rows_unprocessed_and_a_later_tick_retries_the_batch(
    control, lake_root, tmp_path, remote, instance
):
    add_landed(control, lake_root, "orders")
    env = settings_env(tmp_path, lake_root, remote)
    monitor = build_landing_table_monitor(Settings())
    (remote / "reject-pushes").touch()

    def tick() -> dg.RunRequest:
        request = evaluate(monitor, instance, {"lakebase": lakebase_for(control)})
        assert isinstance(request, dg.RunRequest), request
        return request

    first = tick()
    failed = run_landing(control, env, instance, first)

    assert not failed.success
    assert "push rejected: the remote is down for maintenance" in str(
        failed.failure_data_for_node("landing_table_git_op").error
    )
    assert processed(control) == {"sales.orders": False}
    assert BRANCH not in git(remote, "branch", "--list")

    (remote / "reject-pushes").unlink()
    second = tick()
    assert second.run_key != first.run_key  # Dagster would drop a request with a used key
    assert second.tags["dataloader/landing_batch"] == first.tags["dataloader/landing_batch"]
    assert run_landing(control, env, instance, second).success
    assert processed(control) == {"sales.orders": True}
    assert any(f.endswith("stg_sales__orders.sql") for f in remote_files(remote))


def test_a_clone_must_push(tmp_path):
    repo = ModelsRepo(tmp_path / "copy", lock_dir=tmp_path / "locks", push_required=True)
    repo.ensure()
    (repo.path / "x.sql").write_text("select 1\n")
    repo.commit(["x.sql"], "x")
    with pytest.raises(GitError, match="no remote to push"):
        repo.push()


def test_an_empty_remote_gets_the_branch(tmp_path):
    bare = tmp_path / "empty.git"
    git(tmp_path, "init", "--quiet", "--bare", str(bare))
    repo = clone_shallow(bare.as_uri(), tmp_path / "c", branch=BRANCH, lock_dir=tmp_path / "l")
    repo.ensure()
    (repo.path / "a.sql").write_text("select 1\n")
    repo.commit(["a.sql"], "first")
    assert repo.push() == "origin"
    assert remote_files(bare) == {"a.sql"}


def test_credentials_never_show(tmp_path, monkeypatch):
    token = "ghp-models-token-0123456789"
    url = f"https://x-access-token:{token}@127.0.0.1:9/models.git"
    monkeypatch.setenv("DATALOADER_MODELS_URL", url)
    monkeypatch.setenv("DATALOADER_MODELS_TOKEN", token)
    settings = load_settings({"DATALOADER_MODELS_URL": url, "DATALOADER_MODELS_TOKEN": token})
    assert token in settings.secrets
    resource = ModelsRepoResource.from_settings(settings)
    # Neither value is visible resource configuration: both stay environment references.
    assert isinstance(resource.url, dg.EnvVar) and isinstance(resource.token, dg.EnvVar)
    with pytest.raises(GitError) as info:
        clone_shallow(url, tmp_path / "c", branch=BRANCH, lock_dir=tmp_path / "l", token=token)
    assert token not in str(info.value)
    assert "127.0.0.1:9" in str(info.value)


def test_the_token_reaches_git_only_through_the_credential_helper(tmp_path):
    token = "ghp-models-token-9876543210"
    repo = ModelsRepo(tmp_path / "copy", lock_dir=tmp_path / "locks", token=token)
    repo.ensure()
    assert token not in " ".join(repo._credential_args())  # not on any command line
    asked = subprocess.run(
        ["git", *repo._credential_args(), "credential", "fill"],
        cwd=repo.path,
        input="protocol=https\nhost=git.example.com\npath=m.git\n\n",
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "GIT_TERMINAL_PROMPT": "0", **repo._token_env()},
        check=True,
    )
    assert "username=x-access-token" in asked.stdout
    assert f"password={token}" in asked.stdout


def test_the_token_can_come_from_a_databricks_secret(
    control,
    lake_root,
    tmp_path,
    remote,
    instance,
    databricks_standin,  # noqa: F811
    monkeypatch,
):
    token = "ghp-from-secret-scope-55555"
    asked = []

    def get_secret(request):
        asked.append((request.query.get("scope"), request.query.get("key")))
        return {"key": request.query["key"], "value": base64.b64encode(token.encode()).decode()}

    databricks_standin.add_route("GET", r"/api/2\.0/secrets/get", get_secret)
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(tmp_path / "no-databrickscfg"))
    monkeypatch.setenv("DATABRICKS_HOST", databricks_standin.host)
    monkeypatch.setenv("DATABRICKS_TOKEN", databricks_standin.token)
    env = {
        **settings_env(tmp_path, lake_root, remote),
        "DATALOADER_MODELS_TOKEN_SECRET": "kv-main/models-push-token",
    }
    resource = ModelsRepoResource.from_settings(load_settings(env))
    assert resource.token_secret == "kv-main/models-push-token"
    assert resource.push_token() == token
    assert asked == [("kv-main", "models-push-token")]
    # The whole job with it: the secret is read per run and the push goes through.
    add_landed(control, lake_root, "orders")
    assert run_landing(control, env, instance).success
    assert processed(control) == {"sales.orders": True}
    with pytest.raises(Exception, match="DATALOADER_MODELS_TOKEN_SECRET must be <scope>/<key>"):
        load_settings({"DATALOADER_MODELS_TOKEN_SECRET": "no-slash"})
