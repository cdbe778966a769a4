"""The one interface both engines implement: run one load of a ``LoadSpec`` into its destination.

``dataloader_pipe`` picks an engine (``arrow`` locally, ``spark`` on Databricks, or
``DATALOADER_ENGINE``) and calls :meth:`Engine.run`; it never knows which one it holds. Each engine
applies the rules in ``load/`` (``load.plan.plan_load``: the strategy, the full-load reason, the
watermark window, the reconcile decision; ``load.commits``: exactly once; ``load.history_rules``:
deletes and history; ``load.columns``: column control) and writes its own way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from databricks_scripts.load.interrupt import StopSignal
    from databricks_scripts.load.params import LoadSpec
    from databricks_scripts.load.plan import LoadResult


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
