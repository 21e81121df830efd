"""Where fast mode's style rows live, and at which precision it re-ranks (:mod:`.fast`).

Fast mode scans its compact codes (PCA projections, sketches: a few KB per image) in RAM and
re-ranks a few dozen rows per query with their style vectors (80,712 values: 98 % of an exact
row). Those re-rank rows are stored at a *precision* chosen when ``dermsearch optimize`` runs
(:data:`~dermsearch.names.STORAGE_PRECISIONS`):

- ``float32``: the exact rows themselves, read per query from where the *full rows* live (below):
  nothing is copied;
- ``fp16``: a float16 copy in the fast-mode directory (2 bytes a value), each row's rounding error
  ``‖x − x̂‖`` beside it;
- ``int8``: certified mode's int8 copy (:func:`~dermsearch.search.certified.write_certified`:
  centred on a mean row, one scale per row and Gram; 1 byte a value), read back through the same
  files, so that ``--mode certified`` needs no copy of its own;
- ``int6``: 6-bit codes after a random-sign DCT per column group, deflate-coded row by row
  (:mod:`.style_codec`: 48.2 KB a row for the shipped model, against 70.8 KB for int8);
- ``auto``: float32 below :data:`AUTO_COMPACT_ROWS` rows, :data:`AUTO_COMPACT` from there.

The *full rows* (float32, exact) live in one of (``fast.json``'s ``full_rows``):

- ``index``: the index's own LanceDB table (the rows stored once: ``optimize``'s default for
  compact re-rank rows or from :data:`AUTO_COMPACT_ROWS` rows, :func:`default_full_rows`), read
  per query with a ``take`` of the row offsets at the files' index version;
- ``here``: ``styles.npy`` in the fast-mode directory (``optimize``'s default for float32 below
  :data:`AUTO_COMPACT_ROWS` rows, as before; and what a :class:`FastIndexWriter
  <dermsearch.search.fast_build.FastIndexWriter>` with no index behind it writes);
- ``tier``: ``styles-<token>.npy`` in a second location, a local directory (another disk) or any
  fsspec URL (``FastConfig.full_rows``), read only for the rows re-ranked;
- ``none``: nowhere (a writer told so): scores come from the compact rows and say so.
"""

from __future__ import annotations

import json
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DermsearchError, require
from ..names import STORAGE_PRECISIONS
from .fast_parts import RowReader
from .style_codec import Int6Rows, write_int6

__all__ = ["AUTO_COMPACT_ROWS", "AUTO_COMPACT", "resolve_precision", "resolve_code_precision",
           "default_full_rows", "write_compact_rows",
           "open_compact_rows", "write_tier_rows", "open_full_rows", "remove_tier_rows", "FullRowsError",
           "storage_facts", "RowRange"]

AUTO_COMPACT_ROWS = 100_000      # "auto": float32 below this many rows, AUTO_COMPACT from there
AUTO_COMPACT = "int8"


class FullRowsError(DermsearchError, RuntimeError):
    """The full (float32) rows fast-mode files refer to are missing or unreadable."""


def resolve_precision(precision: str, rows: int) -> str:
    """The stored precision ``precision`` means for an archive of ``rows`` rows."""
    if precision not in STORAGE_PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(STORAGE_PRECISIONS)}, not {precision!r}")
    if precision == "auto":
        return "float32" if rows < AUTO_COMPACT_ROWS else AUTO_COMPACT
    return precision


def resolve_code_precision(code_precision: str, rows: int) -> str:
    """The precision ``FastConfig.code_precision`` means for the scanned codes (sketches, mask cells) of
    an archive of ``rows`` rows: ``auto`` is float32 below :data:`AUTO_COMPACT_ROWS`, fp16 from there."""
    if code_precision == "auto":
        return "float32" if rows < AUTO_COMPACT_ROWS else "fp16"
    return code_precision


def default_full_rows(precision: str, rows: int) -> str:
    """Where ``optimize`` keeps the full rows unless told (``FastConfig.full_rows``): a float32 copy
    in the fast-mode directory for float32 re-rank rows below :data:`AUTO_COMPACT_ROWS` rows (as
    before FAST_FORMAT 3: nothing changes for a clinic's archive; reading ~200 style rows a query
    from a positioned-read copy is ~9x faster than a LanceDB ``take``, docs/performance.md), else
    the index's own table (stored once)."""
    return "here" if resolve_precision(precision, rows) == "float32" and rows < AUTO_COMPACT_ROWS else "index"


def is_url(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


def _fsspec():
    return require("fsspec", "tier", "full rows at a URL")


# ------------------------------------------------------------------------------ compact rows
def write_compact_rows(directory: Path, styles, precision: str, groups, chunk: int = 2048) -> None:
    """Write the re-rank rows of ``styles`` (float32 [N, D], RAM or memory map) at ``precision``
    into ``directory`` (nothing for float32), with each row's rounding error ``‖x − x̂‖``
    (``style_code_err.npy``, float64)."""
    if precision == "float32":
        return
    if precision not in ("fp16", "int8", "int6"):
        raise ConfigError(f"no stored precision {precision!r}")
    n = styles.shape[0]
    err = np.lib.format.open_memmap(directory / "style_code_err.npy", mode="w+", dtype=np.float64, shape=(n,))
    if precision == "fp16":
        out = np.lib.format.open_memmap(directory / "style_fp16.npy", mode="w+", dtype=np.float16,
                                        shape=styles.shape)
        for a in range(0, n, chunk):
            x = np.asarray(styles[a:a + chunk], dtype=np.float32)
            h = x.astype(np.float16)
            if not np.isfinite(h).all():
                raise ConfigError("style values beyond float16's range (65504): use --precision int8 or float32")
            out[a:a + chunk] = h
            d = x.astype(np.float64) - h
            err[a:a + chunk] = np.sqrt(np.einsum("ij,ij->i", d, d))
        out.flush()
    elif precision == "int8":
        from .certified import write_certified

        if not (directory / "certified.json").is_file():
            write_certified(directory, styles, groups)
        per_row = np.load(directory / "certified_rows.npy")
        G = (per_row.shape[1] - 1) // 3
        err[:] = np.sqrt(np.einsum("ng,ng->n", per_row[:, 1 + G:1 + 2 * G], per_row[:, 1 + G:1 + 2 * G]))
    elif precision == "int6":
        write_int6(directory, styles, groups, err)
    err.flush()


# every float16 bit pattern's float32 value: a table look-up converts 2x faster than numpy's cast
_FP16 = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)


class _Fp16Rows:
    def __init__(self, directory: Path):
        self.reader = RowReader(directory / "style_fp16.npy")
        self.shape = self.reader.shape

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        return np.take(_FP16, self.reader(rows).view(np.uint16))

    def all(self) -> np.ndarray:
        return np.load(self.reader.path, mmap_mode="r")


class _Int8Rows:
    """Certified mode's int8 copy read back as float32 rows: ``μ + s_g·a`` in each group's columns,
    0 in the columns of no group (those are 0 in every row)."""

    def __init__(self, directory: Path, width: int):
        from .certified import _read_certified

        info = json.loads((directory / "certified.json").read_text())
        self.groups = [tuple(g) for g in info["groups"]]
        saved = _read_certified(directory, info["rows"], width, self.groups)
        if saved is None:
            raise FullRowsError(f"{directory}: the int8 re-rank rows (certified_*.npy) do not match fast.json; "
                                "run 'dermsearch optimize' again")
        self.mu, _codes, per_row = saved
        self.scale = per_row[:, 1:1 + len(self.groups)]
        self.reader = RowReader(directory / "certified_codes.npy")
        self.shape = (info["rows"], width)

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        codes = self.reader(rows)
        out = np.zeros((len(rows), self.shape[1]), dtype=np.float32)
        at = 0
        for g, (a, b) in enumerate(self.groups):
            w = b - a
            out[:, a:b] = codes[:, at:at + w] * self.scale[rows, g][:, None].astype(np.float32) + self.mu[at:at + w]
            at += w
        return out

    def all(self) -> np.ndarray:
        return self(np.arange(self.shape[0]))


def open_compact_rows(directory: Path, precision: str, width: int):
    """The reader of the re-rank rows stored at ``precision`` (None for float32: the full rows)."""
    if precision == "fp16":
        return _Fp16Rows(directory)
    if precision == "int8":
        return _Int8Rows(directory, width)
    if precision == "int6":
        try:
            return Int6Rows(directory, width)
        except (OSError, ValueError, EOFError, KeyError, TypeError) as e:
            raise FullRowsError(f"{directory}: the int6 re-rank rows cannot be read ({e!r}); "
                                "run 'dermsearch optimize' again") from None
    return None


# --------------------------------------------------------------------------------- full rows
def write_tier_rows(location: str, styles, chunk: int = 2048) -> str:
    """Write the float32 rows ``styles`` [N, D] as ``styles-<token>.npy`` under ``location`` (a
    local directory or an fsspec URL), under a temporary name renamed into place; return the
    file's location."""
    name = f"styles-{uuid.uuid4().hex[:12]}.npy"
    n, d = styles.shape
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False, "shape": (n, d)}
    if is_url(location):
        fs, root = _fsspec().core.url_to_fs(location)
        fs.makedirs(root, exist_ok=True)
        final, tmp = f"{root.rstrip('/')}/{name}", f"{root.rstrip('/')}/{name}.tmp"
        with fs.open(tmp, "wb") as f:
            np.lib.format.write_array_header_1_0(f, header)
            for a in range(0, n, chunk):
                f.write(np.ascontiguousarray(styles[a:a + chunk], dtype=np.float32).tobytes())
        fs.mv(tmp, final)
        return location.rstrip("/") + "/" + name
    folder = Path(location.removeprefix("file://")).expanduser().resolve()      # fast.json names it absolutely
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"{name}.tmp"
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, d))
    for a in range(0, n, chunk):
        out[a:a + chunk] = styles[a:a + chunk]
    out.flush()
    del out
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, folder / name)
    return str(folder / name)


def remove_tier_rows(full: dict | None) -> None:
    """Delete a tier file that no fast-mode directory refers to any more (best effort)."""
    if not full or full.get("kind") != "tier":
        return
    where = full["location"]
    try:
        if is_url(where):
            fs, path = _fsspec().core.url_to_fs(where)
            fs.rm(path)
        else:
            Path(where.removeprefix("file://")).unlink(missing_ok=True)
    except (OSError, ValueError, ImportError):
        pass


class _FsspecRows:
    """Chosen rows of a float32 ``.npy`` at an fsspec URL: one ranged read per row, from a few threads."""

    def __init__(self, url: str, shape: tuple[int, int]):
        self.url, self.shape = url, shape
        self.fs, self.path = _fsspec().core.url_to_fs(url)
        try:
            with self.fs.open(self.path, "rb") as f:
                np.lib.format.read_magic(f)
                got, _, dtype = np.lib.format.read_array_header_1_0(f)
                self.offset = f.tell()
        except (OSError, ValueError, FileNotFoundError) as e:
            raise FullRowsError(f"the full style rows at {url} are unreadable ({e}); restore them or run "
                                "'dermsearch optimize' again") from None
        if tuple(got) != tuple(shape) or dtype != np.float32:
            raise FullRowsError(f"the full style rows at {url} hold {got} {dtype}, not {shape} float32; "
                                "run 'dermsearch optimize' again")
        self.row_bytes = shape[1] * 4
        self.pool = ThreadPoolExecutor(4, thread_name_prefix="dermsearch-tier")

    def _row(self, r: int) -> bytes:
        data = self.fs.cat_file(self.path, start=self.offset + r * self.row_bytes,
                                end=self.offset + (r + 1) * self.row_bytes)
        if len(data) != self.row_bytes:
            raise FullRowsError(f"the full style rows at {self.url}: short read of row {r}")
        return data

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        parts = list(self.pool.map(self._row, [int(r) for r in rows]))
        return np.frombuffer(b"".join(parts), dtype=np.float32).reshape(len(rows), self.shape[1]).copy()

    def all(self) -> np.ndarray:
        return self(np.arange(self.shape[0]))


class _LanceRows:
    """Chosen rows of the index's own LanceDB table, at the version the fast-mode files serve."""

    def __init__(self, index_directory: Path, version: int, shape: tuple[int, int]):
        self.where, self.version, self.shape = index_directory / "lance", version, shape
        if not self.where.is_dir():
            raise FullRowsError(f"{self.where}: the index's table, which holds the full style rows, is missing")
        self._table = None

    @property
    def table(self):
        if self._table is None:
            import lancedb

            try:
                t = lancedb.connect(str(self.where)).open_table("images")
                if t.version != self.version:
                    t.checkout(self.version)
            except (OSError, ValueError, RuntimeError) as e:
                raise FullRowsError(f"{self.where}: version {self.version} of the index's table, which holds the "
                                    f"full style rows, is unreadable ({e}); run 'dermsearch optimize' again") from None
            if t.count_rows() != self.shape[0]:
                raise FullRowsError(f"{self.where} version {self.version} holds {t.count_rows()} rows, the "
                                    f"fast-mode files {self.shape[0]}; run 'dermsearch optimize' again")
            self._table = t
        return self._table

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        from ..index.store import _to_matrix

        rows = np.asarray(rows, dtype=np.int64)
        order = np.argsort(rows, kind="stable")
        got = self.table.take_offsets(rows[order].tolist()).select(["style"]).to_arrow()
        out = np.empty((len(rows), self.shape[1]), dtype=np.float32)
        out[order] = _to_matrix(got.column("style"), self.shape[1])
        return out

    def all(self) -> np.ndarray:
        from ..index.store import _to_matrix

        t = self.table
        got = t.search().select(["style"]).limit(max(1, self.shape[0])).to_arrow()
        return _to_matrix(got.column("style"), self.shape[1])


class _NpyRows(RowReader):
    def all(self) -> np.ndarray:
        return np.load(self.path, mmap_mode="r")


class RowRange:
    """Rows ``[start, stop)`` of another reader, numbered from 0 (a shard of the rows)."""

    def __init__(self, reader, start: int, stop: int):
        self.reader, self.start, self.stop = reader, start, stop
        self.shape = (stop - start, *tuple(getattr(reader, "shape", (0, 0)))[1:])

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        return self.reader(np.asarray(rows, dtype=np.int64) + self.start)

    def style_losses(self, query_style: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """The wrapped int6 reader's losses (a shard computes them as local does)."""
        return self.reader.style_losses(query_style, np.asarray(rows, dtype=np.int64) + self.start)

    def all(self) -> np.ndarray:
        return self.reader.all()[self.start:self.stop]

    def close(self) -> None:
        close = getattr(self.reader, "close", None)
        if close is not None:
            close()


def open_full_rows(directory: Path, info: dict, shape: tuple[int, int]):
    """The reader of the full float32 style rows ``fast.json`` (``info``) names, or None (``none``).
    A missing or unreadable location raises :class:`FullRowsError` naming it."""
    full = info.get("full_rows") or {"kind": "here"}
    kind = full["kind"]
    if kind == "none":
        return None
    if kind == "index":
        return _LanceRows(directory.parent.parent, info["index_version"], shape)
    where = str(directory / "styles.npy") if kind == "here" else full["location"]
    if kind == "tier" and is_url(where):
        return _FsspecRows(where, shape)
    path = Path(where.removeprefix("file://"))
    try:
        reader = _NpyRows(path)
    except (OSError, ValueError) as e:
        raise FullRowsError(f"the full style rows at {path} are missing or unreadable ({e}); restore them or run "
                            "'dermsearch optimize' again") from None
    if tuple(reader.shape) != tuple(shape) or reader.dtype != np.float32:
        raise FullRowsError(f"the full style rows at {path} hold {reader.shape} {reader.dtype}, not {shape} "
                            "float32; run 'dermsearch optimize' again")
    return reader


def storage_facts(index_directory: str | os.PathLike, fast_directory: Path | None, rows: int) -> dict:
    """What ``dermsearch info`` says of the storage: the fast-mode precision and where the full rows
    live, and bytes on disk per image (the index's table, the fast-mode files, a local tier file)."""
    def size(p: Path) -> int:
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else (
            p.stat().st_size if p.is_file() else 0)

    table = size(Path(index_directory) / "lance")
    out: dict = {"table_bytes_per_image": round(table / max(rows, 1)),
                 "auto_precision": resolve_precision("auto", rows)}     # what 'optimize' picks by default
    info = None
    if fast_directory is not None:
        try:
            info = json.loads((fast_directory / "fast.json").read_text())
        except (OSError, ValueError):
            info = None
    if info is None:
        out["fast_mode"] = None
        out["bytes_per_image"] = out["table_bytes_per_image"]
        return out
    full = info.get("full_rows") or {"kind": "here"}
    fast_bytes = size(fast_directory)
    tier = 0
    if full["kind"] == "tier" and not is_url(full["location"]):
        tier = size(Path(full["location"].removeprefix("file://")))
    out["fast_mode"] = {"format": info.get("format"), "version": info.get("index_version"),
                        "precision": info.get("precision", "float32"), "full_rows": full,
                        "code_precision": info.get("code_precision", "float32"),
                        "bytes_per_image": round(fast_bytes / max(rows, 1)),
                        "tier_bytes_per_image": round(tier / max(rows, 1))}
    # the parts, each rounded, add up to the whole as printed
    out["bytes_per_image"] = (out["table_bytes_per_image"] + out["fast_mode"]["bytes_per_image"]
                              + out["fast_mode"]["tier_bytes_per_image"])
    return out
