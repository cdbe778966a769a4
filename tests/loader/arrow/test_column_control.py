"""Column control and the schema contract (issue 27, sql/017), end to end on PostgreSQL and MariaDB.

The real control database (migrated), the real load asset and local runner, the real loader
script in a subprocess, real Delta on disk; the sources are the embedded PostgreSQL and MariaDB on
127.0.0.1:3306 (skipped with the reason when it is not there). A connection admin's
source_connection names the hash key's secret; the key itself is in the script's environment like
any source password.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import dagster as dg
import psycopg
import pytest
from deltalake import DeltaTable
from helpers import history, insert_control_row, pg_config
from test_secret_binding import add_connection, load, outcome

from databricks_scripts.load.params import secret_env_var

SCOPE, KEY = "kv-pii", "hash-key"


@dataclass
class Source:
    db_type: str
    schema: str
    connection: dict
    run: Callable[[str], None]


@pytest.fixture
def hash_key(monkeypatch: pytest.MonkeyPatch) -> str:
    value = f"pii-key-{uuid.uuid4().hex}"
    monkeypatch.setenv(secret_env_var(SCOPE, KEY), value)
    return value


def _postgres(source_db: str) -> Iterator[Source]:
    cfg = pg_config(source_db)

    def run(statement: str) -> None:
        with psycopg.connect(source_db, autocommit=True) as conn:
            conn.execute(statement)

    connection = {
        "host": cfg["host"],
        "port": cfg["port"],
        "database": cfg["database"],
        "user_name": cfg["user"],
    }
    yield Source("postgresql", "public", connection, run)


def _mariadb() -> Iterator[Source]:
    pymysql = pytest.importorskip("pymysql")
    try:
        conn = pymysql.connect(
            host="127.0.0.1", port=3306, user="root", password="", database="test", autocommit=True
        )
    except pymysql.err.OperationalError as exc:
        pytest.skip(f"MariaDB on 127.0.0.1:3306 (root, no password, db test) unreachable: {exc}")

    def run(statement: str) -> None:
        with conn.cursor() as cur:
            cur.execute(statement)

    connection = {"host": "127.0.0.1", "port": 3306, "database": "test", "user_name": "root"}
    try:
        yield Source("mysql", "test", connection, run)
    finally:
        conn.close()


@pytest.fixture(params=["postgresql", "mariadb"])
def source(request, source_db) -> Iterator[Source]:
    yield from (_postgres(source_db) if request.param == "postgresql" else _mariadb())


@pytest.fixture
def table(source: Source) -> Iterator[str]:
    name = f"people_{uuid.uuid4().hex[:8]}"
    yield name
    source.run(f"DROP TABLE IF EXISTS {name}")


def _add(db, source: Source, key: str, table: str, **columns) -> None:
    add_connection(
        db,
        f"src-{key.replace('.', '-')}",
        source.db_type,
        hash_secret_scope=SCOPE,
        hash_secret_key=KEY,
        **source.connection,
    )
    insert_control_row(
        db,
        {
            "control_key": key,
            "source_schema_name": source.schema,
            "source_table_name": table,
            "destination_catalog": "lake",
            "destination_schema_name": "raw",
            "destination_table_name": table,
            "db_type": source.db_type,
            "connection_name": f"src-{key.replace('.', '-')}",
            "schedule_interval": "1 hour",
            "next_load_date_time": None,
            **columns,
        },
    )


def _rows(lake_root, table: str) -> list[dict]:
    rows = DeltaTable(str(lake_root / "lake" / "raw" / table)).to_pyarrow_table().to_pylist()
    return sorted(rows, key=lambda r: r["id"])


def _hmac(key: str, value: str) -> str:
    return hmac.new(key.encode(), value.encode(), hashlib.sha256).hexdigest()


def test_excluded_column_never_lands_and_hashed_column_joins_without_its_values(
    source, table, control_db, db, lake_root, instance, hash_key
):
    source.run(
        f"CREATE TABLE {table} (id int PRIMARY KEY, name varchar(40), email varchar(80),"
        " ssn varchar(20))"
    )
    source.run(
        f"INSERT INTO {table} VALUES (1, 'ann', 'a@x.org', '111-11'), (2, 'bob', 'b@x.org',"
        " '222-22'), (3, 'cy', 'a@x.org', NULL)"
    )
    if source.db_type == "postgresql":
        source.run(f"COMMENT ON TABLE {table} IS 'People we know'")
        source.run(f"COMMENT ON COLUMN {table}.name IS 'Given name'")
    else:
        source.run(f"ALTER TABLE {table} COMMENT = 'People we know'")
        source.run(f"ALTER TABLE {table} MODIFY name varchar(40) COMMENT 'Given name'")
    key = f"pii.{table}"
    _add(
        db,
        source,
        key,
        table,
        load_strategy="merge",
        merge_keys=["id"],
        columns_exclude=["ssn"],
        columns_hash=["email"],
    )
    load(control_db, instance, key, lake_root)
    status, message = outcome(db, key)
    assert status == "Succeeded", message
    assert "columns excluded: ssn" in message and "columns hashed: email" in message
    rows = _rows(lake_root, table)
    assert "ssn" not in rows[0]  # never read, never written
    emails = [r["email"] for r in rows]
    assert emails[0] == emails[2] != emails[1]  # equal values join
    assert emails[0] == _hmac(hash_key, "a@x.org") and "@" not in "".join(emails)
    assert [r["name"] for r in rows] == ["ann", "bob", "cy"]

    asset = dg.AssetKey(["lake", "raw", table])
    meta = instance.get_latest_materialization_event(asset).asset_materialization.metadata
    assert meta["columns_excluded"].value == "ssn" and meta["columns_hashed"].value == "email"
    # Comments flow: Delta table and column comments, the asset's column descriptions.
    delta = DeltaTable(str(lake_root / "lake" / "raw" / table))
    assert delta.metadata().description == "People we know"
    [name_field] = [f for f in delta.schema().fields if f.name == "name"]
    assert name_field.metadata.get("comment") == "Given name"
    columns = {c.name: c for c in meta["dagster/column_schema"].value.columns}
    assert columns["name"].description == "Given name" and columns["id"].description is None
    assert meta["source_comment"].value == "People we know"
    [first] = history(db, key)
    assert "columns excluded: ssn" in first["message"] and hash_key not in first["message"]

    # Stable across loads: a second load (a changed name) gives the same hashes.
    source.run(f"UPDATE {table} SET name = 'ann2' WHERE id = 1")
    load(control_db, instance, key, lake_root)
    assert outcome(db, key)[0] == "Succeeded"
    again = _rows(lake_root, table)
    assert [r["email"] for r in again] == emails and again[0]["name"] == "ann2"

    # The database refuses a list that names the merge key, by name.
    with pytest.raises(psycopg.errors.CheckViolation, match='column "?id"? is a merge key'):
        db.execute(
            "UPDATE table_control SET columns_exclude = ARRAY['id'] WHERE control_key = %s", (key,)
        )

    # Changing the lists rebuilds the table, and the message says why.
    db.execute(
        "UPDATE table_control SET columns_hash = ARRAY['email', 'name'] WHERE control_key = %s",
        (key,),
    )
    load(control_db, instance, key, lake_root)
    status, message = outcome(db, key)
    assert status == "Succeeded", message
    assert "rebuilt because the column control changed" in message
    last = history(db, key)[-1]
    assert last["full_load_reason"] == "columns_exclude or columns_hash changed"
    rebuilt = _rows(lake_root, table)
    assert [r["name"] for r in rebuilt] == [_hmac(hash_key, n) for n in ("ann2", "bob", "cy")]


def test_freeze_fails_on_an_added_column_and_writes_nothing(
    source, table, control_db, db, lake_root, instance, hash_key
):
    source.run(f"CREATE TABLE {table} (id int PRIMARY KEY, name varchar(40), seq int)")
    source.run(f"INSERT INTO {table} VALUES (1, 'ann', 1), (2, 'bob', 2)")
    key = f"frozen.{table}"
    _add(
        db,
        source,
        key,
        table,
        load_strategy="incremental",
        incremental_column="seq",
        merge_keys=["id"],
        schema_change="freeze",
    )
    load(control_db, instance, key, lake_root)
    assert outcome(db, key)[0] == "Succeeded"
    path = lake_root / "lake" / "raw" / table
    version = DeltaTable(str(path)).version()
    watermark = db.execute(
        "SELECT incremental_value FROM table_control WHERE control_key = %s", (key,)
    ).fetchone()["incremental_value"]

    source.run(f"ALTER TABLE {table} ADD COLUMN extra varchar(10)")
    source.run(f"INSERT INTO {table} VALUES (3, 'cy', 3, 'x')")
    load(control_db, instance, key, lake_root)
    status, message = outcome(db, key)
    assert status == "Failed"
    assert "schema_change is 'freeze'" in message and "added column 'extra'" in message
    assert DeltaTable(str(path)).version() == version  # nothing written
    row = db.execute(
        "SELECT incremental_value FROM table_control WHERE control_key = %s", (key,)
    ).fetchone()
    assert row["incremental_value"] == watermark

    # evolve takes the column; a dropped one is kept, NULL for new rows, and said so.
    db.execute(
        "UPDATE table_control SET schema_change = 'evolve', last_status = NULL, retry_count = 0"
        " WHERE control_key = %s",
        (key,),
    )
    load(control_db, instance, key, lake_root)
    assert outcome(db, key)[0] == "Succeeded"
    assert [r.get("extra") for r in _rows(lake_root, table)] == [None, None, "x"]
    source.run(f"ALTER TABLE {table} DROP COLUMN name")
    source.run(f"INSERT INTO {table} VALUES (4, 4, 'y')")
    load(control_db, instance, key, lake_root)
    status, message = outcome(db, key)
    assert status == "Succeeded", message
    assert "no longer has column(s) name: kept in the destination, NULL for new rows" in message
    assert [r["name"] for r in _rows(lake_root, table)] == ["ann", "bob", "cy", None]
