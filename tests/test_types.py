"""The type checker over the modules that are typed so far: zero errors.

mypy (pinned in the ``test`` extra; configured in pyproject's ``[tool.mypy]``) checks the modules
listed here; the modules they import are analysed but not reported (``follow_imports =
"silent"``). Widen the list module by module: a module is added once it checks clean, and stays.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHECKED = (
    "dagsters/assets/forced_reload.py",
    "dagsters/assets/launch_config.py",
    "dagsters/control/claims.py",
    "dagsters/control/connection.py",
    "dagsters/control/landing_notes.py",
    "dagsters/control/lifecycle.py",
    "dagsters/control/reconcile.py",
    "dagsters/control/retry_state.py",
    "dagsters/control/review_release.py",
    "dagsters/control/rows.py",
    "dagsters/control/source_connections.py",
    "dagsters/control/source_slots.py",
    "dagsters/control/stuck.py",
    "dagsters/control/table_listing.py",
    "dagsters/control/transitions.py",
    "dagsters/control/uncomputable.py",
    "dagsters/policy/freshness.py",
    "dagsters/policy/run_requests.py",
    "dagsters/review_status.py",
    "dagsters/translator.py",
    "databricks_scripts/contract.py",
    "databricks_scripts/dataloader_pipe.py",
    "databricks_scripts/engines/arrow/commits.py",
    "databricks_scripts/engines/arrow/deep_verify.py",
    "databricks_scripts/engines/arrow/history.py",
    "databricks_scripts/engines/arrow/run.py",
    "databricks_scripts/engines/spark/columns.py",
    "databricks_scripts/engines/spark/comments.py",
    "databricks_scripts/engines/spark/commits.py",
    "databricks_scripts/engines/spark/history.py",
    "databricks_scripts/engines/spark/jdbc.py",
    "databricks_scripts/engines/spark/merge.py",
    "databricks_scripts/engines/spark/partitions.py",
    "databricks_scripts/engines/spark/run.py",
    "databricks_scripts/engines/spark/stage.py",
    "databricks_scripts/engines/spark/writes.py",
    "databricks_scripts/failures.py",
    "databricks_scripts/load/commits.py",
    "databricks_scripts/load/driver.py",
    "databricks_scripts/load/engine.py",
    "databricks_scripts/load/history_rules.py",
    "databricks_scripts/load/interrupt.py",
    "databricks_scripts/load/keys.py",
    "databricks_scripts/load/params.py",
    "databricks_scripts/load/plan.py",
    "databricks_scripts/load/sql.py",
    "databricks_scripts/load/types.py",
    "databricks_scripts/redaction.py",
    "databricks_scripts/retry/classifier.py",
    "databricks_scripts/sources/base.py",
    "databricks_scripts/sources/connections.py",
    "databricks_scripts/sources/dbapi.py",
    "databricks_scripts/sources/readers.py",
    "databricks_scripts/sources/types_mssql_oracle.py",
)


def test_the_checked_modules_exist():
    assert [path for path in CHECKED if not (ROOT / path).is_file()] == []


def test_the_typed_modules_check_clean():
    done = subprocess.run(
        [sys.executable, "-m", "mypy", *CHECKED],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
