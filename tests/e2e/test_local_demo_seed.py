"""Local mode changes nothing it was not asked to (issue 16, item 12), on a real embedded server.

- the demo seed is idempotent: a second (and tenth) start adds no orders, changes no price, does
  not move the control-key counter (sql/004) and burns no identity value;
- ``dataloader psql --print`` prints only a connection string that psql and psycopg accept, and
  neither seeds nor changes anything.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import psycopg
import pytest

from dagsters.local.cli import main
from dagsters.local.demo import DEMO_DATABASE, seed_demo, start_demo_lakebase
from dagsters.local.embedded_lakebase import CONTROL_DATABASE, bundled_psql, stop_embedded_server

PSQL = bundled_psql()


def _state(server) -> dict:
    with psycopg.connect(server.conninfo(DEMO_DATABASE)) as conn:
        orders = conn.execute("SELECT count(*), max(order_id) FROM shop.orders").fetchone()
        prices = conn.execute("SELECT array_agg(price ORDER BY product_id) FROM shop.products")
        prices = prices.fetchone()[0]
    with psycopg.connect(server.conninfo(CONTROL_DATABASE)) as conn:
        version = conn.execute("SELECT version FROM control_keys_state").fetchone()[0]
        identity = conn.execute(
            "SELECT last_value FROM pg_sequences WHERE sequencename LIKE 'table_control%'"
        ).fetchone()[0]
        rows = conn.execute(
            "SELECT control_key, updated_at FROM table_control ORDER BY control_key"
        ).fetchall()
    return {"orders": orders, "prices": prices, "version": version, "id": identity, "rows": rows}


@pytest.fixture
def home(tmp_path_factory) -> Path:
    # Outside pytest's basetemp for the same reason as conftest.embedded_pg (the embedded server as root).
    import tempfile

    top = Path(tempfile.mkdtemp(prefix="dataloader-test-home-"))
    yield top
    stop_embedded_server(top / "pgdata")


def test_seeding_again_changes_nothing(home):
    server = start_demo_lakebase(home)
    first = _state(server)
    assert first["orders"][0] == 10 and len(first["rows"]) == 3

    for _ in range(3):
        seed_demo(server)
        start_demo_lakebase(home)

    assert _state(server) == first


def test_psql_print_prints_a_connection_string_and_changes_nothing(home, monkeypatch, capsys):
    monkeypatch.setenv("DATALOADER_HOME", str(home))
    monkeypatch.delenv("LAKEBASE_HOST", raising=False)
    server = start_demo_lakebase(home)
    before = _state(server)

    assert main(["psql", "--print"]) == 0
    printed = capsys.readouterr().out.strip()

    assert "\n" not in printed and not printed.startswith("psql")
    with psycopg.connect(printed) as conn:
        assert conn.execute("SELECT current_database()").fetchone()[0] == CONTROL_DATABASE
    answer = subprocess.run(
        [str(PSQL), printed, "-Atc", "SELECT count(*) FROM table_control"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert answer.stdout.strip() == "3"
    assert _state(server) == before


def test_psql_print_on_a_fresh_home_does_not_seed_the_demo(home, monkeypatch, capsys):
    monkeypatch.setenv("DATALOADER_HOME", str(home))
    monkeypatch.delenv("LAKEBASE_HOST", raising=False)

    assert main(["psql", "--print"]) == 0

    with psycopg.connect(capsys.readouterr().out.strip()) as conn:
        assert conn.execute("SELECT count(*) FROM table_control").fetchone()[0] == 0
        databases = conn.execute("SELECT datname FROM pg_database").fetchall()
    assert (DEMO_DATABASE,) not in databases
