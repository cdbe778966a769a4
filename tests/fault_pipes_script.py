"""A load script for fault injection: a real Pipes subprocess that does one harmful thing mid-load.

tests/dagster/test_attempt_exit_paths.py copies it as ``dataloader_pipe.py`` into a scripts directory
with a ``fault.json`` beside it: ``{"conninfo": <control database>, "fault": <name>, ...}``.
It then reports a materialization the way the real loader does (rows, watermark), after doing
to the control database what the fault names, as a person or another process could meanwhile:

- ``malformed_metadata``: report ``rows_written = "lots"``;
- ``uncomputable_schedule``: give the row a cron the scheduler cannot compute (the test has
  switched sql/005's guards off, as on a database written before them);
- ``writeback_refused``: make the control database refuse the success write-back (a trigger
  raising "No space left on device", as a full Lakebase would);
- ``drop_connections``: end every other connection to the control database (the asset's pooled
  connections included), as a failover or an idle-connection reaper would;
- ``delete_row``: delete the row, then wait until the test says go (it deletes the partition,
  as master_sensor's next tick would).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import psycopg
from dagster_pipes import open_dagster_pipes

HERE = Path(__file__).resolve().parent


def _harm(conninfo: str, fault: str, config_id: int) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        if fault == "uncomputable_schedule":
            conn.execute(
                "UPDATE table_control SET schedule_cron = '61 * * * *', schedule_interval = NULL"
                " WHERE config_id = %s",
                (config_id,),
            )
        elif fault == "writeback_refused":
            conn.execute(
                "CREATE FUNCTION fault_disk_full() RETURNS trigger LANGUAGE plpgsql AS $$"
                " BEGIN RAISE EXCEPTION 'could not extend file: No space left on device'; END $$"
            )
            conn.execute(
                "CREATE TRIGGER fault_disk_full BEFORE UPDATE ON historical_metadata"
                " FOR EACH ROW WHEN (NEW.status = 'Succeeded')"
                " EXECUTE FUNCTION fault_disk_full()"
            )
        elif fault == "drop_connections":
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        elif fault == "delete_row":
            conn.execute("DELETE FROM table_control WHERE config_id = %s", (config_id,))
            deadline = time.monotonic() + 60
            while not (HERE / "go").exists() and time.monotonic() < deadline:
                time.sleep(0.05)


def main() -> None:
    plan = json.loads((HERE / "fault.json").read_text())
    with open_dagster_pipes() as pipes:
        config_id = int(pipes.extras["params"]["config_id"])
        _harm(plan["conninfo"], plan["fault"], config_id)
        rows = "lots" if plan["fault"] == "malformed_metadata" else 3
        pipes.report_asset_materialization(
            metadata={"rows_read": 3, "rows_written": rows, "watermark_after": "2024-01-02"}
        )


if __name__ == "__main__":
    main()
