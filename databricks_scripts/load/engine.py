"""The interface of both engines: what ``dataloader_pipe`` calls, and what each engine supplies.

``dataloader_pipe`` picks an engine (``arrow`` locally, ``spark`` on Databricks, or
``DATALOADER_ENGINE``) and calls :meth:`Engine.run`; it never knows which one it holds. Each
engine's ``run`` opens its session (the Arrow engine: the source reader and the local lake; the
Spark engine: the Spark session, its job tag and staging tables) and hands it to
``load.driver.run_load``, which runs the one load sequence and names its steps (docs/loader.md,
"One load, step by step"). A session is a :class:`LoadSession`: it answers the driver's questions
(the source's columns, the destination's newest commit, its row count) and does what only it can
(evolve the destination's schema, write per strategy); every rule between those calls is the
driver's, written once in ``load/``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import pyarrow as pa

    from databricks_scripts.load.commits import UnrecordedCommit
    from databricks_scripts.load.interrupt import StopSignal
    from databricks_scripts.load.params import LoadSpec
    from databricks_scripts.load.plan import Column, LoadPlan, LoadResult
    from databricks_scripts.load.watermark import Watermark


class Engine(Protocol):
    """An engine: ``name`` is what the load reports (``arrow`` | ``spark``)."""

    @property
    def name(self) -> str: ...

    def run(
        self,
        spec: LoadSpec,
        password: str | None,
        *,
        log: Callable[[str], None],
        progress_interval: float,
        stop: StopSignal | None,
        hash_key: bytes | None,
    ) -> LoadResult:
        """One load: at most the commits the plan allows, a :class:`~load.plan.LoadResult`, or a
        ``LoadStepError`` naming the step that failed (nothing committed, no watermark moved)."""
        ...


@dataclass(frozen=True)
class SourceColumns:
    """The source's columns as the load will read them (column control applied): their names,
    and the incremental column's type as an Arrow field (None: no incremental column).
    ``case_sensitive``: whether the engine resolves column names by case (Spark does not)."""

    names: tuple[str, ...]
    cursor: pa.Field | None = None
    case_sensitive: bool = True


@dataclass
class Load:
    """One load as the driver knows it, handed to every session call.

    ``plan`` is set once the destination is open; ``numeric_text`` once the source is probed (a
    NUMERIC cursor kept as exact text, ``load.types.is_numeric_text``); ``at_start`` is the
    destination's newest DataLoader commit when the load began (the fence compares with it)."""

    spec: LoadSpec
    log: Callable[[str], None]
    stop: StopSignal | None = None
    plan: LoadPlan = None  # type: ignore[assignment]  # set by the driver before it is read
    numeric_text: bool = False
    at_start: UnrecordedCommit | None = None
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Written:
    """What a write did: rows read from the source, rows written, whether it committed."""

    rows_read: int
    rows_written: int
    committed: bool


class LoadSession(Protocol):
    """What an engine supplies to ``load.driver.run_load``, in the order the driver calls it.

    Every call runs inside the driver's step; a session may name a finer step itself by raising
    ``LoadStepError`` (``load.plan.step``)."""

    @property
    def destination(self) -> str:
        """The destination as the load reports it (a path, a Unity Catalog name)."""
        ...

    def probe(self, load: Load) -> SourceColumns:
        """Step ``probe source``: the source's columns (no row is read)."""
        ...

    def open(self, load: Load) -> bool:
        """Step ``open destination``: whether the destination exists."""
        ...

    def recorded_commits(self) -> Iterable[Mapping[str, Any]]:
        """The destination's newest commits' DataLoader properties, newest first (the column
        control recorded there: ``load.columns.recorded_column_control``)."""
        ...

    def settle(self, load: Load) -> bool:
        """Whether the destination still exists for ``load.spec`` (the spec after column control):
        the Arrow engine archives a history table whose types changed under a forced reload."""
        ...

    def last_commit(self, load: Load) -> UnrecordedCommit | None:
        """The destination's newest commit made by an attempt of this row (``metadata_id``; its
        ``version`` and ``complete`` marks where the engine knows them), None: none."""
        ...

    def decode(self, load: Load, text: str) -> Watermark:
        """The stored watermark text as a value of the cursor's type."""
        ...

    def destination_watermark(self, load: Load) -> str | None:
        """max(cursor) of the destination as the watermark to record (the stored text when
        nothing is newer): what an unrecorded commit moved it to."""
        ...

    def evolve_schema(self, load: Load) -> list[str]:
        """Step ``reconcile schema``: reconcile the source's and the destination's columns under
        the row's ``schema_change``; returns notes for the load's message."""
        ...

    def read(self, load: Load) -> list[str]:
        """Step ``read source``: open the read of the rows the plan selects; returns notes."""
        ...

    def on_stop(self, stop: StopSignal) -> None:
        """Tell ``stop`` how to clean up this attempt's uncommitted files and say how far it got."""
        ...

    def row_count(self) -> int | None:
        """The destination's row count now (0: no destination; None: unknown)."""
        ...

    def write(self, load: Load) -> Written:
        """Step ``write destination``: write per the applied strategy, fenced (a newer attempt's
        commit raises ``StaleAttempt``) and gated by the stop signal."""
        ...

    def watermark_after(self, load: Load, written: Written) -> str | None:
        """The watermark to record after the commit (the stored text when nothing is newer)."""
        ...

    def schema(self) -> tuple[Column, ...]:
        """The destination's columns, as the engine names their types."""
        ...

    def finish(self, load: Load, result: LoadResult) -> LoadResult:
        """``result`` with what only the engine adds (source comments, a verification)."""
        ...
