"""Dynamic partitions follow table_control: the key version, the sync plan, the master sensor applying it."""

from __future__ import annotations

import json

import dagster as dg
from helpers import SensorLoop, add_row, claim_due

from dagsters.partitions import PARTITIONS_NAME
from dagsters.sensors.dataloader_master_sensor import (
    PARTITION_RESYNC_SECONDS,
    build_master_sensor,
    plan_partition_sync,
)
from dagsters.settings import Settings


def partitions(instance: dg.DagsterInstance) -> list[str]:
    return sorted(instance.get_dynamic_partitions(PARTITIONS_NAME))


def requested(result) -> tuple[list[str], list[str]]:
    add, delete = [], []
    for request in getattr(result, "dynamic_partitions_requests", None) or []:
        target = add if isinstance(request, dg.AddDynamicPartitionsRequest) else delete
        target.extend(request.partition_keys)
    return sorted(add), sorted(delete)


def test_key_version_moves_on_key_changes_only(db, client):
    start = client.control_keys_version()
    db.execute(
        "INSERT INTO table_control (control_key, source_table_name, destination_catalog,"
        " destination_schema_name, destination_table_name, db_type)"
        " SELECT 'k' || g, 't', 'c', 's', 't' || g, 'postgresql' FROM generate_series(1, 50) g"
    )
    assert client.control_keys_version() == start + 1  # one bump per statement, not per row
    assert client.list_control_keys()[:3] == ["k1", "k10", "k11"]
    # The sensors' own writes (claims, status changes) do not touch control_key.
    assert len(claim_due(client, 10)) == 10
    db.execute("UPDATE table_control SET last_message = 'x', is_active = false")
    assert client.control_keys_version() == start + 1
    db.execute("UPDATE table_control SET control_key = 'renamed' WHERE control_key = 'k1'")
    assert client.control_keys_version() == start + 2
    db.execute("DELETE FROM table_control WHERE control_key = 'k2'")
    assert client.control_keys_version() == start + 3
    db.execute("TRUNCATE historical_metadata, table_control")
    assert client.control_keys_version() == start + 4
    assert client.list_control_keys() == []


def test_master_sensor_keeps_partitions_in_step_with_table_control(control_db, db, instance):
    for key in ("a", "b", "c"):
        add_row(db, key, next_load_date_time=None)  # never due: no claim, still a partition
    instance.add_dynamic_partitions(PARTITIONS_NAME, ["a", "gone"])
    loop = SensorLoop(build_master_sensor(Settings()), instance, control_db)

    first = loop.tick()
    assert requested(first) == (["b", "c"], ["gone"])
    assert partitions(instance) == ["a", "b", "c"]
    # In step: the next tick asks nothing of the daemon and is a plain skip.
    assert isinstance(loop.tick(), dg.SkipReason)

    db.execute("DELETE FROM table_control WHERE control_key = 'b'")
    add_row(db, "d", next_load_date_time=None)
    db.execute("UPDATE table_control SET control_key = 'c2' WHERE control_key = 'c'")
    assert requested(loop.tick()) == (["c2", "d"], ["b", "c"])
    assert partitions(instance) == ["a", "c2", "d"]
    assert isinstance(loop.tick(), dg.SkipReason)

    # A partition deleted by hand comes back as soon as its table is claimed.
    instance.delete_dynamic_partition(PARTITIONS_NAME, "a")
    db.execute("UPDATE table_control SET next_load_date_time = now() WHERE control_key = 'a'")
    result = loop.tick()
    assert [r.partition_key for r in result.run_requests] == ["a"]
    assert requested(result) == (["a"], [])
    assert partitions(instance) == ["a", "c2", "d"]


def test_sync_plan_lists_keys_only_when_needed_and_spreads_big_changes():
    def fail():
        raise AssertionError("listed although the version did not move")

    in_step = json.dumps({"keys_version": 7, "synced_at": 1000.0})
    quiet = plan_partition_sync(
        cursor=in_step,
        version=7,
        now=1000.0 + PARTITION_RESYNC_SECONDS - 1,
        list_control_keys=fail,
        list_partitions=fail,
        claimed=["x"],
    )
    assert (quiet.add, quiet.delete, quiet.cursor) == (["x"], [], None)

    # Once an hour the sets are compared anyway (someone may have edited partitions by hand).
    hourly = plan_partition_sync(
        cursor=in_step,
        version=7,
        now=1000.0 + PARTITION_RESYNC_SECONDS,
        list_control_keys=lambda: ["k1"],
        list_partitions=lambda: ["k1", "manual"],
    )
    assert (hourly.add, hourly.delete) == ([], ["manual"])

    # 5 missing, 3 per tick: the first tick adds 3 and does not record the version ...
    keys = [f"k{i}" for i in range(5)]
    first = plan_partition_sync(
        cursor=None,
        version=8,
        now=0.0,
        list_control_keys=lambda: keys,
        list_partitions=list,
        limit=3,
    )
    assert first.add == keys[:3] and json.loads(first.cursor)["keys_version"] is None
    # ... so the next one compares again and finishes.
    second = plan_partition_sync(
        cursor=first.cursor,
        version=8,
        now=60.0,
        list_control_keys=lambda: keys,
        list_partitions=lambda: keys[:3],
        limit=3,
    )
    assert second.add == keys[3:] and json.loads(second.cursor)["keys_version"] == 8
    # An unreadable cursor means "compare".
    assert plan_partition_sync(
        cursor="not json",
        version=8,
        now=0.0,
        list_control_keys=lambda: ["k"],
        list_partitions=list,
    ).add == ["k"]
