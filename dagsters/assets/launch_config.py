"""How a ``dataloader__table_load`` run is launched: its partition, its options, its tags.

Every load runs on the partition of its table (partition key = ``control_key``), whoever launched
it: master_sensor's run requests name the partition, a person materializes the partition from the
asset page or picks it in the job's launchpad. The run config holds only options; the table_control
row is authoritative for everything else.

- ``LoadConfig``: what a run config may say. ``force_full_reload`` (a person's one-off full reload,
  honoured exactly like the row's own flag), ``control_key`` (optional: must equal the partition),
  and the two fields master_sensor fills for the attempt it claimed (``config_id``,
  ``metadata_id``). Anything else is refused by Dagster's config schema when the run is launched.
- ``launched_control_key``: the partition; a run without one is refused before anything is
  claimed, with a message naming the partition to select.
- ``load_job_config``: the job's partitioned config. A partition picked in the job's launchpad (or
  a backfill of the job) gets the table's ``dataloader/*`` tags at launch, so the per-source run
  limit holds the run in the queue like a sensor run, and a launchpad pre-filled with the one
  option a person may set.
- ``tag_ui_run``: a run that started without the tags (a materialization from the asset page)
  gets them when it starts, so every load run can be found by table, source and attempt.
"""

from __future__ import annotations

from collections.abc import Callable

import dagster as dg
from pydantic import Field

from dagsters.control.rows import ClaimedRow, ControlRow
from dagsters.partitions import control_key_partitions
from dagsters.policy.run_requests import (
    LOAD_ASSET,
    TAG_CONTROL_KEY,
    launch_tags,
    load_run_tags,
)


class LoadConfig(dg.Config):
    """Options of one load run. A person sets at most ``force_full_reload``; the partition says
    which table. master_sensor also fills ``config_id`` and ``metadata_id`` (the attempt it
    claimed); leave them out of a launch by hand."""

    force_full_reload: bool = Field(
        default=False,
        description="Reload the whole table this once (a full overwrite), whatever the row's "
        "load_strategy and watermark; the row's next loads are as configured.",
    )
    control_key: str | None = Field(
        default=None,
        description="Optional: the table's control_key. Must equal the selected partition.",
    )
    config_id: int | None = Field(
        default=None, description="Set by master_sensor (the claimed row); leave it out."
    )
    metadata_id: int | None = Field(
        default=None, description="Set by master_sensor (the claimed attempt); leave it out."
    )


def no_partition_message(configured: str | None) -> str:
    """What a person reads when a load run was launched without a partition."""
    which = f"the partition {configured!r}" if configured else "the table's partition"
    return (
        f"This run has no partition, so nothing was loaded: select {which} and launch again "
        "(Assets > dataloader__table_load > Materialize, or the launchpad of "
        "dataloader__table_load_job with the partition picked). The run config only holds "
        "options such as force_full_reload."
    )


def launched_control_key(context: dg.AssetExecutionContext, configured: str | None) -> str:
    """The table this run loads: its partition. Refused (before any claim) without one, or when
    the config names another table."""
    if not context.has_partition_key:
        raise dg.Failure(no_partition_message(configured))
    partition = context.partition_key
    if configured and configured != partition:
        raise dg.Failure(
            f"Run config control_key {configured!r} does not match partition {partition!r}; "
            "launch the partition of the table you want to load (or leave control_key out)."
        )
    return partition


def load_job_config(
    row_for_key: Callable[[str], ControlRow | None],
) -> dg.PartitionedConfig:
    """The load job's config per partition: the launchpad shows the one option a person may set,
    and the run carries the table's ``dataloader/*`` tags from the moment it is launched.

    ``row_for_key`` reads the table_control row; when it cannot (an unknown key, the control
    database unreachable from the code server) the run is still launched, with the key's tag
    only, and the asset refuses or tags it when it starts.
    """

    def tags_for(partition_key: str) -> dict[str, str]:
        try:
            row = row_for_key(partition_key)
        except Exception:  # noqa: BLE001 - a launch must not fail on a tag lookup
            row = None
        if row is None:
            return {TAG_CONTROL_KEY: partition_key}
        return launch_tags(row)

    return dg.PartitionedConfig(
        partitions_def=control_key_partitions,
        run_config_for_partition_key_fn=lambda _key: {
            "ops": {LOAD_ASSET: {"config": {"force_full_reload": False}}}
        },
        tags_for_partition_key_fn=tags_for,
    )


def tag_ui_run(context: dg.AssetExecutionContext, row: ControlRow, metadata_id: int) -> None:
    """Give a person's run the tags a sensor run carries, for the attempt it started."""
    tags = load_run_tags(ClaimedRow.of(row, metadata_id), triggered_by="ui")
    if any(context.run.tags.get(k) != v for k, v in tags.items()):
        context.instance.add_run_tags(context.run.run_id, tags)
