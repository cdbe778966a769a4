"""The load job's partition tags: the table's tags at launch, never overriding a sensor run's own."""

from __future__ import annotations

from helpers import make_claimed

from dagsters.assets.launch_config import load_job_config
from dagsters.policy.run_requests import (
    TAG_CONTROL_KEY,
    TAG_METADATA_ID,
    TAG_SOURCE_SYSTEM,
    TAG_TRIGGER,
    load_run_tags,
)

ROW = make_claimed(
    7,
    control_key="erp.orders",
    db_type="postgresql",
    db_config_value={"host": "db1.internal", "port": 5432},
    destination_catalog="bronze",
    destination_schema_name="erp",
    destination_table_name="orders",
    retry_count=1,
)


def test_partition_tags_are_the_sensor_tags_of_the_same_row_without_the_attempt():
    tags = load_job_config(lambda key: ROW).get_tags_for_partition_key("erp.orders")
    sensor = load_run_tags(ROW, triggered_by="retry")
    # Dagster lays these over a sensor request's tags: same values, and nothing of the attempt.
    shared = {k: v for k, v in tags.items() if k.startswith("dataloader/")}
    assert shared.items() <= sensor.items()
    assert shared[TAG_SOURCE_SYSTEM] == "postgresql_db1.internal_5432"
    assert TAG_TRIGGER not in shared and TAG_METADATA_ID not in shared
    assert tags["dagster/partition"] == "erp.orders"


def test_a_launch_goes_ahead_with_the_key_alone_when_the_row_cannot_be_read():
    def unreachable(key: str) -> dict:
        raise ConnectionError("control database down")

    for row_for_key in (unreachable, lambda key: None):
        tags = load_job_config(row_for_key).get_tags_for_partition_key("erp.orders")
        assert {k: v for k, v in tags.items() if k.startswith("dataloader/")} == {
            TAG_CONTROL_KEY: "erp.orders"
        }
