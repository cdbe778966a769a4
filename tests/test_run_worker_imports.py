"""A run worker (and the code server) imports the code location without the heavy packages only a
load script, the Databricks backend, the retry model or local start-up needs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Imported where they are used (the Pipes scripts, the Databricks runner, the landing job's
# warehouse query, the retry script), never when Dagster loads the definitions.
NOT_AT_LOAD = (
    "pyarrow",
    "deltalake",
    "adbc_driver_postgresql",
    "databricks.sdk",
    "dagster_databricks",
    "openai",
    "pgserver",
    "pyspark",
)


def test_loading_the_code_location_leaves_the_heavy_packages_unimported(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAKEBASE_", "DAGSTER_"))}
    env["DATALOADER_HOME"] = str(tmp_path)
    code = (
        "import sys, dagsters.definitions as d; d.defs.get_repository_def();"
        f"print(sorted(m for m in {NOT_AT_LOAD!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stderr[-2000:]
