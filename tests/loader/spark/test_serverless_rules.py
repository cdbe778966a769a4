"""What serverless compute and standard access mode forbid, kept out of the Pipes scripts.

Both give the script a Spark Connect session: no RDD API, no ``sparkContext`` (so no job groups or
local properties), and on serverless no ``localCheckpoint``, no caching and only a short list of
Spark confs a job may set. The scan reads every module of ``databricks_scripts/`` (the code that
runs on Databricks) as Python syntax, so a forbidden call cannot hide in a comment or a string;
tests/loader/spark/test_spark_connect.py executes the engine's Connect paths on a local Spark Connect server.

The list of settable confs is Databricks' documentation for serverless notebooks and jobs
("Configure Spark properties for serverless"), reviewed, not executed: no serverless here. The
MERGE's per-statement confs are set on classic compute only (``commit_named``); on serverless the
MERGE is named by a marker commit instead: tests/loader/spark/test_spark_serverless_merge_sail.py runs that path
on Sail behind a session that refuses every conf this list does not hold, and
tests/loader/arrow/test_exactly_once_commits.py shows that no write of the serverless path sets one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[3] / "databricks_scripts"

FORBIDDEN = {
    "rdd": "the RDD API (none on Spark Connect)",
    "parallelize": "the RDD API",
    "mapPartitions": "the RDD API",
    "foreachPartition": "the RDD API",
    "localCheckpoint": "checkpoints (not on serverless)",
    "checkpoint": "checkpoints (not on serverless)",
    "cache": "caching (not on serverless)",
    "persist": "caching (not on serverless)",
    "setJobGroup": "job groups (Databricks' own on classic compute; none on Spark Connect)",
    "cancelJobGroup": "job groups",
    "setLocalProperty": "SparkContext local properties (none on Spark Connect)",
    "_jsc": "the JVM behind a classic session (none on Spark Connect)",
    "_jvm": "the JVM behind a classic session",
    "_jdf": "the JVM behind a classic session",
    "_jsparkSession": "the JVM behind a classic session",
}
# Where ``sparkContext`` may be touched: job tags on a classic session, where it is tried (on Spark
# Connect it raises, and the session's own tags are used).
SPARK_CONTEXT_ALLOWED = {("engines/spark/commits.py", "tag_jobs")}
# The one place a conf serverless does not list is set: the MERGE's per-statement confs, on
# classic compute only (engines.spark.writes.run_write without ``marker``; serverless runs the
# MERGE with ``marker``, from ScriptEnv.on_serverless).
CLASSIC_ONLY_CONF_SETS = {("engines/spark/commits.py", "commit_named")}
# Spark confs a serverless job may set (Databricks' documentation, reviewed).
SERVERLESS_SETTABLE = {
    "spark.sql.legacy.timeParserPolicy",
    "spark.sql.session.timeZone",
    "spark.sql.shuffle.partitions",
    "spark.sql.ansi.enabled",
    "spark.sql.files.maxPartitionBytes",
    "spark.databricks.execution.timeout",
}


def _modules() -> list[tuple[str, ast.Module]]:
    found = [
        (p.relative_to(SCRIPTS).as_posix(), ast.parse(p.read_text(), str(p)))
        for p in sorted(SCRIPTS.rglob("*.py"))
    ]
    assert len(found) > 20  # the scan sees the scripts
    return found


def _functions(tree: ast.Module) -> dict[ast.AST, str]:
    """Each node -> the name of the outermost function it is in ('' at module level)."""
    owner: dict[ast.AST, str] = {}
    for top in tree.body:
        name = top.name if isinstance(top, ast.FunctionDef | ast.AsyncFunctionDef) else ""
        for node in ast.walk(top):
            owner[node] = name
    return owner


def test_no_rdd_checkpoint_cache_job_group_or_jvm_in_the_scripts():
    used = []
    for name, tree in _modules():
        owner = _functions(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute):
                continue
            if node.attr in FORBIDDEN:
                used.append(f"{name}:{node.lineno} .{node.attr}: {FORBIDDEN[node.attr]}")
            if node.attr == "sparkContext" and (name, owner[node]) not in SPARK_CONTEXT_ALLOWED:
                used.append(f"{name}:{node.lineno} .sparkContext outside tag_jobs")
    assert used == []


def _constants(tree: ast.Module) -> dict[str, str]:
    values = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            for target in node.targets:
                if isinstance(target, ast.Name) and isinstance(node.value.value, str):
                    values[target.id] = node.value.value
    return values


def _conf_sets() -> list[tuple[str, int, str | None, str]]:
    """(module, line, key, function) of every ``<x>.conf.set(key, ...)`` and ``SET key`` statement
    text."""
    found = []
    for name, tree in _modules():
        constants = _constants(tree)
        owner = _functions(tree)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "set"
                and isinstance(node.func.value, ast.Attribute)
                and node.func.value.attr == "conf"
            ):
                key = node.args[0] if node.args else None
                if isinstance(key, ast.Constant):
                    found.append((name, node.lineno, key.value, owner[node]))
                elif isinstance(key, ast.Name):
                    found.append((name, node.lineno, constants.get(key.id), owner[node]))
                else:
                    found.append((name, node.lineno, None, owner[node]))  # computed: refused
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value.lstrip()
                if text.upper().startswith("SET SPARK."):
                    found.append((name, node.lineno, text[4:].split("=")[0].strip(), owner[node]))
    return found


def test_the_scan_finds_conf_sets():
    keys = {key for _, _, key, _ in _conf_sets()}
    assert "spark.sql.session.timeZone" in keys  # run_spark_load's: allowed
    # commit_named's loop over the MERGE's confs (a computed key): classic compute only
    assert ("engines/spark/commits.py", "commit_named") in {(m, f) for m, _, _, f in _conf_sets()}


def test_the_scripts_set_only_the_spark_confs_serverless_allows():
    """Outside the classic-only MERGE confs, only confs serverless lists are set anywhere."""
    refused = [
        f"{name}:{line} {key!r} in {function}"
        for name, line, key, function in _conf_sets()
        if key not in SERVERLESS_SETTABLE and (name, function) not in CLASSIC_ONLY_CONF_SETS
    ]
    assert refused == []


def test_the_serverless_engine_runs_its_merge_with_a_marker():
    """The Spark engine on serverless (``DATABRICKS_RUNTIME_VERSION=client.<n>``) asks for the
    marker path, which never enters commit_named; classic compute keeps the MERGE's confs."""
    from databricks_scripts.engines.spark import run
    from databricks_scripts.script_env import ScriptEnv

    asked = []

    def load(*args, **kwargs):
        asked.append(kwargs["merge_marker"])

    for runtime in ("client.2", "15.4"):
        env = ScriptEnv.from_environ({"DATABRICKS_RUNTIME_VERSION": runtime})
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(run, "run_spark_load", load)
            run.SparkEngine(env).run(
                None, None, log=print, progress_interval=1.0, stop=None, hash_key=None
            )
    assert asked == [True, False]
