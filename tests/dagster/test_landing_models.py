"""dbt files from real Delta schemas, committed with real git, never clobbering a person's file."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pyarrow as pa
import pytest
import yaml
from deltalake import DeltaTable, write_deltalake

from dagsters.landing.dbt_files import (
    column_aliases,
    is_generated,
    render_staging_sql,
    sources_file_path,
    staging_model_path,
)
from dagsters.landing.git_repo import GitError, ModelsRepo
from dagsters.landing.names import snake_case
from dagsters.landing.publish import publish_landing_tables
from dagsters.landing.schema import (
    LandingColumn,
    LandingTable,
    SchemaUnavailable,
    columns_from_uc_rows,
    local_table_path,
    read_delta_columns,
    uc_columns_statement,
)


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=True
    ).stdout.strip()


def repo_at(path: Path, **kwargs: str) -> ModelsRepo:
    """A models repo whose lock file lives beside it in the test's own directory."""
    return ModelsRepo(path, lock_dir=path.parent / "locks", **kwargs)


def make_orders(lake: Path, catalog: str = "main", schema: str = "sales") -> Path:
    path = local_table_path(lake, catalog, schema, "Orders")
    data = pa.table(
        {
            "OrderID": pa.array([1, 2], pa.int64()),
            "customerName": pa.array(["a", "b"], pa.string()),
            "Unit Price": pa.array([1, 2], pa.decimal128(10, 2)),
            "select": pa.array([True, False]),
            "OrderedAt": pa.array([1, 2], pa.timestamp("us", tz="UTC")),
            "local_ts": pa.array([1, 2], pa.timestamp("us")),
            "qty": pa.array([1, 2], pa.int32()),
            "tags": pa.array([["x"], []], pa.list_(pa.string())),
            "address": pa.array([{"street": "s", "zip": 1}, {"street": "t", "zip": 2}]),
            "attrs": pa.array([[("k", 1)], []], pa.map_(pa.string(), pa.int16())),
            "day": pa.array([1, 2], pa.date32()),
            "blob": pa.array([b"x", b"y"]),
            "ratio": pa.array([0.5, 1.5], pa.float64()),
        }
    )
    write_deltalake(str(path), data)
    return path


def make_customers(lake: Path, catalog: str = "main", schema: str = "sales") -> Path:
    path = local_table_path(lake, catalog, schema, "customers")
    write_deltalake(str(path), pa.table({"id": pa.array([1], pa.int64()), "name": ["x"]}))
    return path


def landing(path: Path, config_id: int, catalog: str, schema: str, table: str) -> LandingTable:
    return LandingTable(
        config_id=config_id,
        control_key=f"{schema}.{table}".lower(),
        load_strategy="incremental",
        catalog=catalog,
        schema=schema,
        table=table,
        columns=read_delta_columns(path),
    )


EXPECTED_ORDERS_TYPES = {
    "OrderID": "bigint",
    "customerName": "string",
    "Unit Price": "decimal(10,2)",
    "select": "boolean",
    "OrderedAt": "timestamp",
    "local_ts": "timestamp_ntz",
    "qty": "int",
    "tags": "array<string>",
    "address": "struct<street:string,zip:bigint>",
    "attrs": "map<string,smallint>",
    "day": "date",
    "blob": "binary",
    "ratio": "double",
}


@pytest.fixture
def orders(lake_root: Path) -> LandingTable:
    return landing(make_orders(lake_root), 1, "main", "sales", "Orders")


def test_names_are_snake_case_and_unique() -> None:
    assert snake_case("OrderID") == "order_id"
    assert snake_case("customerName") == "customer_name"
    assert snake_case("HTTPStatus") == "http_status"
    assert snake_case("Ünit Price") == "unit_price"
    assert snake_case("1st-col") == "_1st_col"
    cols = [LandingColumn("a_b", "int"), LandingColumn("A B", "int"), LandingColumn("a-b", "int")]
    assert column_aliases(cols) == ["a_b", "a_b_2", "a_b_3"]


def test_delta_schema_round_trips_through_sources_yaml(
    tmp_path: Path, lake_root: Path, orders: LandingTable
) -> None:
    repo = repo_at(tmp_path / "models")
    result = publish_landing_tables([orders], repo)

    sources_text = (repo.path / sources_file_path("sales")).read_text()
    assert is_generated(sources_text)
    (source,) = yaml.safe_load(sources_text)["sources"]
    assert (source["name"], source["database"], source["schema"]) == ("sales", "main", "sales")
    (table,) = source["tables"]
    assert table["name"] == "orders" and table["identifier"] == "Orders"
    assert table["config"]["meta"] == {
        "control_key": "sales.orders",
        "load_strategy": "incremental",
        "config_id": 1,
    }
    delta_path = local_table_path(lake_root, "main", "sales", "Orders")
    delta_fields = DeltaTable(str(delta_path)).schema().fields
    assert [c["name"] for c in table["columns"]] == [f.name for f in delta_fields]
    assert {c["name"]: c["data_type"] for c in table["columns"]} == EXPECTED_ORDERS_TYPES
    quoted = {c["name"] for c in table["columns"] if c.get("quote")}
    assert quoted == {"OrderID", "customerName", "Unit Price", "select", "OrderedAt"}
    assert result.settled == [1]


def test_staging_model_selects_every_column_with_snake_case_alias(orders: LandingTable) -> None:
    sql = render_staging_sql(orders, "sales")
    assert is_generated(sql)
    assert "{{ source('sales', 'orders') }}" in sql
    for line in [
        "`OrderID` as order_id,",
        "`customerName` as customer_name,",
        "`Unit Price` as unit_price,",
        "`select`,",
        "`OrderedAt` as ordered_at,",
        "local_ts,",
        "ratio",
    ]:
        assert f"        {line}\n" in sql
    select_list = sql.split("    select\n", 1)[1].split("    from source", 1)[0]
    assert len(select_list.strip().splitlines()) == len(orders.columns)


def test_commit_without_remote_lists_tables_and_rerun_commits_nothing(
    tmp_path: Path, lake_root: Path, orders: LandingTable
) -> None:
    customers = landing(make_customers(lake_root), 2, "main", "sales", "customers")
    repo = repo_at(tmp_path / "models", branch="dataloader/landing-tables")

    first = publish_landing_tables([orders, customers], repo)

    assert first.commit == git(repo.path, "rev-parse", "HEAD")
    assert first.pushed_to is None
    assert git(repo.path, "branch", "--show-current") == "dataloader/landing-tables"
    message = git(repo.path, "log", "-1", "--format=%B")
    assert "main.sales.Orders (control_key sales.orders, incremental)" in message
    assert "main.sales.customers" in message
    assert sorted(first.changed_files) == [
        "models/staging/sales/_sales__sources.yml",
        "models/staging/sales/stg_sales__customers.sql",
        "models/staging/sales/stg_sales__orders.sql",
    ]
    assert git(repo.path, "status", "--porcelain") == ""
    assert sorted(first.settled) == [1, 2]
    # The lock file is in the lock directory, never in the working copy.
    (lock,) = (tmp_path / "locks").iterdir()
    assert lock.name.startswith("models_repo-")

    again = publish_landing_tables([orders, customers], repo)
    assert again.commit is None and again.changed_files == []
    assert git(repo.path, "rev-list", "--count", "HEAD") == "1"
    assert sorted(again.settled) == [1, 2]


def test_second_batch_adds_table_to_existing_source_file(
    tmp_path: Path, lake_root: Path, orders: LandingTable
) -> None:
    repo = repo_at(tmp_path / "models")
    publish_landing_tables([orders], repo)
    customers = landing(make_customers(lake_root), 2, "main", "sales", "customers")

    result = publish_landing_tables([customers], repo)

    assert result.commit is not None
    assert sorted(result.changed_files) == [
        "models/staging/sales/_sales__sources.yml",
        "models/staging/sales/stg_sales__customers.sql",
    ]
    (source,) = yaml.safe_load((repo.path / sources_file_path("sales")).read_text())["sources"]
    assert [t["name"] for t in source["tables"]] == ["customers", "orders"]
    assert "main.sales.customers" in git(repo.path, "log", "-1", "--format=%B")
    assert "Orders" not in git(repo.path, "log", "-1", "--format=%B")


def test_push_to_bare_remote(tmp_path: Path, orders: LandingTable) -> None:
    bare = tmp_path / "remote.git"
    subprocess.run(["git", "init", "--quiet", "--bare", str(bare)], check=True)
    subprocess.run(["git", "clone", "--quiet", str(bare), str(tmp_path / "clone")], check=True)
    repo = repo_at(tmp_path / "clone", branch="dataloader/landing-tables")

    result = publish_landing_tables([orders], repo)

    assert result.pushed_to == "origin"
    assert git(bare, "rev-parse", "refs/heads/dataloader/landing-tables") == result.commit
    files = git(bare, "ls-tree", "-r", "--name-only", "dataloader/landing-tables").splitlines()
    assert staging_model_path("sales", orders) in files

    # A second working copy picks the branch up from the remote and fast-forwards onto it.
    other = repo_at(tmp_path / "clone2", branch="dataloader/landing-tables")
    subprocess.run(["git", "clone", "--quiet", str(bare), str(other.path)], check=True)
    rerun = publish_landing_tables([orders], other)
    assert rerun.commit is None and rerun.settled == [1]
    assert git(other.path, "rev-parse", "HEAD") == result.commit


def test_persons_file_is_never_overwritten(tmp_path: Path, orders: LandingTable) -> None:
    repo = repo_at(tmp_path / "models")
    repo.path.mkdir()
    git(repo.path, "init", "--quiet", "--initial-branch=dataloader/landing-tables")
    own = repo.path / staging_model_path("sales", orders)
    own.parent.mkdir(parents=True)
    own.write_text("select 1 as hand_written\n")

    result = publish_landing_tables([orders], repo)

    assert own.read_text() == "select 1 as hand_written\n"
    assert staging_model_path("sales", orders) in result.kept_files
    assert result.changed_files == [sources_file_path("sales")]
    assert result.settled == [1]


def test_edited_generated_file_becomes_the_persons(tmp_path: Path, orders: LandingTable) -> None:
    repo = repo_at(tmp_path / "models")
    publish_landing_tables([orders], repo)
    model = repo.path / staging_model_path("sales", orders)
    edited = model.read_text().replace("select * from renamed", "select * from renamed where 1=1")
    model.write_text(edited)
    git(repo.path, "commit", "--quiet", "-am", "person tweaks the staging model")
    widened = dataclasses.replace(
        orders, columns=(*orders.columns, LandingColumn("new_col", "int"))
    )

    result = publish_landing_tables([widened], repo)

    assert model.read_text() == edited
    assert result.changed_files == [sources_file_path("sales")]
    assert "new_col" in (repo.path / sources_file_path("sales")).read_text()


def test_same_schema_name_in_two_catalogs_gets_two_sources(tmp_path: Path, lake_root: Path) -> None:
    a = landing(make_customers(lake_root, "main", "crm"), 1, "main", "crm", "customers")
    b = landing(make_customers(lake_root, "dev", "crm"), 2, "dev", "crm", "customers")
    repo = repo_at(tmp_path / "models")

    result = publish_landing_tables([a, b], repo)

    assert sources_file_path("crm") in result.changed_files
    assert sources_file_path("main_crm") in result.changed_files
    dev = yaml.safe_load((repo.path / sources_file_path("crm")).read_text())["sources"][0]
    assert dev["database"] == "dev"


def test_missing_delta_table_is_reported(lake_root: Path) -> None:
    with pytest.raises(SchemaUnavailable, match="no Delta table"):
        read_delta_columns(local_table_path(lake_root, "main", "sales", "nope"))


def test_destination_names_cannot_leave_the_lake(lake_root: Path) -> None:
    with pytest.raises(SchemaUnavailable, match="not a directory name"):
        local_table_path(lake_root, "main", "..", "orders")


def test_refuses_non_empty_directory_that_is_not_a_repository(tmp_path: Path) -> None:
    target = tmp_path / "models"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(GitError, match="not a git working copy"):
        repo_at(target).ensure()


def test_unity_catalog_query_and_rows() -> None:
    statement, params = uc_columns_statement("main", "Sales", "Orders")
    assert "FROM `main`.information_schema.columns" in statement
    assert params == {"schema_name": "sales", "table_name": "orders"}
    rows = [
        {
            "column_name": "b",
            "full_data_type": "DECIMAL(10,2)",
            "is_nullable": "NO",
            "ordinal_position": "1",
        },
        {
            "column_name": "a",
            "full_data_type": "bigint",
            "is_nullable": "YES",
            "ordinal_position": "0",
        },
    ]
    assert columns_from_uc_rows(rows) == (
        LandingColumn("a", "bigint", True),
        LandingColumn("b", "decimal(10,2)", False),
    )


def test_git_errors_never_show_remote_credentials(tmp_path: Path, orders: LandingTable) -> None:
    repo = repo_at(tmp_path / "models")
    repo.path.mkdir()
    git(repo.path, "init", "--quiet")
    # Loopback port 1: nothing listens, so the fetch fails fast without leaving the machine.
    git(repo.path, "remote", "add", "origin", "https://dataloader:s3cret-token@127.0.0.1:1/m.git")

    with pytest.raises(GitError) as info:
        publish_landing_tables([orders], repo)
    assert "s3cret-token" not in str(info.value)
    assert "fetch" in str(info.value)


def test_persons_sources_file_without_the_table_blocks_it(
    tmp_path: Path, lake_root: Path, orders: LandingTable
) -> None:
    # A staging model for a table the person's sources file does not define would not compile,
    # so nothing is written for it and it stays unprocessed; a table the person did define is
    # generated as usual.
    customers = landing(make_customers(lake_root), 2, "main", "sales", "customers")
    repo = repo_at(tmp_path / "models")
    repo.path.mkdir()
    git(repo.path, "init", "--quiet", "--initial-branch=dataloader/landing-tables")
    own = repo.path / sources_file_path("sales")
    own.parent.mkdir(parents=True)
    mine = "version: 2\nsources:\n  - name: sales\n    tables:\n      - name: customers\n"
    own.write_text(mine)

    result = publish_landing_tables([orders, customers], repo)

    assert own.read_text() == mine
    assert result.settled == [2]
    assert list(result.blocked) == [1] and "no entry for source 'sales'" in result.blocked[1]
    assert result.changed_files == [staging_model_path("sales", customers)]
    assert not (repo.path / staging_model_path("sales", orders)).exists()
    assert "Orders" not in git(repo.path, "log", "-1", "--format=%B")
