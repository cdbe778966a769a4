"""One load, decided before a row is read, for both engines: the ``LoadPlan``.

``plan_load`` applies the rules of docs/loader.md once: which strategy runs (``full`` when forced,
on a first load, or with no watermark yet; the history strategies never overwrite), why a load runs
full, whether the destination is (re)built from the source's schema, whether the read starts from
the stored watermark (and its look-back lower bound), and whether the load first reconciles with an
unrecorded commit. Each engine reads what it needs from the plan and writes its own way.

Also here: the one way a failing step is named (:func:`step`, :class:`LoadStepError`) and what a
load reports (:class:`LoadResult`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from databricks_scripts.contract import full_load_reason
from databricks_scripts.failures import BadConfig, DataLoaderFailure
from databricks_scripts.load.commits import StaleAttempt, UnrecordedCommit
from databricks_scripts.load.history_rules import history_strategy
from databricks_scripts.load.interrupt import StopRequested
from databricks_scripts.load.params import LoadSpec
from databricks_scripts.load.watermark import Watermark, lookback_lower_bound

if TYPE_CHECKING:
    from databricks_scripts.load.interrupt import StopSignal


class LoadStepError(DataLoaderFailure, RuntimeError):
    """A load failed; ``step`` says where (probe source, read source, write destination, ...).

    Its kind is its cause's (``failures.failure_kind``): None around a foreign error."""

    kind = None

    def __init__(self, step: str, message: str):
        super().__init__(message)
        self.step = step


@contextmanager
def step(name: str | list[str], stop: StopSignal | None = None) -> Iterator[None]:
    """Report a failure inside the block as step ``name``; our own stop, fence and step errors
    pass unchanged. The one way either engine names the step a load failed at. ``name`` may be
    a one-item list whose item the block changes as it goes (``engines.spark``'s ``where``).

    ``stop``: a failure after a stop was asked for is the stop (a cancelled Spark job fails the
    statement it ran): :class:`StopRequested`, saying what the stop cleaned up."""
    try:
        yield
    except (LoadStepError, StaleAttempt, StopRequested):
        raise
    except Exception as exc:
        if stop is not None and stop.requested.is_set():
            raise StopRequested(stop.finish_stop()) from None
        named = name if isinstance(name, str) else name[0]
        raise LoadStepError(named, f"{type(exc).__name__}: {exc}") from exc


def lazy_step(name: str, fn: Callable[[], Any]) -> Callable[[], Any]:
    """``fn`` whose failure is reported as step ``name`` (it runs lazily, inside another step)."""

    def wrapped():
        with step(name):
            return fn()

    return wrapped


@dataclass(frozen=True)
class Column:
    """A destination column as the load reports it (``dagster/column_schema``): ``type`` as the
    engine names it (Arrow: ``str(pa.DataType)``; Spark: its ``simpleString``)."""

    name: str
    type: str
    nullable: bool = True


@dataclass
class LoadResult:
    rows_read: int
    rows_written: int
    watermark_before: str | None
    watermark_after: str | None
    applied_strategy: str
    destination: str
    schema: tuple[Column, ...]  # the destination's columns
    row_count: int | None
    committed: bool
    notes: list[str] = field(default_factory=list)
    # Set when nothing was loaded because an earlier attempt's commit had not been recorded.
    reconciled: UnrecordedCommit | None = None
    # The destination's row count at the version the write started from (0: it did not exist;
    # None: unknown), and why the load ran full (None: it did not).
    destination_rows_before: int | None = None
    full_reason: str | None = None
    # The reconciliation check (engines.arrow.verify); None: verify_depth none, or nothing committed.
    verification: Any = None
    comments: tuple[str | None, dict[str, str]] = (None, {})  # (table comment, {column: comment})


def full_reason(spec: LoadSpec, destination_exists: bool) -> str | None:
    """Why this load runs full (``contract.FULL_REASONS``), or None.

    None too for a table that keeps history (scd2, soft deletes): it is never overwritten.
    """
    if history_strategy(spec, destination_exists) is not None:
        return None
    if destination_exists and spec.rebuild_reason:
        return spec.rebuild_reason
    return full_load_reason(
        force_full_reload=spec.force_full_reload,
        destination_exists=destination_exists,
        load_strategy=spec.load_strategy,
        incremental_column=spec.incremental_column,
        incremental_value=spec.incremental_value,
    )


def choose_strategy(spec: LoadSpec, destination_exists: bool) -> str:
    """The strategy actually applied: full when forced, first load, or no watermark yet."""
    kept = history_strategy(spec, destination_exists)  # scd2 / soft deletes never overwrite
    if kept is not None:
        return kept
    return "full" if full_reason(spec, destination_exists) else spec.load_strategy


@dataclass(frozen=True)
class LoadPlan:
    """What one load does, decided from the row and whether the destination exists."""

    spec: LoadSpec
    destination_exists: bool
    applied: str
    full_reason: str | None
    # The destination is (re)created from the source's schema: a first load or a forced reload.
    rebuild: bool
    # The read starts from the stored watermark (less the look-back window).
    from_watermark: bool
    watermark: Watermark | None = None
    lower: Watermark | None = None

    @property
    def reconciles(self) -> bool:
        """Before reading, an attempt that committed without being recorded is reported instead
        (``load.commits.is_unrecorded``); a full load never reconciles."""
        return self.applied != "full"

    def window(self, decode: Callable[[str], Watermark]) -> LoadPlan:
        """The plan with the watermark decoded (``decode``: the stored text as the cursor's type)
        and its look-back lower bound; unchanged when the read does not start from it."""
        if not self.from_watermark or self.spec.incremental_value is None:
            return self
        with step("decode watermark"):
            watermark = decode(self.spec.incremental_value)
            lower = lookback_lower_bound(watermark, self.spec.lookback_window_seconds)
        return replace(self, watermark=watermark, lower=lower)


def plan_load(spec: LoadSpec, destination_exists: bool) -> LoadPlan:
    """The plan of one load of ``spec`` (docs/loader.md, "Strategies")."""
    applied = choose_strategy(spec, destination_exists)
    # A forced reload of an scd2 / soft-delete table (never overwritten) reads everything.
    reads_all = applied == "full" or spec.force_full_reload or spec.incremental_value is None
    return LoadPlan(
        spec=spec,
        destination_exists=destination_exists,
        applied=applied,
        full_reason=full_reason(spec, destination_exists),
        rebuild=applied == "full" and (not destination_exists or spec.force_full_reload),
        from_watermark=bool(spec.incremental_column) and not reads_all,
    )


def check_source_columns(
    spec: LoadSpec, names: Sequence[str], *, case_sensitive: bool = True
) -> None:
    """Refuse a row whose incremental column or merge keys are not columns of the source (Spark
    resolves names case-insensitively, so it checks them that way)."""
    fold = (lambda n: n) if case_sensitive else str.lower
    present = {fold(n) for n in names}
    roles = [(spec.incremental_column, "incremental_column")]
    roles += [(k, "merge key") for k in spec.merge_keys]
    for column, role in roles:
        if column is not None and fold(column) not in present:
            raise BadConfig(f"{role} {column!r} is not a column of the source table")
