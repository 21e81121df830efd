"""An index out again as one Parquet file that pandas, polars and Hugging Face ``datasets`` read
as is: one row per image with its id, path, labels, patient, licence, attribution, every stored
metadata column (``meta``, JSON text) and the ``feature`` vector (a list of float32); with
``style``, the stored Gram (style) vector too.

Rows are streamed in batches (a style vector is ~330 KB, so a large index never sits in memory)
into a temporary file that replaces ``out`` only when complete, all from one index version (held
with a reader lease, so ``compact`` keeps it meanwhile).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa

from ..errors import ConfigError
from ..io import atomic_path
from .leases import Lease
from .store import Index

__all__ = ["export_parquet"]

_LIGHT = ["id", "path", "diagnosis", "melanoma", "lesion_id", "meta"]


def _schema(style: bool) -> pa.Schema:
    fields = [pa.field("id", pa.string(), nullable=False), pa.field("path", pa.string()),
              pa.field("diagnosis", pa.string()), pa.field("melanoma", pa.int8()), pa.field("lesion_id", pa.string()),
              pa.field("patient_id", pa.string()), pa.field("license", pa.string()),
              pa.field("attribution", pa.string()), pa.field("meta", pa.string()),
              pa.field("feature", pa.list_(pa.float32()))]
    if style:
        fields.append(pa.field("style", pa.list_(pa.float32())))
    return pa.schema(fields)


def _as_list(column: pa.Array) -> pa.Array:
    """A fixed-size list column as a plain list column (the type every reader maps to a sequence)."""
    return column.cast(pa.list_(pa.float32()))


def _rows(batch: pa.RecordBatch, style: bool, schema: pa.Schema) -> pa.RecordBatch:
    metas = [json.loads(m) if m else {} for m in batch.column("meta").to_pylist()]

    def meta_field(name):
        return pa.array([(m.get(name) or None) for m in metas], pa.string())

    arrays = [batch.column("id"), batch.column("path"), batch.column("diagnosis"), batch.column("melanoma"),
              batch.column("lesion_id"), meta_field("patient_id"), meta_field("license"),
              meta_field("attribution"), batch.column("meta"), _as_list(batch.column("feature"))]
    if style:
        arrays.append(_as_list(batch.column("style")))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def export_parquet(index: Index, out: str | os.PathLike, style: bool = False, batch_rows: int = 512) -> dict:
    """Write the rows of ``index``'s newest version to the Parquet file ``out`` (atomically), that one
    version held (a lease) and read throughout, whatever is added meanwhile; returns what was written
    (``version``: the version exported)."""
    if style and not index.manifest["style_dim"]:
        raise ConfigError(f"{index.directory} stores no style vectors (built with --no-style): export without style")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    schema = _schema(style)
    meta = {"dermsearch_fingerprint": index.fingerprint, "feature_dim": str(index.manifest["feature_dim"]),
            "style_dim": str(index.manifest["style_dim"] if style else 0),
            "extractor": json.dumps(index.manifest["extractor"], sort_keys=True)}
    schema = schema.with_metadata({**(schema.metadata or {}), **{k.encode(): v.encode() for k, v in meta.items()}})
    version = index.latest_version()
    with Lease(index.directory, version):           # compaction keeps this version until the file is written
        table = Index(index.directory, index.manifest)._table       # a handle of its own, pinned to it
        table.checkout(version)
        rows = _write(table, out, schema, style, batch_rows)
    return {"file": str(out), "rows": rows, "version": version, "feature_dim": index.manifest["feature_dim"],
            "style_dim": index.manifest["style_dim"] if style else 0, "bytes": out.stat().st_size}


def _write(table, out: Path, schema: pa.Schema, style: bool, batch_rows: int) -> int:
    """Stream the rows of ``table`` (pinned to one version) into ``out`` atomically; returns the rows."""
    import pyarrow.parquet as pq

    n = table.count_rows()
    columns = _LIGHT + ["feature"] + (["style"] if style else [])
    rows = 0
    with atomic_path(out) as tmp, pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        if n:
            for batch in table.search().select(columns).limit(n).to_batches(batch_rows):
                if batch.num_rows:
                    writer.write_batch(_rows(batch, style, schema))
                    rows += batch.num_rows
    return rows
