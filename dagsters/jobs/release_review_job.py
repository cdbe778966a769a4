"""``dataloader__release_review_job``: release a reviewed row without hand-written SQL.

Launch it from the launchpad with the row's key once the cause is fixed::

    ops:
      release_review_op:
        config:
          control_key: erp.invoices

The row becomes ready now with its retry budget restored (``dagsters/control/review_release.py``);
``master_sensor`` loads it on its next tick. The same from a shell: ``dataloader release <key>``.
"""

# No ``from __future__ import annotations``: Dagster resolves the op's config annotation at runtime.

import dagster as dg
from pydantic import Field

from dagsters.alerts import ALERT_ON_FAILURE_TAGS, RELEASE_JOB
from dagsters.control.errors import LoadAlreadyActive, UnknownControlKey
from dagsters.resources.lakebase import LakebaseResource


class ReleaseConfig(dg.Config):
    control_key: str = Field(description="The table_control row to release")


@dg.op(name="release_review_op")
def release_review_op(
    context: dg.OpExecutionContext, config: ReleaseConfig, lakebase: LakebaseResource
) -> dg.Output:
    who = context.run.tags.get("dagster/user") or f"Dagster run {context.run_id}"
    try:
        row = lakebase.get_client().release_reviewed(config.control_key, released_by=who)
    except (UnknownControlKey, LoadAlreadyActive) as exc:
        raise dg.Failure(description=str(exc)) from None
    context.log.info(f"{config.control_key} released by {who}: ready to load now")
    return dg.Output(
        config.control_key,
        metadata={"control_key": config.control_key, "last_message": row.last_message},
    )


@dg.job(
    name=RELEASE_JOB,
    description="Release a reviewed table: ready to load now, retries reset.",
    tags=ALERT_ON_FAILURE_TAGS,
)
def release_review_job() -> None:
    release_review_op()
