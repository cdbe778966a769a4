"""Terminating a load stops it at once, commits nothing and leaves no stray files (issue 16, 11).

The load streams a big table into small Delta data files (DATALOADER_TARGET_FILE_BYTES) from a
source that slows down after the first rows, so several files are written and the script is
inside a source fetch when the run is terminated. The script stops on its own (the runner's
SIGKILL grace is set far longer than the test waits), removes the files this attempt wrote, never
touches the committed table, and the history row says what happened.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import dagster as dg
import pytest
from deltalake import DeltaTable
from helpers import add_control_row, claim_due, control_row, history, lakebase_for

from dagsters.assets.dataloader_pipes_asset import build_load_asset
from dagsters.partitions import PARTITIONS_NAME
from dagsters.policy.run_requests import load_run_config
from dagsters.resources.pipes_databricks import PipesDatabricksResource
from dagsters.settings import load_settings
from dagsters.utils.lakebase_client import LakebaseClient
from databricks_scripts.load.interrupt import data_files, referenced_files

DEADLINE_SECONDS = 120


@pytest.fixture
def big_source(source):
    """public.big: cfg.n rows of ~50 bytes; every row after cfg.slow_from takes 50 ms."""
    source.execute("CREATE TABLE public.cfg (n int NOT NULL, slow_from int NOT NULL)")
    source.execute("INSERT INTO public.cfg VALUES (100, 1000000)")
    source.execute(
        "CREATE FUNCTION public.slow_after(g int) RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN"
        " IF g > (SELECT slow_from FROM public.cfg) THEN PERFORM pg_sleep(0.05); END IF;"
        " RETURN true; END $$"
    )
    source.execute(
        "CREATE VIEW public.big AS SELECT g AS id, md5(g::text) AS payload"
        " FROM generate_series(1, (SELECT n FROM public.cfg)) g WHERE public.slow_after(g)"
    )
    return source


def load(control_db: str, lake_root: Path, instance, key: str) -> dg.ExecuteInProcessResult:
    with LakebaseClient(control_db) as client:
        [claimed] = [r for r in claim_due(client, 10) if r.control_key == key]
    instance.add_dynamic_partitions(PARTITIONS_NAME, [key])
    settings = load_settings({"DATALOADER_LAKE_ROOT": str(lake_root)})
    return dg.materialize(
        [build_load_asset(settings)],
        partition_key=key,
        run_config=load_run_config(claimed),
        resources={
            "lakebase": lakebase_for(control_db),
            # Far longer than the stop takes: the script must stop by itself, not by SIGKILL.
            "pipes_databricks": PipesDatabricksResource.from_settings(
                settings, termination_grace_seconds=30
            ),
        },
        instance=instance,
        raise_on_error=False,
    )


def test_terminate_stops_the_load_commits_nothing_and_removes_its_files(
    control_db, source_db, big_source, lake_root, db, instance, monkeypatch
):
    monkeypatch.setenv("DATALOADER_TARGET_FILE_BYTES", str(64 * 1024))
    monkeypatch.setenv("DATALOADER_BATCH_BYTES", str(64 * 1024))
    add_control_row(db, source_db, "pg.big", "big", load_strategy="full", incremental_column=None)
    assert load(control_db, lake_root, instance, "pg.big").success
    destination = lake_root / "lake" / "raw" / "big"
    committed = referenced_files(DeltaTable(str(destination)))
    big_source.execute("UPDATE public.cfg SET n = 200000, slow_from = 20000")
    db.execute(
        "UPDATE table_control SET last_status = NULLIF(last_status, 'Failed'),"
        " next_load_date_time = now()"
    )

    timings: dict[str, float] = {}

    def terminate_once_files_are_written() -> None:
        deadline = time.monotonic() + DEADLINE_SECONDS
        while time.monotonic() < deadline:
            if len(data_files(destination) - committed) >= 2:
                timings["signal"] = time.monotonic()
                os.kill(os.getpid(), signal.SIGINT)  # what a run worker gets on termination
                return
            time.sleep(0.05)

    killer = threading.Thread(target=terminate_once_files_are_written, daemon=True)
    killer.start()
    result = load(control_db, lake_root, instance, "pg.big")
    timings["ended"] = time.monotonic()
    killer.join(timeout=5)

    assert "signal" in timings, "the load never wrote a data file"
    assert not result.success
    # Nothing committed, committed files untouched, no other file left behind.
    table = DeltaTable(str(destination))
    assert table.version() == 0
    assert table.to_pyarrow_table().num_rows == 100
    assert data_files(destination) == committed
    row = control_row(db, "pg.big")
    assert row["last_status"] == "Failed"
    # A person's terminate is named by its kind (failed_monitor leaves such a row alone).
    assert (row["last_failure_kind"], history(db, "pg.big")[-1]["failure_kind"]) == (
        "cancelled",
        "cancelled",
    )
    message = history(db, "pg.big")[-1]["message"]
    assert message == row["last_message"]
    assert message.startswith("Cancelled - Dagster run")
    assert "stopped by SIGINT" in message and "committed nothing" in message
    removed = int(message.split("removed ")[1].split(" ")[0])
    assert removed >= 2
    print(f"terminate -> run ended in {timings['ended'] - timings['signal']:.2f}s; {message}")
