"""Landing notes: which loaded tables still need a staging model, and the operator's note why.

The SQL behind the landing_table_monitor and the landing-table job. These writes change no
status: they only touch Succeeded rows waiting for their staging model.
"""

from __future__ import annotations

from collections.abc import Sequence

from dagsters.control.connection import ControlDatabase
from dagsters.control.rows import ControlRow, fetch_all

# Put between a load's own message and a note from the landing-table job in last_message.
LANDING_NOTE_SEPARATOR = " | [Landing] "


class LandingSql(ControlDatabase):
    """Rows waiting for a staging model; mark them processed or note why they are not."""

    def get_unprocessed_landing_tables(self) -> list[ControlRow]:
        """Succeeded rows whose staging model has not been generated yet (spec query)."""
        with self._transaction("get_unprocessed_landing_tables") as conn:
            return fetch_all(
                conn,
                ControlRow,
                "SELECT * FROM table_control WHERE last_status = 'Succeeded'"
                " AND NOT staging_model_processed ORDER BY config_id",
            )

    def mark_staging_processed(self, config_ids: Sequence[int]) -> int:
        """Staging model generated for these rows; clears a landing note left earlier."""
        if not config_ids:
            return 0
        with self._transaction("mark_staging_processed") as conn:
            return conn.execute(
                "UPDATE table_control SET staging_model_processed = true,"
                " last_message = CASE WHEN starts_with(last_message, %(bare)s) THEN NULL"
                "   WHEN strpos(last_message, %(marker)s) > 0"
                "   THEN split_part(last_message, %(marker)s, 1)"
                "   ELSE last_message END"
                " WHERE config_id = ANY(%(ids)s) AND NOT staging_model_processed",
                {
                    "ids": list(config_ids),
                    "marker": LANDING_NOTE_SEPARATOR,
                    "bare": LANDING_NOTE_SEPARATOR.lstrip(" |"),
                },
            ).rowcount

    def note_landing_problem(self, config_id: int, message: str) -> bool:
        """Tell operators why a loaded table got no staging model yet, in ``last_message``.

        Guarded like a status change but it changes no status: only a Succeeded row still
        waiting for its staging model is touched, and the load's own message is kept in front
        (``Loaded 5 rows | [Landing] ...``); a later note replaces an earlier one instead of
        piling up. True if the row was in that state.
        """
        note = self.redact(message)
        with self._transaction("note_landing_problem") as conn:
            return (
                conn.execute(
                    "UPDATE table_control SET last_message ="
                    " CASE WHEN coalesce(last_message, '') = '' OR"
                    "   starts_with(last_message, %(bare)s) THEN %(bare)s || %(note)s"
                    " ELSE split_part(last_message, %(marker)s, 1) || %(marker)s || %(note)s END"
                    " WHERE config_id = %(config_id)s AND last_status = 'Succeeded'"
                    " AND NOT staging_model_processed",
                    {
                        "config_id": config_id,
                        "note": note,
                        "marker": LANDING_NOTE_SEPARATOR,
                        "bare": LANDING_NOTE_SEPARATOR.lstrip(" |"),
                    },
                ).rowcount
                > 0
            )
