"""``landing_table_git_job``: dbt sources and staging models for newly landed tables, in git.

``landing_table_monitor`` batches the rows that loaded successfully but have no staging model yet
(``last_status = 'Succeeded' AND NOT staging_model_processed``) into one run. The op reads each
destination table's real schema (the local Delta table, or Unity Catalog through
``databricks_rest`` when ``DATALOADER_EXECUTION=databricks``), writes the files into the models
repository (a fresh shallow clone of ``DATALOADER_MODELS_URL`` in a temporary directory, or the local
working copy when no URL is set), commits them on ``DATALOADER_MODELS_BRANCH``, pushes (mandatory
with a URL; locally when the working copy has a remote) and only then sets ``staging_model_processed`` for exactly the tables whose files are committed.
Where the repository and the lake are, and the execution mode, come from the ``models_repo``
resource (:class:`dagsters.resources.models_repo.ModelsRepoResource`, built from settings).

A table whose schema cannot be read, or whose source is defined by a person's sources file that
lacks the table (a generated staging model would not compile), is left unprocessed (its
``last_status`` is untouched; the next load tries again) with the reason appended to its
``last_message`` ("Loaded 5 rows | [Landing] ..."); the others proceed, and the run fails at the
end so the problem is seen.
"""

# No ``from __future__ import annotations``: Dagster resolves the op's config annotation at runtime.

from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field

from dagsters.alerts import ALERT_ON_FAILURE_TAGS
from dagsters.control.rows import ControlRow
from dagsters.resources.databricks_rest import DatabricksRestResource, DatabricksSqlError
from dagsters.resources.models_repo import ModelsRepoResource
from dagsters.utils.lakebase_client import LakebaseClient

# The landing package (dbt files, git, schema reading) is imported by the op when it runs: a run
# worker of a load or retry run never needs it (tests/test_run_worker_imports.py).
if TYPE_CHECKING:
    from dagsters.landing.publish import PublishResult
    from dagsters.landing.schema import LandingTable


class LandingTableGitConfig(dg.Config):
    """Which table_control rows to process; an empty list means every unprocessed row."""

    config_ids: list[int] = Field(default_factory=list)


def _read_columns(
    row: ControlRow, models_repo: ModelsRepoResource, databricks_rest: DatabricksRestResource
) -> "LandingTable":
    from dagsters.landing.schema import (
        LandingTable,
        SchemaUnavailable,
        columns_from_uc_rows,
        local_table_path,
        read_delta_columns,
        uc_columns_statement,
    )

    catalog = row.destination_catalog
    schema = row.destination_schema_name
    table = row.destination_table_name
    if models_repo.execution == "databricks":
        try:
            rows = databricks_rest.execute_statement(*uc_columns_statement(catalog, schema, table))
        except DatabricksSqlError as exc:
            raise SchemaUnavailable(str(exc)) from None
        columns = columns_from_uc_rows(rows)
        if not columns:
            raise SchemaUnavailable(
                f"{catalog}.{schema}.{table} not found in Unity Catalog (no columns in "
                "information_schema)"
            )
    else:
        lake_root = Path(models_repo.lake_root)
        columns = read_delta_columns(local_table_path(lake_root, catalog, schema, table))
    return LandingTable(
        config_id=row.config_id,
        control_key=row.control_key,
        load_strategy=row.load_strategy,
        catalog=catalog,
        schema=schema,
        table=table,
        columns=columns,
    )


def _read_tables(
    context: dg.OpExecutionContext, client: LakebaseClient, rows: list[ControlRow]
) -> tuple[list["LandingTable"], dict[str, str]]:
    """The readable tables, and ``control_key -> reason`` for the others (noted on their rows)."""
    from dagsters.landing.schema import SchemaUnavailable

    tables: list[LandingTable] = []
    unreadable: dict[str, str] = {}
    for row in rows:
        try:
            tables.append(
                _read_columns(row, context.resources.models_repo, context.resources.databricks_rest)
            )
        except SchemaUnavailable as exc:
            unreadable[row.control_key] = str(exc)
            context.log.warning(f"{row.control_key}: schema not readable, left unprocessed: {exc}")
            # Operators read table_control, not run logs: leave the reason on the row (status
            # unchanged; the note goes away once the staging model is generated).
            client.note_landing_problem(
                row.config_id, f"staging model not generated, schema not readable: {exc}"
            )
    return tables, unreadable


def _record_publish(
    context: dg.OpExecutionContext,
    client: LakebaseClient,
    tables: list["LandingTable"],
    result: "PublishResult",
) -> tuple[int, dict[str, str]]:
    """Mark the settled rows, note the blocked ones; returns (rows marked, control_key -> why)."""
    # Only rows whose files are in the branch; the others stay for the next tick.
    marked = client.mark_staging_processed(result.settled)
    by_config = {t.config_id: t.control_key for t in tables}
    blocked: dict[str, str] = {}  # readable, but a person's sources file lacks the table
    for config_id, reason in result.blocked.items():
        blocked[by_config[config_id]] = reason
        context.log.warning(f"{by_config[config_id]}: left unprocessed: {reason}")
        client.note_landing_problem(config_id, f"staging model not generated: {reason}")
    for path, reason in result.kept_files.items():
        context.log.info(f"kept {path}: {reason}")
    context.log.info(
        f"commit {result.commit or '(nothing to commit)'} on {result.branch}"
        + (f", pushed to {result.pushed_to}" if result.pushed_to else "")
        + f"; {marked} row(s) marked processed"
    )
    return marked, blocked


def _output(summary: dict, marked: int) -> dg.Output:
    return dg.Output(
        summary,
        metadata={
            "commit": dg.MetadataValue.text(summary["commit"] or "none"),
            "branch": dg.MetadataValue.text(summary["branch"]),
            "repository": dg.MetadataValue.path(summary["repository"]),
            "pushed_to": dg.MetadataValue.text(summary["pushed_to"] or "not pushed (no remote)"),
            "changed_files": dg.MetadataValue.json(summary["changed_files"]),
            "kept_files": dg.MetadataValue.json(summary["kept_files"]),
            "processed_tables": dg.MetadataValue.json(summary["processed"]),
            "rows_marked_processed": dg.MetadataValue.int(marked),
            "unreadable_tables": dg.MetadataValue.json(summary["unreadable"]),
            "blocked_tables": dg.MetadataValue.json(summary["blocked"]),
        },
    )


@dg.op(
    name="landing_table_git_op",
    required_resource_keys={"lakebase", "databricks_rest", "models_repo"},
    out=dg.Out(dict, description="What was published: commit, changed files, processed rows."),
)
def landing_table_git_op(context: dg.OpExecutionContext, config: LandingTableGitConfig):
    from dagsters.landing.publish import publish_landing_tables

    client = context.resources.lakebase.get_client()
    wanted = set(config.config_ids)
    # Re-read the rows: one queued earlier may have been processed by another run since.
    rows = [
        r for r in client.get_unprocessed_landing_tables() if not wanted or r.config_id in wanted
    ]
    missing = sorted(wanted - {r.config_id for r in rows})
    if missing:
        context.log.info(f"config_ids {missing} are already processed or not Succeeded; skipped")

    tables, unreadable = _read_tables(context, client, rows)
    models_repo: ModelsRepoResource = context.resources.models_repo
    result = None
    marked, blocked = 0, {}
    if tables:
        # A URL: a fresh shallow clone, deleted after the push; a failed push raises before any
        # row is marked, and landing_table_monitor launches the batch again on a later tick.
        with models_repo.checkout() as repo:
            result = publish_landing_tables(tables, repo)
        marked, blocked = _record_publish(context, client, tables, result)

    by_id = {t.config_id: t.control_key for t in tables}
    summary = {
        "commit": result.commit if result else None,
        "branch": models_repo.branch,
        "repository": models_repo.location,
        "pushed_to": result.pushed_to if result else None,
        "changed_files": result.changed_files if result else [],
        "kept_files": result.kept_files if result else {},
        "processed": sorted(by_id[i] for i in (result.settled if result else [])),
        "unreadable": unreadable,
        "blocked": blocked,
    }
    yield _output(summary, marked)
    left = {**unreadable, **blocked}
    if left:
        raise dg.Failure(
            description=(
                f"{len(left)} table(s) left unprocessed: "
                + "; ".join(f"{key}: {msg}" for key, msg in sorted(left.items()))
            ),
            metadata={
                "unreadable_tables": dg.MetadataValue.json(unreadable),
                "blocked_tables": dg.MetadataValue.json(blocked),
            },
        )


@dg.job(
    name="landing_table_git_job",
    description="Write dbt sources and staging models for newly loaded tables and commit them.",
    tags=ALERT_ON_FAILURE_TAGS,
)
def landing_table_git_job() -> None:
    landing_table_git_op()
