"""Column control, the schema contract, source lineage and comments (issue 27) proven through
`dataloader dev`: the real local product (embedded Lakebase, the daemon's master_sensor claiming
the rows, the local runner, the loader script, Delta on disk, the webserver's GraphQL).

One `dataloader dev` per source (PostgreSQL: a database of the embedded server; MariaDB on
127.0.0.1:3306, skipped with the reason when absent). In it a connection admin's
source_connection names the hash key's secret, whose value is in the environment of `dataloader
dev` (as a source password would be), and two rows are added with SQL:

- ``pii``: merge on ``id``, ``ssn`` excluded, ``email`` hashed, table and column comments at the
  source. Loaded twice: the hashes stay equal; ``ssn`` is never in the Delta table.
- ``frozen``: incremental on ``seq`` with ``schema_change = 'freeze'``. After a first load the
  source gains a column: the next load fails naming it, and writes nothing (the Delta version and
  the watermark stay).

The edges source -> table and load -> table and the column descriptions are read from the
running webserver's GraphQL API (the table asset appears when table_assets_sensor has reloaded the
code location after the INSERT).
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from deltalake import DeltaTable
from helpers import embedded_conninfo, free_port, running_dev
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from test_ui_launches import Dev, _code_location_loaded

from dagsters.policy.run_requests import LOAD_ASSET
from databricks_scripts.load.params import secret_env_var

SCOPE, KEY = "kv-pii", "hash-key"
PG_DATABASE = "demo_source"  # the embedded server's demo source database; our tables in public


@dataclass
class Source:
    db_type: str
    schema: str
    connection: dict[str, Any]
    run: Callable[[str], None]
    source_key: Callable[[str], list[str]]  # the source table's asset key, from its name


def _hmac(key: str, value: str) -> str:
    return hmac.new(key.encode(), value.encode(), hashlib.sha256).hexdigest()


def _postgres(dev: Dev) -> Source:
    conninfo = embedded_conninfo(dev.home)
    assert conninfo
    parts = conninfo_to_dict(conninfo)
    source_conninfo = make_conninfo(conninfo, dbname=PG_DATABASE)

    def run(statement: str) -> None:
        with psycopg.connect(source_conninfo, autocommit=True) as conn:
            conn.execute(statement)

    connection = {
        "host": parts["host"],
        "port": int(parts["port"]),
        "database": PG_DATABASE,
        "user_name": parts["user"],
    }
    return Source(
        "postgresql",
        "public",
        connection,
        run,
        lambda t: ["sources", "e2e_pii", PG_DATABASE, "public", t],
    )


def _mariadb_connection() -> Any:
    pymysql = pytest.importorskip("pymysql")
    try:
        return pymysql.connect(
            host="127.0.0.1", port=3306, user="root", password="", database="test", autocommit=True
        )
    except pymysql.err.OperationalError as exc:
        pytest.skip(f"MariaDB on 127.0.0.1:3306 (root, no password, db test) unreachable: {exc}")


def _mariadb(conn: Any) -> Source:
    def run(statement: str) -> None:
        with conn.cursor() as cur:
            cur.execute(statement)

    connection = {"host": "127.0.0.1", "port": 3306, "database": "test", "user_name": "root"}
    return Source("mysql", "test", connection, run, lambda t: ["sources", "e2e_pii", "test", t])


@pytest.fixture(params=["postgresql", "mariadb"])
def started(request, tmp_path) -> Iterator[tuple[Dev, Source, str, tuple[str, str]]]:
    """(dev, its source, the hash key, two table names): one `dataloader dev`, master_sensor
    ticking every 5 s."""
    mariadb = _mariadb_connection() if request.param == "mariadb" else None  # skip before start
    hash_key = f"pii-key-{uuid.uuid4().hex}"
    port = free_port()
    settings = {
        "DATALOADER_PORT": str(port),
        "DATALOADER_MASTER_SENSOR_INTERVAL_SECONDS": "5",
        secret_env_var(SCOPE, KEY): hash_key,
    }
    suffix = uuid.uuid4().hex[:8]
    tables = (f"people_{suffix}", f"frozen_{suffix}")
    with running_dev(tmp_path, settings) as (home, process, log):
        dev = Dev(f"http://127.0.0.1:{port}", home, process, log)
        dev.wait_for(lambda: _code_location_loaded(dev), "the code location to load")
        source = _postgres(dev) if mariadb is None else _mariadb(mariadb)
        try:
            yield dev, source, hash_key, tables
        finally:
            for table in tables:
                source.run(f"DROP TABLE IF EXISTS {table}")
            if mariadb is not None:
                mariadb.close()


def _add_rows(dev: Dev, source: Source, people: str, frozen: str) -> None:
    values = {**source.connection, "hash_secret_scope": SCOPE, "hash_secret_key": KEY}
    dev.sql(
        f"INSERT INTO source_connection (connection_name, db_type, {', '.join(values)})"
        f" VALUES ('e2e_pii', %s, {', '.join(['%s'] * len(values))})",
        (source.db_type, *values.values()),
    )
    common = (
        "INSERT INTO table_control (control_key, source_schema_name, source_table_name,"
        " destination_catalog, destination_schema_name, destination_table_name, db_type,"
        " connection_name, schedule_interval, load_strategy, merge_keys, {extra})"
        " VALUES (%s, %s, %s, 'lake', 'raw', %s, %s, 'e2e_pii', interval '1 day', %s,"
        " ARRAY['id'], {marks})"
    )
    dev.sql(
        common.format(extra="columns_exclude, columns_hash", marks="%s, %s"),
        (f"pii.{people}", source.schema, people, people, source.db_type, "merge")
        + (["ssn"], ["email"]),
    )
    dev.sql(
        common.format(extra="incremental_column, schema_change", marks="%s, %s"),
        (f"frozen.{frozen}", source.schema, frozen, frozen, source.db_type, "incremental")
        + ("seq", "freeze"),
    )


def _attempts(dev: Dev, key: str) -> list[dict]:
    return dev.sql(
        "SELECT status, message FROM historical_metadata WHERE control_key = %s"
        " ORDER BY metadata_id",
        (key,),
    )


def _ended(dev: Dev, key: str, count: int) -> list[dict] | None:
    """The row's attempts once ``count`` of them have ended (Succeeded or Failed)."""
    attempts = _attempts(dev, key)
    done = [a for a in attempts if a["status"] in ("Succeeded", "Failed")]
    return attempts if len(done) >= count else None


def _delta(dev: Dev, table: str) -> DeltaTable:
    return DeltaTable(str(dev.home / "lake" / "lake" / "raw" / table))


def _rows(dev: Dev, table: str) -> list[dict]:
    return sorted(_delta(dev, table).to_pyarrow_table().to_pylist(), key=lambda r: r["id"])


def _control(dev: Dev, key: str) -> dict:
    [row] = dev.sql(
        "SELECT last_status, last_message, incremental_value FROM table_control"
        " WHERE control_key = %s",
        (key,),
    )
    return row


def _make_due(dev: Dev, key: str) -> None:
    dev.sql("UPDATE table_control SET next_load_date_time = now() WHERE control_key = %s", (key,))


ASSET_NODE = """query($k: AssetKeyInput!) { assetNodeOrError(assetKey: $k) { __typename
  ... on AssetNode { groupName dependencyKeys { path }
    metadataEntries { label ... on TextMetadataEntry { text } } } } }"""

LATEST_MATERIALIZATION = """query($k: AssetKeyInput!) { assetOrError(assetKey: $k) {
  ... on Asset { assetMaterializations(limit: 1) { metadataEntries { label
    ... on TextMetadataEntry { text }
    ... on TableSchemaMetadataEntry { schema { columns { name description } } } } } } } }"""


def _node(dev: Dev, path: list[str]) -> dict | None:
    found = dev.gql(ASSET_NODE, k={"path": path})["assetNodeOrError"]
    return found if found["__typename"] == "AssetNode" else None


def _source_node_with_edges(dev: Dev, source: Source, table: str) -> dict | None:
    """The table's node once the reloaded code location declares it with both parents."""
    node = _node(dev, ["lake", "raw", table])
    if node is None:
        return None
    parents = {tuple(d["path"]) for d in node["dependencyKeys"]}
    return node if tuple(source.source_key(table)) in parents else None


def _check_first_load(dev: Dev, source: Source, people: str, hash_key: str) -> list[str]:
    key = f"pii.{people}"
    [first] = dev.wait_for(lambda: _ended(dev, key, 1), f"{key}'s first load")
    assert first["status"] == "Succeeded", first["message"]
    assert "columns excluded: ssn" in first["message"]
    assert "columns hashed: email" in first["message"] and hash_key not in first["message"]
    rows = _rows(dev, people)
    assert all("ssn" not in r for r in rows)  # never read, never written
    emails = [r["email"] for r in rows]
    assert emails[0] == emails[2] != emails[1]  # equal values, equal hashes: they still join
    assert emails[0] == _hmac(hash_key, "a@x.org") != "a@x.org"
    assert not any("@" in e for e in emails)
    assert [r["name"] for r in rows] == ["ann", "bob", "cy"]
    # Comments: the Delta table's description and the column's comment.
    delta = _delta(dev, people)
    assert delta.metadata().description == "People we know"
    [name] = [f for f in delta.schema().fields if f.name == "name"]
    assert name.metadata.get("comment") == "Given name"
    return emails


def _check_lineage_and_schema(dev: Dev, source: Source, people: str) -> None:
    node = dev.wait_for(
        lambda: _source_node_with_edges(dev, source, people), "the table asset with its source"
    )
    parents = {tuple(d["path"]) for d in node["dependencyKeys"]}
    assert parents == {tuple(source.source_key(people)), (LOAD_ASSET,)}  # source, load -> table
    source_node = _node(dev, source.source_key(people))
    assert source_node is not None and source_node["groupName"] == "source_e2e_pii"
    meta = {e["label"]: e.get("text") for e in source_node["metadataEntries"]}
    assert meta == {
        "connection": "e2e_pii",
        "type": source.db_type,
        "host": str(source.connection["host"]),
    }
    # The asset's column schema (TableSchema) carries the source's comments.
    asset = dev.gql(LATEST_MATERIALIZATION, k={"path": ["lake", "raw", people]})["assetOrError"]
    entries = {e["label"]: e for e in asset["assetMaterializations"][0]["metadataEntries"]}
    columns = {c["name"]: c for c in entries["dagster/column_schema"]["schema"]["columns"]}
    assert set(columns) == {"id", "name", "email"}  # ssn: excluded, not in the schema
    assert columns["name"]["description"] == "Given name"
    assert columns["id"]["description"] in (None, "")
    assert entries["source_comment"]["text"] == "People we know"
    assert entries["columns_excluded"]["text"] == "ssn"
    assert entries["columns_hashed"]["text"] == "email"


def _comment(source: Source, table: str) -> None:
    if source.db_type == "postgresql":
        source.run(f"COMMENT ON TABLE {table} IS 'People we know'")
        source.run(f"COMMENT ON COLUMN {table}.name IS 'Given name'")
    else:
        source.run(f"ALTER TABLE {table} COMMENT = 'People we know'")
        source.run(f"ALTER TABLE {table} MODIFY name varchar(40) COMMENT 'Given name'")


def test_column_control_lineage_and_comments_through_dataloader_dev(started):
    dev, source, hash_key, (people, frozen) = started
    source.run(
        f"CREATE TABLE {people} (id int PRIMARY KEY, name varchar(40), email varchar(80),"
        " ssn varchar(20))"
    )
    source.run(
        f"INSERT INTO {people} VALUES (1, 'ann', 'a@x.org', '111-11'),"
        " (2, 'bob', 'b@x.org', '222-22'), (3, 'cy', 'a@x.org', NULL)"
    )
    _comment(source, people)
    source.run(f"CREATE TABLE {frozen} (id int PRIMARY KEY, name varchar(40), seq int)")
    source.run(f"INSERT INTO {frozen} VALUES (1, 'ann', 1), (2, 'bob', 2)")
    _add_rows(dev, source, people, frozen)  # both due now: master_sensor claims them

    emails = _check_first_load(dev, source, people, hash_key)
    [loaded] = dev.wait_for(lambda: _ended(dev, f"frozen.{frozen}", 1), "the frozen row's load")
    assert loaded["status"] == "Succeeded", loaded["message"]

    # Stable across loads: the second load (a changed name) gives the same hashes.
    source.run(f"UPDATE {people} SET name = 'ann2' WHERE id = 1")
    _make_due(dev, f"pii.{people}")
    *_, second = dev.wait_for(lambda: _ended(dev, f"pii.{people}", 2), "the second load")
    assert second["status"] == "Succeeded", second["message"]
    again = _rows(dev, people)
    assert [r["email"] for r in again] == emails and again[0]["name"] == "ann2"

    # freeze: an added source column fails the load, naming it; nothing is written.
    key = f"frozen.{frozen}"
    version = _delta(dev, frozen).version()
    watermark = _control(dev, key)["incremental_value"]
    assert watermark == "2"
    source.run(f"ALTER TABLE {frozen} ADD COLUMN extra varchar(10)")
    source.run(f"INSERT INTO {frozen} VALUES (3, 'cy', 3, 'x')")
    _make_due(dev, key)
    *_, failed = dev.wait_for(lambda: _ended(dev, key, 2), "the frozen row's second load")
    assert failed["status"] == "Failed"
    for message in (failed["message"], _control(dev, key)["last_message"]):
        assert "schema_change is 'freeze'" in message and "added column 'extra'" in message
    assert _delta(dev, frozen).version() == version  # no commit
    assert _control(dev, key)["incremental_value"] == watermark  # the watermark stays
    assert [r["id"] for r in _rows(dev, frozen)] == [1, 2]

    _check_lineage_and_schema(dev, source, people)
