"""Demo data for local mode: three small source tables and the control rows that load them.

``start_demo_lakebase(home)`` starts the embedded Lakebase with this seed. ``seed_demo`` is
idempotent and changes nothing once the demo exists: the source tables, ten orders and the three
control rows are created the first time (``dataloader dev``, or the first process that needs the
database); on later starts it only refreshes the server's socket directory and port in the demo
rows' ``db_config_value`` when they moved (an UPDATE, so the control-key counter of sql/004 and
the identity sequence are untouched). It never appends orders or changes prices by itself: add
rows to ``demo_source.shop.orders`` with SQL to give the incremental load something new
(``append_demo_orders``). ``dataloader psql`` does not seed. A person's edits to the demo
control rows (schedule, is_active, ...) are kept; several processes may seed at once.
"""

from __future__ import annotations

import json
from pathlib import Path

import psycopg

from dagsters.local.embedded_lakebase import (
    CONTROL_DATABASE,
    EmbeddedServer,
    ensure_database,
    ensure_embedded_lakebase,
)

DEMO_DATABASE = "demo_source"
DEMO_SCHEMA = "shop"
DEMO_CATALOG = "demo_lake"
_SEED_LOCK_KEY = 0x44454D4F  # "DEMO": serialises concurrent seeders

_SOURCE_DDL = """
CREATE SCHEMA IF NOT EXISTS shop;
CREATE TABLE IF NOT EXISTS shop.customers (
    customer_id integer PRIMARY KEY,
    name        text NOT NULL,
    email       text,
    country     text,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS shop.products (
    product_id  integer PRIMARY KEY,
    name        text NOT NULL,
    price       numeric(10,2) NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS shop.orders (
    order_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id integer NOT NULL,
    product_id  integer NOT NULL,
    amount      numeric(12,2) NOT NULL,
    status      text NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
"""

_CUSTOMERS = [
    (1, "Ada Lovelace", "ada@example.com", "GB"),
    (2, "Grace Hopper", "grace@example.com", "US"),
    (3, "Edsger Dijkstra", "edsger@example.com", "NL"),
    (4, "Barbara Liskov", "barbara@example.com", "US"),
    (5, "Donald Knuth", "don@example.com", "US"),
]
_PRODUCTS = [
    (10, "Keyboard", "49.90"),
    (11, "Mouse", "19.50"),
    (12, "Monitor", "189.00"),
    (13, "Headset", "79.99"),
]

# (control_key, source table, strategy, incremental column, merge keys, interval)
DEMO_TABLES = [
    ("demo.customers", "customers", "full", None, None, "5 minutes"),
    ("demo.orders", "orders", "incremental", "updated_at", None, "2 minutes"),
    ("demo.products", "products", "merge", None, ["product_id"], "3 minutes"),
]


def start_demo_lakebase(home: Path, *, seed: bool = True) -> EmbeddedServer:
    """The embedded Lakebase under ``home``, migrated, with the demo rows unless ``seed`` is off."""
    return ensure_embedded_lakebase(home, seed=seed_demo if seed else None)


def seed_demo(server: EmbeddedServer) -> None:
    """Create the demo source tables and control rows once; afterwards change nothing."""
    ensure_database(server, DEMO_DATABASE)
    with psycopg.connect(server.conninfo(DEMO_DATABASE)) as conn:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SEED_LOCK_KEY,))
        conn.execute(_SOURCE_DDL)
        first_time = conn.execute("SELECT count(*) FROM shop.customers").fetchone()[0] == 0
        if first_time:
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO shop.customers (customer_id, name, email, country)"
                    " VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    _CUSTOMERS,
                )
                cur.executemany(
                    "INSERT INTO shop.products (product_id, name, price) VALUES (%s, %s, %s)"
                    " ON CONFLICT DO NOTHING",
                    _PRODUCTS,
                )
            _append_orders(conn, 10)
    _upsert_control_rows(server)


def append_demo_orders(server: EmbeddedServer, count: int = 3) -> int:
    """Add ``count`` new orders and bump one product's price; returns the new orders' count."""
    with psycopg.connect(server.conninfo(DEMO_DATABASE)) as conn:
        return _append_orders(conn, count)


def _append_orders(conn: psycopg.Connection, count: int) -> int:
    if count <= 0:
        return 0
    conn.execute(
        "INSERT INTO shop.orders (customer_id, product_id, amount, status)"
        " SELECT 1 + (random() * 4)::int, 10 + (random() * 3)::int,"
        "        round((5 + random() * 200)::numeric, 2), 'placed'"
        " FROM generate_series(1, %s)",
        (count,),
    )
    # A price change gives the merge load an update to apply, not only inserts.
    conn.execute(
        "UPDATE shop.products SET price = round(price * 1.01, 2), updated_at = now()"
        " WHERE product_id = 10 + (extract(epoch FROM now())::bigint % 4)"
    )
    return count


def _upsert_control_rows(server: EmbeddedServer) -> None:
    """Insert the demo rows that are missing; refresh where the server listens in the others.

    No INSERT runs when every row exists (a statement-level trigger would count even an empty
    INSERT ... ON CONFLICT as a key change, and each would burn an identity value).
    """
    where = {"host": server.socket_dir, "port": server.port}
    db_config = json.dumps({**where, "database": DEMO_DATABASE, "user": "postgres"})
    with psycopg.connect(server.conninfo(CONTROL_DATABASE)) as conn, conn.cursor() as cur:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SEED_LOCK_KEY,))
        keys = [key for key, *_ in DEMO_TABLES]
        present = {
            key
            for (key,) in conn.execute(
                "SELECT control_key FROM table_control WHERE control_key = ANY(%s)", (keys,)
            ).fetchall()
        }
        missing = [
            (key, DEMO_DATABASE, DEMO_SCHEMA, table, DEMO_CATALOG, DEMO_SCHEMA, table, db_config)
            + (strategy, column, merge_keys, interval)
            for key, table, strategy, column, merge_keys, interval in DEMO_TABLES
            if key not in present
        ]
        if missing:
            cur.executemany(
                "INSERT INTO table_control (control_key, source_catalog, source_schema_name,"
                "  source_table_name, destination_catalog, destination_schema_name,"
                "  destination_table_name, db_type, db_config_value, load_strategy,"
                "  incremental_column, merge_keys, schedule_interval)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, 'postgresql', %s::jsonb, %s, %s, %s,"
                "  %s::interval) ON CONFLICT (control_key) DO NOTHING",
                missing,
            )
        # Only where the server listens is refreshed, and only when it moved; a person's
        # edits to the row stay.
        conn.execute(
            "UPDATE table_control SET db_config_value = db_config_value || %(where)s::jsonb"
            " WHERE control_key = ANY(%(keys)s)"
            "  AND (db_config_value->'host' IS DISTINCT FROM %(where)s::jsonb->'host'"
            "   OR db_config_value->'port' IS DISTINCT FROM %(where)s::jsonb->'port')",
            {"where": json.dumps(where), "keys": [k for k in keys if k in present]},
        )
