"""Every message of a load says when a full reload was forced, and who asked for it.

Two can ask: the row (``force_full_reload`` set with SQL, also while the row is already Queued:
the load reads the row when it starts) and the run config (a person's one-off reload from the
launchpad). The success message, the failure message and the run's log all name them; a table
that keeps history (scd2, soft deletes) is re-read in full and merged, never overwritten, and the
message says that too.
"""

from __future__ import annotations

from typing import Any

from dagsters.assets.launch_config import LoadConfig
from dagsters.control.rows import ControlRow


def loaded_message(
    rows_written: Any, notes: Any, forced: str | None = None, applied: Any = None
) -> str | None:
    """The success message with the forced reload and the script's notes (None: the default
    "Loaded N rows")."""
    parts = [str(p) for p in (forced_note(forced, applied), notes) if p]
    if not parts:
        return None
    return f"Loaded {rows_written if rows_written is not None else '?'} rows; " + "; ".join(parts)


# Who can force a full reload, as the messages name them.
FORCED_BY_ROW = "the row's force_full_reload flag"
FORCED_BY_RUN_CONFIG = "the run config (force_full_reload: true)"


def forced_by(row: ControlRow, config: LoadConfig) -> str | None:
    """Who asked this load to reload in full, in words, or None."""
    who = [FORCED_BY_ROW] if row.force_full_reload else []
    if config.force_full_reload:
        who.append(FORCED_BY_RUN_CONFIG)
    return " and ".join(who) or None


def forced_note(forced: str | None, applied: Any) -> str | None:
    if not forced:
        return None
    if applied in (None, "full"):
        return f"full reload forced by {forced}"
    # scd2 / soft-delete tables are never overwritten (engines.arrow.history.history_strategy).
    return (
        f"full reload forced by {forced}: the whole source was re-read and merged ({applied} "
        "load; a table that keeps history is never overwritten)"
    )
