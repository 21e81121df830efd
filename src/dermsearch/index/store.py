"""The index ("RIS database"): a directory holding a manifest and a LanceDB table.

Layout of an index directory::

    DIR/dermsearch.json   manifest: format, extractor config, model fingerprint, dimensions
    DIR/lance/            LanceDB database with one table, ``images``, one row per image
    DIR/.write.lock       advisory lock held by the one writer
    DIR/readers/          leases of the versions readers hold (``index/leases.py``)

Every ``add`` and ``remove`` is a single LanceDB commit (a new table version), so a crash
leaves the index at the last committed version; readers work on one version (a snapshot).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..errors import ConfigError, DermsearchError
from ..extract.config import ExtractorConfig
from ..extract.vectors import Vectors
from ..io import write_json
from .fastfiles import carry_forward_files
from .records import IndexSchema, Record

__all__ = ["CompactionReport", "Index", "IndexDirectoryError", "IndexLockedError", "ModelMismatchError", "Record",
           "Snapshot", "FORMAT", "cleanup_cutoff"]

FORMAT = 1
MANIFEST = "dermsearch.json"
TABLE = "images"


class IndexDirectoryError(DermsearchError, RuntimeError):
    """A problem with an index directory: missing, of another format, locked, or of another model."""


class IndexLockedError(IndexDirectoryError):
    pass


class ModelMismatchError(IndexDirectoryError):
    pass


@dataclass
class Snapshot:
    """One version of the index, loaded into numpy for search."""

    version: int
    ids: np.ndarray                 # [N] object (str)
    paths: np.ndarray               # [N] object (str)
    diagnosis: np.ndarray           # [N] object (str or None)
    melanoma: np.ndarray            # [N] float (nan where unknown)
    lesion_id: np.ndarray           # [N] object
    meta_json: np.ndarray           # [N] object (JSON text)
    features: np.ndarray            # [N, D] float32
    styles: np.ndarray | None       # [N, S] float32
    masks: np.ndarray | None        # [N, B] uint8 (bit-packed)
    mask_areas: np.ndarray | None   # [N] int32

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def vectors(self) -> Vectors:
        return Vectors(self.features, self.styles, self.masks, self.mask_areas)


def _schema(manifest: dict) -> pa.Schema:
    cols = [
        pa.field("id", pa.string(), nullable=False),
        pa.field("path", pa.string()),
        pa.field("diagnosis", pa.string()),
        pa.field("melanoma", pa.int8()),
        pa.field("lesion_id", pa.string()),
        pa.field("meta", pa.string()),
        pa.field("model", pa.string()),
        pa.field("added", pa.timestamp("s", tz="UTC")),
        pa.field("feature", pa.list_(pa.float32(), manifest["feature_dim"])),
    ]
    if manifest["style_dim"]:
        cols.append(pa.field("style", pa.list_(pa.float32(), manifest["style_dim"])))
    if manifest["mask_bytes"]:
        cols.append(pa.field("mask", pa.binary(manifest["mask_bytes"])))
        cols.append(pa.field("mask_area", pa.int32()))
    return pa.schema(cols)


def _write_json_atomic(path: Path, data: dict) -> None:
    write_json(path, data, indent=2, sort_keys=True)


@dataclass
class CompactionReport:
    """What :meth:`Index.compact` did: versions, data fragments, versions kept and bytes of the
    table's files, before and after; the versions readers held and the oldest version kept."""

    version_before: int
    version_after: int
    fragments_before: int
    fragments_after: int
    versions_before: int
    versions_after: int
    bytes_before: int
    bytes_after: int
    held: list[int]
    kept_from: int
    fast_mode_files: str | None = None       # the fast-mode files carried over to version_after


def cleanup_cutoff(stamps: dict, held: Sequence[int], head: int, now: float, margin_s: float
                   ) -> tuple[int, timedelta]:
    """Which versions a compaction's cleanup keeps: from the oldest version a reader holds
    (``held``, those still in ``stamps``: version -> commit time), else only the newest (``head``).
    Returns that version and the age LanceDB's cleanup gets (it deletes versions by age, not by
    number): 0 when only the newest stays, else the held version's age at ``now`` (seconds since
    the epoch) plus ``margin_s``, so that the versions committed up to ``margin_s`` seconds before
    it are kept too (the margin covers the time between choosing the age and LanceDB applying it)."""
    floor = min([v for v in held if v in stamps] + [head])
    if floor == head:
        return floor, timedelta(0)
    stamp = stamps[floor]          # LanceDB's: naive local time (or aware): .timestamp() reads both
    return floor, timedelta(seconds=max(now - stamp.timestamp(), 0.0) + margin_s)


def _version_facts(table) -> dict:
    versions = table.list_versions()
    head = max(versions, key=lambda v: v["version"])
    files = Path(table.uri if hasattr(table, "uri") else "") / "data"
    size = sum(f.stat().st_size for f in files.iterdir()) if files.is_dir() else 0
    return {"version": head["version"], "fragments": int(head["metadata"].get("total_fragments", 0)),
            "versions": len(versions), "bytes": size}


def _fixed_list(matrix: np.ndarray) -> pa.FixedSizeListArray:
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])


def _to_matrix(column: pa.ChunkedArray, width: int) -> np.ndarray:
    arr = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if len(arr) == 0:
        return np.zeros((0, width), dtype=np.float32)
    values = arr.values.to_numpy(zero_copy_only=False)
    start = arr.offset * width
    return values[start:start + len(arr) * width].reshape(len(arr), width)


def _sql_list(ids: Iterable[str]) -> str:
    return ", ".join("'" + i.replace("'", "''") + "'" for i in ids)


class Index:
    """An index directory. Use :meth:`create`, :meth:`open` or :meth:`open_or_create`."""

    def __init__(self, directory: Path, manifest: dict):
        self.directory = Path(directory)
        self.manifest = manifest
        self._opened = None           # the LanceDB table, opened on first use (importing lancedb takes ~1 s)

    @property
    def _table(self):
        if self._opened is None:
            import lancedb

            self._opened = lancedb.connect(str(self.directory / "lance")).open_table(TABLE)
        return self._opened

    def head_version(self) -> int:
        """The newest committed version, read from the table's version manifests without opening
        the table (Lance names them ``<version>.manifest``, or ``<2^64 - 1 - version>.manifest``
        in its newer scheme). For readers that only need to know which version is current; the
        snapshot itself always comes from LanceDB (or fast-mode files of that version)."""
        if self._opened is not None:
            return self.latest_version()
        versions = []
        try:
            entries = list(os.scandir(self.directory / "lance" / f"{TABLE}.lance" / "_versions"))
        except OSError as e:
            raise IndexDirectoryError(f"{self.directory}: the table's versions are unreadable ({e})") from None
        for f in entries:
            stem, dot, ext = f.name.partition(".")
            if ext == "manifest" and stem.isdigit():
                n = int(stem)
                versions.append(2**64 - 1 - n if n >= 2**63 else n)
        if not versions:
            raise IndexDirectoryError(f"{self.directory}: the table has no committed version")
        return max(versions)

    # ------------------------------------------------------------------ opening
    @classmethod
    def create(cls, directory: str | os.PathLike, schema: IndexSchema) -> Index:
        directory = Path(directory)
        if (directory / MANIFEST).exists():
            raise IndexDirectoryError(f"{directory} already holds an index")
        directory.mkdir(parents=True, exist_ok=True)
        manifest = {
            "format": FORMAT, "fingerprint": schema.fingerprint, "extractor": dict(schema.extractor),
            "feature_dim": schema.feature_dim, "style_dim": schema.style_dim, "mask_bytes": schema.mask_bytes,
            "mask_size": schema.mask_size, **schema.facts,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        import lancedb

        db = lancedb.connect(str(directory / "lance"))
        if TABLE not in db.list_tables().tables:
            db.create_table(TABLE, schema=_schema(manifest))
        # The manifest is written last: a directory without it is not an index yet.
        _write_json_atomic(directory / MANIFEST, manifest)
        return cls(directory, manifest)

    @classmethod
    def open(cls, directory: str | os.PathLike) -> Index:
        directory = Path(directory)
        path = directory / MANIFEST
        if not path.is_file():
            raise IndexDirectoryError(f"{directory} is not a dermsearch index (no {MANIFEST}); build one with "
                              f"'dermsearch index SOURCE --index {directory}'")
        try:
            manifest = json.loads(path.read_text())
        except ValueError as e:
            raise IndexDirectoryError(f"{path}: unreadable manifest ({e})") from None
        if manifest.get("format") != FORMAT:
            raise IndexDirectoryError(f"{directory}: index format {manifest.get('format')} is not supported "
                              f"(this dermsearch reads format {FORMAT})")
        return cls(directory, manifest)

    @classmethod
    def open_or_create(cls, directory: str | os.PathLike, schema: IndexSchema) -> Index:
        directory = Path(directory)
        if not (directory / MANIFEST).exists():
            return cls.create(directory, schema)
        index = cls.open(directory)
        index.check_fingerprint(schema.fingerprint, ExtractorConfig.from_dict(schema.extractor))
        return index

    # --------------------------------------------------------------- properties
    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]

    @property
    def extractor_config(self) -> ExtractorConfig:
        return ExtractorConfig.from_dict(self.manifest["extractor"])

    @property
    def version(self) -> int:
        return self._table.version

    def latest_version(self) -> int:
        """The newest committed version (another process may have written since this one opened
        the index); cheap: a LanceDB checkout of the latest manifest."""
        self._table.checkout_latest()
        return self._table.version

    def __len__(self) -> int:
        return self._table.count_rows()

    def check_fingerprint(self, fingerprint: str, config: ExtractorConfig | None = None) -> None:
        if fingerprint != self.fingerprint:
            raise ModelMismatchError(
                f"{self.directory} was built with model {self.fingerprint} "
                f"({self.manifest['extractor']['backbone']}, weights={self.manifest['extractor']['weights']}); "
                f"this run uses model {fingerprint}"
                + (f" ({config.backbone}, weights={config.weights})" if config else "")
                + ". An index never mixes models: build a new index in another directory."
            )

    # ------------------------------------------------------------------ writing
    @contextmanager
    def writing(self):
        """Hold the index's write lock; a second writer gets :class:`IndexLockedError`."""
        path = self.directory / ".write.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise IndexLockedError(f"index {self.directory} is locked by another writer") from None
            yield self
        finally:
            os.close(fd)

    def compact(self, cleanup: bool = True, stale_after: float = 24 * 3600, margin_s: float = 5.0,
                clock: Callable[[], float] = time.time) -> CompactionReport:
        """Merge the table's small data files (many small commits leave many) into a new
        version with the same rows in the same order, then (``cleanup``) delete the versions
        older than every version a reader holds (:mod:`~dermsearch.index.leases`; a lease from
        another host counts until ``stale_after`` seconds old), and the files only they use
        (:func:`cleanup_cutoff`; ``clock``: the time now, in seconds since the epoch). The
        fast-mode files of the version compacted are carried over to the new one
        (:func:`~dermsearch.index.fastfiles.carry_forward_files`: same rows, no 'optimize' needed);
        the report names them.

        Holds the write lock. Crash-safe like every write: the compacted version is one atomic
        commit (a crash before it leaves the old version current and at most unreferenced files,
        which a later cleanup removes once they are a week old); cleanup deletes only files that no
        kept version refers to."""
        import warnings

        from .leases import held_versions

        with self.writing():
            t = self._table
            t.checkout_latest()
            before = _version_facts(t)
            t.optimize(cleanup_older_than=timedelta(days=365 * 100))        # compaction only, nothing pruned
            t.checkout_latest()
            held = held_versions(self.directory, stale_after)
            floor = t.version
            if cleanup:
                stamps = {v["version"]: v["timestamp"] for v in t.list_versions()}
                floor, age = cleanup_cutoff(stamps, held, t.version, clock(), margin_s)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)    # "0 removes every older version": checked
                    t.optimize(cleanup_older_than=age)
                t.checkout_latest()
            after = _version_facts(t)
            fast = None
            if (self.directory / "fast").is_dir():
                fast = carry_forward_files(self.directory, before["version"], after["version"],
                                           self.snapshot(vectors=False).ids, held_versions(self.directory))
        return CompactionReport(before["version"], after["version"], before["fragments"], after["fragments"],
                                before["versions"], after["versions"], before["bytes"], after["bytes"], held, floor,
                                None if fast is None else str(fast))

    def _columns(self, columns: list[str]) -> pa.Table:
        """Only these columns of every row (the vectors are not read)."""
        return self._table.search().select(columns).limit(max(1, self._table.count_rows())).to_arrow()

    def ids(self) -> set[str]:
        return set(self._columns(["id"]).column("id").to_pylist()) if len(self) else set()

    def add(self, records: Sequence[Record], extracted: Vectors) -> int:
        """Append rows in one commit. Ids already present are an error (callers filter first)."""
        n = len(records)
        if n == 0:
            return 0
        if extracted.features.shape != (n, self.manifest["feature_dim"]):
            raise ValueError(f"feature matrix {extracted.features.shape} does not match {n} records "
                             f"x {self.manifest['feature_dim']}")
        ids = [r.id for r in records]
        if len(set(ids)) != n:
            raise ConfigError("duplicate ids within one add: give each image one id")
        clash = self._existing(ids)
        if clash:
            raise ConfigError(f"ids already in the index: {sorted(clash)[:5]} (remove them first, or leave them out)")
        now = pa.array([int(time.time())] * n, pa.timestamp("s", tz="UTC"))
        data = {
            "id": ids,
            "path": [r.path for r in records],
            "diagnosis": [r.diagnosis for r in records],
            "melanoma": pa.array([r.melanoma for r in records], pa.int8()),
            "lesion_id": [r.lesion_id for r in records],
            "meta": [json.dumps(r.meta, ensure_ascii=False) for r in records],
            "model": [self.fingerprint] * n,
            "added": now,
            "feature": _fixed_list(extracted.features),
        }
        if self.manifest["style_dim"]:
            if extracted.styles is None or extracted.styles.shape != (n, self.manifest["style_dim"]):
                raise ValueError("style vectors missing or of the wrong size")
            data["style"] = _fixed_list(extracted.styles)
        if self.manifest["mask_bytes"]:
            if extracted.masks is None or extracted.masks.shape != (n, self.manifest["mask_bytes"]):
                raise ValueError("masks missing or of the wrong size")
            data["mask"] = pa.array([m.tobytes() for m in extracted.masks], pa.binary(self.manifest["mask_bytes"]))
            data["mask_area"] = pa.array(extracted.mask_areas, pa.int32())
        self._table.add(pa.table(data, schema=_schema(self.manifest)))
        return n

    def _existing(self, ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            query = self._table.search().where(f"id IN ({_sql_list(chunk)})").select(["id"]).limit(len(chunk))
            rows = query.to_arrow()
            found.update(rows.column("id").to_pylist())
        return found

    def remove(self, ids: Iterable[str]) -> tuple[list[str], list[str]]:
        """Remove images by id in one commit. Returns (removed, unknown)."""
        ids = list(dict.fromkeys(ids))
        present = self._existing(ids)
        removed = [i for i in ids if i in present]
        if removed:
            self._table.delete(f"id IN ({_sql_list(removed)})")
        return removed, [i for i in ids if i not in present]

    # ------------------------------------------------------------------ reading
    def snapshot(self, vectors: bool = True) -> Snapshot:
        """Load the current version into numpy (one consistent version)."""
        m = self.manifest
        version = self._table.version
        light = ["id", "path", "diagnosis", "melanoma", "lesion_id", "meta"]
        table = self._table.to_arrow() if vectors else self._columns(light)
        def col(name):
            return np.array(table.column(name).to_pylist(), dtype=object)
        mel = table.column("melanoma").to_numpy(zero_copy_only=False)
        melanoma = np.array([np.nan if v is None else float(v) for v in mel], dtype=np.float64) \
            if mel.dtype == object else mel.astype(np.float64)
        features = _to_matrix(table.column("feature"), m["feature_dim"]) if vectors else None
        styles = masks = areas = None
        if vectors and m["style_dim"]:
            styles = _to_matrix(table.column("style"), m["style_dim"])
        if vectors and m["mask_bytes"]:
            raw = table.column("mask").combine_chunks()
            buf = np.frombuffer(raw.buffers()[1], dtype=np.uint8)
            start = raw.offset * m["mask_bytes"]
            masks = buf[start:start + len(raw) * m["mask_bytes"]].reshape(len(raw), m["mask_bytes"])
            areas = table.column("mask_area").to_numpy().astype(np.int32)
        return Snapshot(version, col("id"), col("path"), col("diagnosis"), melanoma, col("lesion_id"),
                        col("meta"), features, styles, masks, areas)

    def check(self) -> list[str]:
        """Integrity problems of the current version (empty list = healthy)."""
        problems = []
        table = self._table.to_arrow()
        ids = table.column("id").to_pylist()
        if len(ids) != len(set(ids)):
            dup = sorted({i for i in ids if ids.count(i) > 1})
            problems.append(f"duplicate ids: {dup[:10]}")
        models = set(table.column("model").to_pylist())
        if models - {self.fingerprint}:
            problems.append(f"rows from other models: {sorted(models - {self.fingerprint})}")
        for name, dim in (("feature", "feature_dim"), ("style", "style_dim")):
            if self.manifest[dim]:
                mat = _to_matrix(table.column(name), self.manifest[dim])
                if mat.shape[0] != len(ids):
                    problems.append(f"{name}: {mat.shape[0]} vectors for {len(ids)} rows")
                if not np.isfinite(mat).all():
                    problems.append(f"{name}: non-finite values")
        return problems
