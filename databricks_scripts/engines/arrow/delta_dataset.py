"""Reads of a Delta destination: its files as a pyarrow dataset, through Arrow's own local
filesystem, and the watermark its committed rows reached.

``DeltaTable.to_pyarrow_dataset()`` reads through deltalake's Python filesystem handler: Arrow's
I/O threads call back into Python, and a process that scanned such a dataset (a filtered
``to_table`` / ``count_rows``) sometimes aborts at interpreter exit ("terminate called without an
active exception", exit -6) after its work is done, about 1 to 7 runs in 100 here. A local table
(the Arrow engine's lake root) is read with ``pyarrow.fs.LocalFileSystem`` instead: 0 in 100.
Other URIs keep deltalake's handler.

**Column mapping.** The Arrow engine creates its tables without column mapping, whatever the
column names (deltalake accepts a space or ``,;{}()=`` in a name; Delta on Databricks does not,
and the Spark engine maps there, engines.spark.writes): deltalake 1.6 refuses schema evolution on
a mapped table ("not yet supported"), writes a mapped table with a timestamp-without-time-zone
column under the wrong names, and its ``to_pyarrow_dataset`` reads a mapped table's columns as
NULL. A mapped table made elsewhere is still read right: :func:`delta_dataset` reads its files by
physical name (``col-<uuid>``) and answers by logical name (projections renamed, filters rebound
by position through Substrait).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlparse

from databricks_scripts.load.columns import COLUMN_MAPPING_MODE


def local_path(table_uri: str) -> str | None:
    """The local directory of a table URI (``/x`` or ``file:///x``), else None."""
    if table_uri.startswith("/"):
        return table_uri
    parsed = urlparse(table_uri)
    if parsed.scheme == "file":
        return unquote(parsed.path)
    return None


PHYSICAL_NAME = "delta.columnMapping.physicalName"


def new_table_configuration(schema: Any, file_size: int | None = None) -> dict[str, str] | None:
    """The configuration of a table the Arrow engine creates with the pyarrow ``schema`` (None:
    nothing to set). Never column mapping (see the module's docstring)."""
    return {"delta.targetFileSize": str(file_size)} if file_size else None


def delta_dataset(table: Any):
    """``table``'s current version as a pyarrow dataset (column names as the table names them)."""
    path = local_path(str(table.table_uri))
    if path is None:
        dataset = table.to_pyarrow_dataset()
    else:
        import pyarrow.fs as pafs

        dataset = table.to_pyarrow_dataset(
            filesystem=pafs.SubTreeFileSystem(path.rstrip("/") or "/", pafs.LocalFileSystem())
        )
    if table.metadata().configuration.get(COLUMN_MAPPING_MODE, "none") == "none":
        return dataset
    return MappedDataset(dataset, table.schema())


class MappedDataset:
    """A column-mapped table's files read by physical name, answered by logical name: the part
    of a pyarrow dataset the loader uses (``schema``, ``to_table``, ``scanner``, ``count_rows``)."""

    def __init__(self, dataset: Any, delta_schema: Any):
        import pyarrow as pa
        import pyarrow.dataset as pads

        self.schema = pa.schema([pa.field(f.name, f.type) for f in dataset.schema])
        physical = {
            f.name: (f.metadata or {}).get(PHYSICAL_NAME, f.name) for f in delta_schema.fields
        }
        self._physical = [physical.get(name, name) for name in self.schema.names]
        self._files = pads.FileSystemDataset.from_paths(
            dataset.files,
            schema=pa.schema(
                [pa.field(p, f.type) for p, f in zip(self._physical, self.schema, strict=True)]
            ),
            format=dataset.format,
            filesystem=dataset.filesystem,
        )

    def _columns(self, columns: Any) -> dict:
        import pyarrow.compute as pc

        names = self.schema.names if columns is None else list(columns)
        return {n: pc.field(self._physical[self.schema.get_field_index(n)]) for n in names}

    def _filter(self, expression: Any) -> Any:
        import pyarrow.compute as pc

        if expression is None:
            return None
        # Field references by logical name become references by position, which the files'
        # physical schema (same order) resolves.
        return pc.Expression.from_substrait(expression.to_substrait(self.schema))

    def to_table(self, columns: Any = None, filter: Any = None, **kw: Any) -> Any:
        return self._files.to_table(
            columns=self._columns(columns), filter=self._filter(filter), **kw
        )

    def scanner(self, columns: Any = None, filter: Any = None, **kw: Any) -> Any:
        return self._files.scanner(
            columns=self._columns(columns), filter=self._filter(filter), **kw
        )

    def count_rows(self, filter: Any = None, **kw: Any) -> int:
        return self._files.count_rows(filter=self._filter(filter), **kw)


def destination_watermark(load: Any) -> str | None:
    """max(cursor) of the destination above the row's watermark: what a committed-but-unrecorded
    load moved it to (the Spark engine reads every new watermark this way)."""
    if load.cursor is None:
        return load.spec.incremental_value
    import pyarrow.compute as pc

    from databricks_scripts.load.watermark import batch_max, encode_watermark, max_watermark

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
