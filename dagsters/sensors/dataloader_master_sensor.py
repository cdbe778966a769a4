"""master_sensor: claims due tables and launches one ``dataloader__table_load`` run per table.

Each tick claims up to the batch size of due rows in one transaction (status Queued + a history row
each; FOR UPDATE SKIP LOCKED, so two ticks never claim the same row) and yields one RunRequest per
row. The run key is the history row, so a repeated tick never launches an attempt twice, and a
re-queued table always gets a new run. With ``DATALOADER_RUN_BATCH_SIZE`` > 1
it claims up to that many rows of one source per claim and launches one batch run per claim
(``dagsters/assets/load_batch.py``); a claim of one row is an ordinary run of its partition.

It also keeps the ``control_key`` dynamic partitions in step with table_control: every row has a
partition (so a person can load a table from the UI before it was ever claimed) and a deleted row's
partition goes away. Listing 100k keys every minute would cost more than the claim, so the sensor
reads a counter that a trigger moves whenever keys are added, removed or renamed (sql/004) and
only compares the two key sets when the counter differs from the one in its cursor, or once an
hour in case someone changed the partitions by hand.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass

import dagster as dg

from dagsters.control.rows import ClaimedRow
from dagsters.partitions import PARTITIONS_NAME, control_key_partitions
from dagsters.policy.run_requests import (
    LOAD_BATCH_JOB,
    batch_run_config,
    batch_run_key,
    batch_run_tags,
    environment_tags,
    load_run_config,
    load_run_key,
    load_run_tags,
    triggered_by,
)
from dagsters.resources.lakebase import LakebaseResource
from dagsters.sensors import alert_on_error, default_status, fail_uncomputable_rows
from dagsters.sensors.orphan_claims import release_after_failed_tick, settle_orphan_claims
from dagsters.settings import Settings
from dagsters.utils.lakebase_client import LakebaseClient

LOAD_JOB = "dataloader__table_load_job"
# Compare the key sets at least this often even when the counter did not move.
PARTITION_RESYNC_SECONDS = 3600
# The sensor daemon checks every requested key on its own (one instance lookup each), so a first
# sync of 100k rows is spread over ticks instead of one tick that takes minutes.
MAX_PARTITION_CHANGES_PER_TICK = 1000


@dataclass(frozen=True)
class PartitionSync:
    """What one tick changes in the partition set, and the cursor to keep afterwards."""

    add: list[str]
    delete: list[str]
    cursor: str | None  # None: keep the current cursor


def _parse_cursor(raw: str | None) -> tuple[int | None, float]:
    try:
        state = json.loads(raw or "{}")
        return state.get("keys_version"), float(state.get("synced_at") or 0.0)
    except (ValueError, TypeError, AttributeError):
        return None, 0.0  # unreadable cursor: sync again


def plan_partition_sync(
    *,
    cursor: str | None,
    version: int,
    now: float,
    list_control_keys,
    list_partitions,
    claimed: Iterable[str] = (),
    limit: int = MAX_PARTITION_CHANGES_PER_TICK,
) -> PartitionSync:
    """Decide the partition requests for this tick (pure apart from the two list callables)."""
    claimed = set(claimed)
    known_version, synced_at = _parse_cursor(cursor)
    if known_version == version and now - synced_at < PARTITION_RESYNC_SECONDS:
        return PartitionSync(add=sorted(claimed), delete=[], cursor=None)
    keys = set(list_control_keys())
    partitions = set(list_partitions())
    missing = sorted(keys - partitions)
    removed = sorted(partitions - keys - claimed)
    complete = len(missing) <= limit and len(removed) <= limit
    # Only a complete sync records the version; a partial one tries again on the next tick.
    state = {"keys_version": version if complete else None, "synced_at": now}
    return PartitionSync(
        add=sorted(set(missing[:limit]) | claimed),
        delete=removed[:limit],
        cursor=json.dumps(state, separators=(",", ":")),
    )


def batching(settings: Settings) -> bool:
    """Several tables per run (DATALOADER_RUN_BATCH_SIZE > 1): locally one after the other in the
    run worker, on Databricks one job run with a task per table (dagsters/runners/databricks_batch)."""
    return settings.run_batch_size > 1


def claim_runs(client: LakebaseClient, settings: Settings) -> list[list[ClaimedRow]]:
    """This tick's claims, grouped by the run that loads them.

    Without batching: up to ``master_batch_size`` rows, a run each (as always). With batching:
    up to ``master_batch_size`` runs of up to ``run_batch_size`` rows of one source each, one
    claim (one transaction) per run, within the per-source limit of runs.
    """
    if not batching(settings):
        # Queue-aware: only rows whose source system has a free slot (the same limit Dagster's
        # run queue applies per source tag), so nothing claimed waits into longqueued_monitor.
        rows = client.claim_due_tables_within_source_limit(
            settings.master_batch_size, settings.source_concurrency
        )
        return [[row] for row in rows]
    runs: list[list[ClaimedRow]] = []
    try:
        for _ in range(settings.master_batch_size):
            rows = client.claim_due_batch(settings.run_batch_size, settings.source_concurrency)
            if not rows:
                break
            runs.append(rows)
    except Exception as exc:
        release_after_failed_tick(client, [row for run in runs for row in run], exc)
        raise
    return runs


def run_request(rows: list[ClaimedRow], settings: Settings, *, batched: bool) -> dg.RunRequest:
    """One table's run (its partition, exactly as without batching), or one batch run."""
    if len(rows) == 1:
        [row] = rows
        return dg.RunRequest(
            run_key=load_run_key(row),
            run_config=load_run_config(row),
            tags={
                **load_run_tags(row, triggered_by=triggered_by(row)),
                **environment_tags(settings.environment),
            },
            partition_key=row.control_key,
            **({"job_name": LOAD_JOB} if batched else {}),
        )
    return dg.RunRequest(
        run_key=batch_run_key(rows),
        run_config=batch_run_config(rows),
        tags={**batch_run_tags(rows), **environment_tags(settings.environment)},
        job_name=LOAD_BATCH_JOB,
    )


def build_master_sensor(settings: Settings, jobs: list | None = None) -> dg.SensorDefinition:
    """``jobs``: the load job and the batch job, when batching (the sensor launches both)."""
    batched = batching(settings)

    def tick_result(
        context: dg.SensorEvaluationContext, client: LakebaseClient, runs: list[list[ClaimedRow]]
    ) -> dg.SensorResult | dg.SkipReason:
        """Partition requests and one run request per claimed run (no Lakebase writes)."""
        rows = [row for run in runs for row in run]
        # Every claimed key goes in the add request: the daemon adds only the keys it lacks.
        sync = plan_partition_sync(
            cursor=context.cursor,
            version=client.control_keys_version(),
            now=time.time(),
            list_control_keys=client.list_control_keys,
            list_partitions=lambda: context.instance.get_dynamic_partitions(PARTITIONS_NAME),
            claimed=[row.control_key for row in rows],
        )
        if sync.cursor is not None:
            context.update_cursor(sync.cursor)
            context.log.info(
                f"Partitions vs table_control: adding {len(sync.add)}, deleting "
                f"{len(sync.delete)}" + (f" (e.g. {sync.delete[:5]})" if sync.delete else "")
            )
        requests: list[dg.AddDynamicPartitionsRequest | dg.DeleteDynamicPartitionsRequest] = []
        if sync.add:
            requests.append(control_key_partitions.build_add_request(sync.add))
        if sync.delete:
            requests.append(control_key_partitions.build_delete_request(sync.delete))
        if not rows:
            skip = (
                "No table is due: no active row with next_load_date_time <= now() outside "
                "Queued/In Progress."
            )
            if requests:
                return dg.SensorResult(skip_reason=skip, dynamic_partitions_requests=requests)
            return dg.SkipReason(skip)
        context.log.info(
            f"Claimed {len(rows)} table(s): " + ", ".join(row.control_key for row in rows)
        )
        return dg.SensorResult(
            run_requests=[run_request(run, settings, batched=batched) for run in runs],
            dynamic_partitions_requests=requests,
        )

    target: dict = {"jobs": jobs} if batched and jobs else {"job_name": LOAD_JOB}

    @dg.sensor(
        name="master_sensor",
        **target,
        minimum_interval_seconds=settings.master_interval_seconds,
        default_status=default_status(settings),
        description=(
            f"Claims up to {settings.master_batch_size} due tables per tick and launches a load "
            "for each"
            if not batched
            else f"Claims up to {settings.master_batch_size} runs of up to "
            f"{settings.run_batch_size} due tables of one source per tick and launches them"
        )
        + "; keeps the control_key partitions in step with table_control.",
    )
    @alert_on_error(settings, "master_sensor")
    def master_sensor(
        context: dg.SensorEvaluationContext, lakebase: LakebaseResource
    ) -> dg.SensorResult | dg.SkipReason:
        client = lakebase.get_client()
        fail_uncomputable_rows(context, client)
        settle_orphan_claims(context, client, LOAD_JOB)
        runs = claim_runs(client, settings)
        try:
            return tick_result(context, client, runs)
        except Exception as exc:
            # The claims are committed but no run will be requested: give them back now.
            release_after_failed_tick(client, [row for run in runs for row in run], exc)
            raise

    return master_sensor
