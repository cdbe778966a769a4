"""Local source passwords without a restart: ``dataloader secret set`` and the load that reads it.

Real parts: the ``dataloader`` console script as a separate process (stdin and a pseudo-terminal
prompt), a password-enforcing embedded PostgreSQL source, the real load asset and Pipes script on
a real Dagster instance. The code location process is never restarted between the failing load
and the one that succeeds: the secret set in between by another process is read at load time.
"""

from __future__ import annotations

import os
import pty
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from helpers import lakebase_for
from test_secrets_e2e import (  # the same real source, row and search of every place
    KEY,
    SCOPE,
    add_row,
    assert_absent,
    distinctive,
    everywhere,
    exception_text,
    forms,
    instance,  # noqa: F401 - fixture
    instance_dir,  # noqa: F401 - fixture
    local_pipes,
    materialize,
    password_pg,  # noqa: F401 - fixture
    pg_config,
    pg_secret,  # noqa: F401 - fixture
    reraised,
    status,
)

from dagsters.assets.dataloader_pipes_asset import build_load_asset
from dagsters.policy.run_requests import LOAD_ASSET
from dagsters.settings import load_settings
from databricks_scripts import local_secrets
from databricks_scripts.load.params import secret_env_var

CLI = str(Path(sys.executable).with_name("dataloader"))


def cli_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATALOADER_SECRET__")}
    env["DATALOADER_HOME"] = str(home)
    return env


def secret_cli(home: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CLI, "secret", *args],
        input=stdin,
        env=cli_env(home),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def rerun(control_db: str, dagster_instance, key: str, pipes) -> None:
    """A rerun from the UI: only control_key in the config, the row in whatever state it is."""
    dg.materialize(
        [build_load_asset(load_settings())],
        partition_key=key,
        run_config={"ops": {LOAD_ASSET: {"config": {"control_key": key}}}},
        resources={"lakebase": lakebase_for(control_db), "pipes_databricks": pipes},
        instance=dagster_instance,
        raise_on_error=False,
    )


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "dlhome"
    monkeypatch.setenv("DATALOADER_HOME", str(home))
    for name in list(os.environ):
        if name.startswith("DATALOADER_SECRET__"):
            monkeypatch.delenv(name)
    return home


def test_set_from_stdin_stores_owner_only_and_list_shows_names_only(home):
    value = "pipe-Value-" + os.urandom(6).hex()
    done = secret_cli(home, "set", "kv-nc", "maria-pass", stdin=value + "\n")
    assert done.returncode == 0, done.stderr
    assert value not in done.stdout + done.stderr
    path = local_secrets.store_path(home)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    # the trailing newline of the pipe is not part of the value
    assert local_secrets.get(home, "kv-nc", "maria-pass") == value

    assert secret_cli(home, "set", "kv-main", "erp-pg-pass", stdin="other-Value-1").returncode == 0
    listed = secret_cli(home, "list")
    assert listed.returncode == 0
    assert listed.stdout.splitlines() == ["kv-main erp-pg-pass", "kv-nc maria-pass"]
    assert value not in listed.stdout and "other-Value-1" not in listed.stdout

    # A value can never be given as an argument: argparse refuses the extra word.
    refused = secret_cli(home, "set", "kv-nc", "maria-pass", "argv-Value")
    assert refused.returncode == 2
    assert local_secrets.get(home, "kv-nc", "maria-pass") == value

    assert secret_cli(home, "unset", "kv-nc", "maria-pass").returncode == 0
    assert secret_cli(home, "list").stdout.splitlines() == ["kv-main erp-pg-pass"]


def test_set_from_a_terminal_prompts_twice_and_echoes_nothing(home):
    value = "tty-Value-" + os.urandom(6).hex()
    main, child = pty.openpty()
    process = subprocess.Popen(
        [CLI, "secret", "set", "kv-nc", "maria-pass"],
        stdin=child,
        stdout=child,
        stderr=child,
        env=cli_env(home),
        start_new_session=True,
    )
    os.close(child)
    seen = b""

    def read_until(text: bytes) -> None:
        nonlocal seen
        while text not in seen:
            chunk = os.read(main, 1024)
            assert chunk, f"prompt {text!r} never came: {seen!r}"
            seen += chunk

    read_until(b"value (not shown): ")
    os.write(main, value.encode() + b"\n")
    read_until(b"again: ")
    os.write(main, value.encode() + b"\n")
    read_until(b"the next load reads it")
    assert process.wait(timeout=60) == 0
    try:
        while chunk := os.read(main, 1024):
            seen += chunk
    except OSError:
        pass  # the terminal closed with the process
    os.close(main)
    assert value.encode() not in seen  # getpass turned echo off
    assert local_secrets.get(home, "kv-nc", "maria-pass") == value


def test_a_store_others_can_read_is_refused_by_name(home):
    local_secrets.put(home, "s", "k", "some-Value-1")
    path = local_secrets.store_path(home)
    path.chmod(0o644)
    listed = secret_cli(home, "list")
    assert listed.returncode == 1
    assert f"chmod 600 {path}" in listed.stderr
    assert "some-Value-1" not in listed.stderr + listed.stdout


def test_a_load_reads_a_secret_set_while_running_and_the_message_says_how(
    password_pg,  # noqa: F811
    pg_secret,  # noqa: F811
    control_db,
    db,
    lake_root,
    home,
    instance,  # noqa: F811
    instance_dir,  # noqa: F811
    capfd,
    caplog,
):
    secret, core = pg_secret
    pipes = local_pipes(lake_root).model_copy(update={"home": str(home)})
    add_row(db, "pg.store", "orders", "postgresql", pg_config(password_pg))

    # 1. Nothing set anywhere: the message says where it looked and the exact command.
    materialize(control_db, instance, "pg.store", pipes)
    failed = status(db, "pg.store")
    assert failed["last_status"] == "Failed"
    message = failed["last_message"]
    env_name = secret_env_var(SCOPE, KEY)
    assert f"secret '{KEY}' of scope '{SCOPE}' not found" in message  # not masked as ***
    assert "step 'resolve secret'" in message
    assert env_name in message
    assert str(local_secrets.store_path(home)) in message
    command = re.search(r"no restart needed, the next load reads it\): (.+)$", message)
    assert command, message
    argv = shlex.split(command.group(1))
    assert argv[-4:] == ["secret", "set", SCOPE, KEY]
    assert argv[-5] == CLI
    assert argv[0] == f"DATALOADER_HOME={home}"  # not the default home: the command names it

    # 2. The exact command from the message, run by a person in another shell, value on stdin.
    done = subprocess.run(
        command.group(1),
        shell=True,
        input=secret,
        env=cli_env(Path("/nonexistent")),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert local_secrets.get(home, SCOPE, KEY) == secret

    # 3. The same code location process loads again (a rerun from the UI, control_key only):
    # the secret is read at load time.
    rerun(control_db, instance, "pg.store", pipes)
    assert status(db, "pg.store")["last_status"] == "Succeeded"

    # 4. A wrong stored password: the driver's refusal arrives, the value never does.
    wrong, wrong_core = distinctive("Wr0ngStored")
    assert secret_cli(home, "set", SCOPE, KEY, stdin=wrong).returncode == 0
    rerun(control_db, instance, "pg.store", pipes)
    assert "password authentication failed" in status(db, "pg.store")["last_message"]
    wrong_exc = reraised(control_db, instance, "pg.store", pipes)

    places = everywhere(instance, instance_dir, control_db, capfd, caplog)
    places["exception (wrong stored password)"] = exception_text(wrong_exc)
    assert_absent(places, core, wrong_core, *forms(secret), *forms(wrong))


def test_the_environment_variable_still_works_and_wins(
    password_pg,  # noqa: F811
    pg_secret,  # noqa: F811
    control_db,
    db,
    lake_root,
    home,
    instance,  # noqa: F811
    monkeypatch,
):
    secret, _ = pg_secret
    local_secrets.put(home, SCOPE, KEY, "stale-Stored-Value")  # would be refused by the server
    monkeypatch.setenv(secret_env_var(SCOPE, KEY), secret)
    pipes = local_pipes(lake_root).model_copy(update={"home": str(home)})
    add_row(db, "pg.env", "orders", "postgresql", pg_config(password_pg))
    materialize(control_db, instance, "pg.env", pipes)
    assert status(db, "pg.env")["last_status"] == "Succeeded"
