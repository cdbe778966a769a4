"""The run's console logger: one line per event in the terminal, the full story in the run's logs.

Dagster's default console logger writes every event with its error and whole stack trace to the
run worker's stderr, which under ``dagster dev`` is the terminal: each failed load scrolled a page
of trace past a person watching ``make dev``. This logger writes the same events, each as one line;
for an event with an error, that line ends with the error's own first line (the load's message:
which table, which step, why) and says where the rest is. The event log (the run's page in the UI)
keeps the error with its stack trace, unchanged: it is written by the instance, not by a logger.
"""

from __future__ import annotations

import logging
from typing import Any

import coloredlogs
import dagster as dg

# The attribute Dagster keeps a record's event in (internal: through the one compat module).
from dagsters.dagster_compat import LOG_RECORD_METADATA_ATTR

FORMAT = "%(asctime)s - %(levelname)s - %(message)s"
WHERE = "stack trace in the run's logs"


def _first_line(text: str | None) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[0] if lines else ""


def _innermost(error: Any) -> Any:
    """The last cause in an error chain: the load's own error, not Dagster's wrapper."""
    while getattr(error, "cause", None) is not None:
        error = error.cause
    return error


class OneLineFormatter(coloredlogs.ColoredFormatter):
    """Each record as one line; an event's error as its first line only."""

    def format(self, record: logging.LogRecord) -> str:
        meta = getattr(record, LOG_RECORD_METADATA_ATTR, None) or {}
        event = meta.get("dagster_event") if isinstance(meta, dict) else None
        data = getattr(event, "event_specific_data", None)
        error = getattr(data, "error", None)
        text = record.getMessage()
        head = text.split("\n\n", 1)[0] if error is not None else text
        line = " ".join(head.split())  # any line breaks of a logged message: one line
        if error is not None:
            cause = _first_line(getattr(_innermost(error), "message", None))
            line = f"{line}: {cause} ({WHERE})" if cause else f"{line} ({WHERE})"
        flat = logging.makeLogRecord({**record.__dict__, "msg": line, "args": None})
        flat.exc_info = flat.exc_text = flat.stack_info = None
        return super().format(flat)


@dg.logger(
    description="One line per event in the terminal; errors' stack traces stay in the run's logs."
)
def one_line_console_logger(_init_context: dg.InitLoggerContext) -> logging.Logger:
    logger = logging.getLogger("dataloader.console")
    logger.setLevel(logging.INFO)
    logger.propagate = False  # this logger prints; the root logger must not print it again
    if not logger.handlers:  # one handler however many runs this process executes
        handler = logging.StreamHandler()
        handler.setFormatter(OneLineFormatter(fmt=FORMAT))
        logger.addHandler(handler)
    return logger
