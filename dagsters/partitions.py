"""The ``control_key`` dynamic partitions: one partition per table_control row.

Both assets are partitioned by it; master_sensor keeps the set in step with table_control and
failed_monitor adds the keys it launches analyses for. Its own module, so sensors and assets share
it without importing each other.
"""

import dagster as dg

PARTITIONS_NAME = "control_key"

control_key_partitions = dg.DynamicPartitionsDefinition(name=PARTITIONS_NAME)
