"""The five DataLoader sensors; each module builds its sensor from Settings."""

import functools
from collections.abc import Callable
from typing import Any

import dagster as dg

from dagsters.alerts import Alert, notifier_from_settings
from dagsters.control.rows import ControlRow
from dagsters.control.uncomputable import UncomputableRow
from dagsters.settings import Settings


def default_status(settings: Settings) -> dg.DefaultSensorStatus:
    """RUNNING when the settings say so (locally by default), else STOPPED for a person to start."""
    if settings.sensors_running:
        return dg.DefaultSensorStatus.RUNNING
    return dg.DefaultSensorStatus.STOPPED


def alert_on_error(settings: Settings, name: str) -> Callable[[Callable], Callable]:
    """Wrap a sensor function: a tick that raises is announced (Slack / Teams), then re-raised so
    Dagster records the failed tick as usual. ``functools.wraps`` keeps the signature Dagster reads
    the resources from."""
    notifier = notifier_from_settings(settings)

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                if notifier.enabled:
                    notifier.send(
                        Alert(
                            title=f"DataLoader: sensor {name} failed",
                            cause=f"{type(exc).__name__}: {exc}",
                        )
                    )
                raise

        return wrapper

    return decorate


def fail_uncomputable_rows(
    context: dg.SensorEvaluationContext, client: Any
) -> list[UncomputableRow]:
    """Every tick's first statement: rows whose values no sensor can compute with are failed
    (named, needs_review), so the rest of the tick never reads them and goes on for the others
    (:mod:`dagsters.control.uncomputable`)."""
    rows = client.fail_uncomputable_rows()
    for row in rows:
        context.log.warning(f"{row.control_key}: {row.last_message}")
    return rows


def fail_row_that_raised(
    context: dg.SensorEvaluationContext,
    client: Any,
    row: ControlRow,
    expected: Any,
    what: str,
    exc: BaseException,
) -> bool:
    """One row made this tick raise while computing ``what``: fail that row, naming the value
    and the error; the caller goes on with the other rows. A control database error is not the
    row's fault: it is raised again (the tick fails, as it would have)."""
    from dagsters.utils.lakebase_client import LakebaseError

    if isinstance(exc, LakebaseError):
        raise exc
    message = f"Failed: {what} of this row could not be computed: {type(exc).__name__}: {exc}"
    context.log.warning(f"{row.control_key}: {message}")
    return client.fail_row(row.config_id, expected, message, metadata_id=row.last_metadata_id)
