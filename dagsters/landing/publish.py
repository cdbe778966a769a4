"""The whole landing step: plan the dbt files, write them, commit, push; say which tables settled.

Plain module (no Dagster): ``landing_table_git_job`` calls :func:`publish_landing_tables` with the
tables it could read and a :class:`~dagsters.landing.git_repo.ModelsRepo`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from dagsters.landing.dbt_files import commit_message, plan_model_files, write_plan
from dagsters.landing.git_repo import ModelsRepo
from dagsters.landing.schema import LandingTable


@dataclass
class PublishResult:
    """What one publish did; ``settled`` are the config_ids whose files are now in the branch."""

    commit: str | None
    changed_files: list[str]
    kept_files: dict[str, str]
    settled: list[int]
    pushed_to: str | None
    branch: str
    blocked: dict[int, str] = field(default_factory=dict)  # config_id -> why left unprocessed


def publish_landing_tables(tables: Sequence[LandingTable], repo: ModelsRepo) -> PublishResult:
    """Write and commit the dbt files for ``tables``; push when the repository has a remote.

    A table is settled when each of its files is committed at HEAD with exactly the generated
    content, or is a person's file (which then stands in for the generated one).
    """
    with repo.locked():
        repo.ensure()
        plan = plan_model_files(tables, repo.path)
        changed = write_plan(plan, repo.path)
        planned = [t for t in tables if t.config_id in plan.files_by_table]
        changed_tables = [
            t for t in planned if set(plan.files_by_table[t.config_id]) & set(plan.writes)
        ]
        # Unchanged generated files are added too: an earlier run may have written them and
        # failed before its commit.
        to_commit = sorted(set(changed) | set(plan.unchanged))
        commit = repo.commit(to_commit, commit_message(changed_tables or planned))
        pushed_to = repo.push()
        settled = [
            t.config_id
            for t in planned
            if repo.tracked_and_clean(
                [p for p in plan.files_by_table[t.config_id] if p not in plan.kept]
            )
            or all(p in plan.kept for p in plan.files_by_table[t.config_id])
        ]
    return PublishResult(
        commit=commit,
        changed_files=changed if commit else [],
        kept_files=dict(plan.kept),
        settled=settled,
        pushed_to=pushed_to,
        branch=repo.branch,
        blocked=dict(plan.blocked),
    )
