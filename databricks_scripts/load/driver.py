"""One load, step by step, for both engines: :func:`run_load` drives an engine's session.

The sequence and its step names (docs/loader.md, "One load, step by step"):

1. ``probe source``: the source's columns; the incremental column and merge keys must be among
   them, and the cursor's type must be ordered (:func:`check_source`).
2. ``open destination``: whether it exists; a rebuild when its last commit recorded other
   column-control lists (:func:`column_control_rebuild`); the plan (``load.plan.plan_load``) and
   the destination's newest commit of this row (the fence starts from it).
3. ``decode watermark``: the stored watermark as the cursor's type, and its look-back bound.
4. ``reconcile with the destination``: an earlier attempt that committed without being recorded
   is reported instead of loading again (``load.commits.is_unrecorded``).
5. ``reconcile schema``: the session evolves the destination under ``schema_change``.
6. ``read source``: the session opens the read of the rows the plan selects.
7. ``write destination``: the destination's row count before, then the session's write per the
   applied strategy (fenced, gated by the stop signal; it may name finer steps itself).
8. ``read commit metrics``: the row count after, the new watermark, the destination's columns.

A failure is a ``LoadStepError`` naming its step; a stop (SIGINT/SIGTERM, a cancelled run) is a
``StopRequested`` saying what was cleaned up; a newer attempt's commit is a ``StaleAttempt``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from databricks_scripts.contract import FULL_REASON_COLUMN_CONTROL
from databricks_scripts.failures import BadConfig
from databricks_scripts.load.columns import changed_column_control, recorded_column_control
from databricks_scripts.load.commits import is_unrecorded
from databricks_scripts.load.engine import Load, LoadSession, SourceColumns
from databricks_scripts.load.history_rules import history_strategy
from databricks_scripts.load.interrupt import StopRequested, StopSignal
from databricks_scripts.load.params import LoadSpec
from databricks_scripts.load.plan import LoadResult, check_source_columns, plan_load, step
from databricks_scripts.load.types import is_numeric_text
from databricks_scripts.load.watermark import cursor_type_problem


def check_source(spec: LoadSpec, columns: SourceColumns) -> bool:
    """Refuse a row whose incremental column or merge keys are not source columns, or whose
    cursor's type has no order that finds new rows; True for a NUMERIC cursor kept as exact
    text (compared as a number, ``load.types.is_numeric_text``)."""
    check_source_columns(spec, columns.names, case_sensitive=columns.case_sensitive)
    cursor = spec.incremental_column
    if not cursor or columns.cursor is None:
        return False
    problem = cursor_type_problem(columns.cursor)
    if problem:
        raise BadConfig(f"incremental_column {cursor!r} cannot be a cursor: {problem}")
    return is_numeric_text(columns.cursor)


def column_control_rebuild(
    spec: LoadSpec, commits: Iterable[Mapping[str, Any]], log: Callable[[str], None]
) -> tuple[LoadSpec, str | None]:
    """(spec, note): a rebuild when the destination's newest DataLoader commit recorded other
    ``columns_exclude`` / ``columns_hash`` lists (or another hash key); the note says what
    changed (None: nothing did)."""
    recorded = recorded_column_control(dict(c) for c in commits if isinstance(c, Mapping))
    changed = changed_column_control(spec, recorded)
    if changed is None:
        return spec, None
    note = f"rebuilt because the column control changed ({changed})"
    if history_strategy(spec, True) is not None:
        note += (
            "; a table that keeps history is re-read in full and merged, so its earlier "
            "versions keep their values"
        )
    log(note)
    rebuilt = dataclasses.replace(
        spec, force_full_reload=True, rebuild_reason=FULL_REASON_COLUMN_CONTROL
    )
    return rebuilt, note


def run_load(
    session: LoadSession,
    spec: LoadSpec,
    *,
    log: Callable[[str], None],
    stop: StopSignal | None = None,
) -> LoadResult:
    """One load of ``spec`` through ``session`` (module docstring)."""
    load = Load(spec, log, stop)
    try:
        return _run(session, load)
    except StopRequested:
        raise StopRequested(stop.finish_stop() if stop else "stopped") from None


def _run(session: LoadSession, load: Load) -> LoadResult:
    stop = load.stop
    with step("probe source", stop):
        load.numeric_text = check_source(load.spec, session.probe(load))
    with step("open destination", stop):
        _open(session, load)
    load.plan = load.plan.window(lambda text: session.decode(load, text))
    if load.plan.reconciles:
        with step("reconcile with the destination", stop):
            reconciled = _reconciled(session, load)
        if reconciled is not None:
            return reconciled
    with step("reconcile schema", stop):
        load.notes.extend(session.evolve_schema(load))
    with step("read source", stop):
        load.notes.extend(session.read(load))
    if stop is not None:
        session.on_stop(stop)
    with step("write destination", stop):
        rows_before = session.row_count()
        written = session.write(load)
    with step("read commit metrics", stop):
        result = LoadResult(
            rows_read=written.rows_read,
            rows_written=written.rows_written,
            watermark_before=load.spec.incremental_value,
            watermark_after=session.watermark_after(load, written),
            applied_strategy=load.plan.applied,
            destination=session.destination,
            schema=session.schema(),
            row_count=session.row_count(),
            committed=written.committed,
            notes=list(load.notes),
            destination_rows_before=rows_before,
            full_reason=load.plan.full_reason,
        )
        return session.finish(load, result)


def _open(session: LoadSession, load: Load) -> None:
    """Open the destination: column control, the plan, the commit the fence starts from."""
    if session.open(load):
        load.spec, note = column_control_rebuild(load.spec, session.recorded_commits(), load.log)
        if note:
            load.notes.append(note)
    exists = session.settle(load)
    load.plan = plan_load(load.spec, exists)
    load.at_start = session.last_commit(load) if exists else None


def _reconciled(session: LoadSession, load: Load) -> LoadResult | None:
    """The result to report when an earlier attempt's complete load was never recorded."""
    found = load.at_start
    if found is None or not is_unrecorded(load.spec, found.metadata_id):
        return None
    if not found.complete:  # it died between the commits of a chunked upsert
        load.log(
            f"attempt {found.metadata_id} stopped between the commits of its upsert "
            f"(destination version {found.version}); this load upserts the rows again"
        )
        return None
    watermark = session.destination_watermark(load)
    load.log(
        f"attempt {found.metadata_id} committed destination version {found.version} "
        f"but its success was never recorded; recording it (watermark {watermark!r}) instead of "
        "loading again"
    )
    return LoadResult(
        rows_read=0,
        rows_written=0,
        watermark_before=load.spec.incremental_value,
        watermark_after=watermark,
        applied_strategy=load.plan.applied,
        destination=session.destination,
        schema=session.schema(),
        row_count=session.row_count(),
        committed=False,
        reconciled=found,
    )
