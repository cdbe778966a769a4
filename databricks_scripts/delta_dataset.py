"""Reads of a Delta destination: its files as a pyarrow dataset, through Arrow's own local
filesystem, and the watermark its committed rows reached.

``DeltaTable.to_pyarrow_dataset()`` reads through deltalake's Python filesystem handler: Arrow's
I/O threads call back into Python, and a process that scanned such a dataset (a filtered
``to_table`` / ``count_rows``) sometimes aborts at interpreter exit ("terminate called without an
active exception", exit -6) after its work is done, about 1 to 7 runs in 100 here. A local table
(the Arrow engine's lake root) is read with ``pyarrow.fs.LocalFileSystem`` instead: 0 in 100.
Other URIs keep deltalake's handler.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlparse


def local_path(table_uri: str) -> str | None:
    """The local directory of a table URI (``/x`` or ``file:///x``), else None."""
    if table_uri.startswith("/"):
        return table_uri
    parsed = urlparse(table_uri)
    if parsed.scheme == "file":
        return unquote(parsed.path)
    return None


def delta_dataset(table: Any):
    """``table``'s current version as a pyarrow dataset."""
    path = local_path(str(table.table_uri))
    if path is None:
        return table.to_pyarrow_dataset()
    import pyarrow.fs as pafs

    return table.to_pyarrow_dataset(
        filesystem=pafs.SubTreeFileSystem(path.rstrip("/") or "/", pafs.LocalFileSystem())
    )


def destination_watermark(load: Any) -> str | None:
    """max(cursor) of the destination above the row's watermark: what a committed-but-unrecorded
    load moved it to (the Spark engine reads every new watermark this way)."""
    if load.cursor is None:
        return load.spec.incremental_value
    import pyarrow.compute as pc

    from databricks_scripts.watermark import batch_max, encode_watermark, max_watermark

    newer = None
    if load.watermark is not None and not load.numeric_text:
        newer = pc.field(load.cursor) > load.watermark
    dataset = delta_dataset(load.table)
    column = dataset.to_table(columns=[load.cursor], filter=newer).column(load.cursor)
    top = batch_max(column, numeric_text=load.numeric_text)
    new_max = max_watermark(load.watermark, top)
    if new_max is None or new_max == load.watermark:
        return load.spec.incremental_value
    return encode_watermark(new_max)
