"""Deletes and history on the Arrow engine: which writer runs, and when a history table is kept.

A table with ``delete_detection`` (soft/hard) or ``load_strategy = 'scd2'`` is written by
``engines.arrow.deletes`` or ``engines.arrow.scd2`` instead of the plain writers of ``engines.arrow.engine``; each load is
still ONE Delta commit, named and fenced like every other (``engines.arrow.commits``). The rules are in
docs/loader.md ("Deletes and history"). This module does not import ``engines.arrow.engine``: the writer
hooks (fencing, stream errors, step names) are handed in; what both writers share is in
``load.history_rules``, so neither writer imports this module: no import cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa

from databricks_scripts.engines.arrow.deletes import write_first_soft, write_with_deletes
from databricks_scripts.engines.arrow.scd2 import write_scd2
from databricks_scripts.load.history_rules import (
    WriterHooks,
    load_time,
    plain_type,
)
from databricks_scripts.load.params import LoadSpec
from databricks_scripts.load.types import (
    IncompatibleSchemaError,
    arrow_schema_of,
    delta_schema_for,
    plan_schema,
)


def history_writer(load: Any, hooks: WriterHooks) -> Callable | None:
    """The writer for ``load`` when deletes or history apply, else None."""
    spec = load.spec
    if spec.load_strategy == "scd2":
        return partial(write_scd2, hooks=hooks)
    if spec.delete_detection == "none":
        return None
    if load.merging:
        return partial(write_with_deletes, hooks=hooks)
    if spec.delete_detection == "soft" and load.applied == "full":
        return partial(write_first_soft, hooks=hooks)
    return None  # hard deletes on a full overwrite: the overwrite leaves out what is gone


def history_types_changed(spec: LoadSpec, source_schema: pa.Schema, table: Any) -> str | None:
    """Why an scd2 destination's versions cannot take the source's rows any more (a merge key or
    a column changed type incompatibly), or None."""
    dest = arrow_schema_of(table.schema())
    mapped = delta_schema_for(source_schema)
    for key in spec.merge_keys:
        if key in dest.names and key in mapped.names:
            have, now = plain_type(dest.field(key).type), plain_type(mapped.field(key).type)
            if have != now:
                return f"merge key {key!r} changed type: {have} in the destination, {now} now"
    try:
        plan_schema(source_schema, dest)
    except IncompatibleSchemaError as exc:
        return str(exc).split(" (a full reload")[0]
    return None


ARCHIVE_INFIX = "__archived_"


def archive_history_table(destination: Path, spec: LoadSpec, reason: str, log: Callable) -> Path:
    """Move an scd2 destination aside (same folder, ``<name>__archived_<UTC time>_<attempt>``):
    its versions and commits are kept as they were, and this load starts a new history table.

    The forced reload of an scd2 table whose key (or a column) changed type: the old versions
    cannot be matched to the new rows, and a history table is never overwritten.
    """
    stamp = load_time().strftime("%Y%m%dT%H%M%SZ")
    archive = destination.with_name(
        f"{destination.name}{ARCHIVE_INFIX}{stamp}_{spec.metadata_id or 0}"
    )
    destination.rename(archive)
    log(
        f"forced reload of scd2 table {destination.name}: {reason}; the old history table is "
        f"kept as {archive} and a new one starts with this load"
    )
    return archive


def archive_if_types_changed(
    spec: LoadSpec, source_schema: pa.Schema, table: Any, destination: Path, log: Callable
) -> Any:
    """A forced reload of an scd2 table: ``table`` as it is, or None after archiving it because
    a key or a column changed type (this load then starts a new history table)."""
    reason = history_types_changed(spec, source_schema, table)
    if reason is None:
        return table
    archive_history_table(destination, spec, reason, log)
    return None
