"""Entropy-coded 6-bit style rows (``int6``): fast mode's smallest re-rank rows (:mod:`.fast_rows`).

A row of the shipped model has 70,844 live style columns: 70.8 KB in int8, 323 KB in float32. This
code stores 48.2 KB of them at recall@5 0.992 against the float32 ranking on the 10,015 real rows
(``experiments/style_codes.py``, docs/experiments.md, issue #44):

- each row is centred on a mean row ``μ`` (of a sample of rows);
- each column group (:func:`~dermsearch.search.certified.certified_groups`: inside one Gram, at most
  16,384 columns) gets fixed random signs and an orthonormal DCT-II. The map is orthogonal, so
  distances are unchanged, and it spreads a row's energy evenly over the group's columns;
- one scale per row and group, ``s = CLIP · RMS / LEVELS``, and codes ``clip(rint(y / s), ±LEVELS)``
  with ``LEVELS = 31`` (6 bits; values beyond ``CLIP`` = 3 RMS are clipped);
- each row's codes are deflate-coded (zlib) on their own, so a query inflates only the rows it
  re-ranks. Huffman coding alone (``Z_HUFFMAN_ONLY``): the rotated codes have no repeats for LZ77 to
  find, so its matches only cost bits; alone it comes within 0.7 % of the codes' order-0 entropy
  (48,202 against 47,885 B a row; level 6 with matches: 49,696 B) and writes 3x faster (0.5 ms a
  row). Any deflate stream reads back the same way, so rows written with matches still read.

Decoding is the reverse: inflate, times the scales, inverse DCT, times the signs, plus ``μ``; the
columns of no group are 0 in every row, as for the int8 copy. Each row's rounding error ``‖x − x̂‖``
(computed in the rotated space, where it is the same) goes to ``style_code_err.npy`` as for the
other precisions.

Files, in the fast-mode directory (made to appear atomically by the fast-mode writer):
``style_int6.bin`` (the rows' deflate streams end to end), ``style_int6_offsets.npy`` (int64
[N + 1]), ``style_int6_scales.npy`` (float32 [N, G]), ``style_int6_mu.npy`` and
``style_int6_signs.npy`` ([D'] over the groups' columns), and ``style_int6.json`` last.
"""

from __future__ import annotations

import json
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import scipy.fft

from ..errors import ConfigError
from .certified import GROUP_WIDTH
from .engine import block_columns

__all__ = ["LEVELS", "CLIP", "INT6_FORMAT", "encode_rows", "decode_codes", "unpack", "losses_from_codes",
           "fit_signs_and_mean", "deflate", "write_int6", "Int6Rows"]

INT6_FORMAT = 1
LEVELS = 31          # 6 bits: -31..31
CLIP = 3.0           # the scale puts CLIP x the group's RMS at the last level
LEVEL = 6            # zlib's level: no effect with Huffman coding alone (memLevel 9 sets the block sizes)


def deflate(codes: bytes) -> bytes:
    """One row's codes as a deflate stream of Huffman codes alone (no LZ77 matches)."""
    z = zlib.compressobj(LEVEL, zlib.DEFLATED, 15, 9, zlib.Z_HUFFMAN_ONLY)
    return z.compress(codes) + z.flush()


def _spans(groups) -> list[tuple[int, int]]:
    """Each group's columns in the packed codes [D']."""
    out, at = [], 0
    for a, b in groups:
        out.append((at, at + b - a))
        at += b - a
    return out


def encode_rows(C: np.ndarray, spans, signs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Codes of centred rows ``C`` (float64 [B, D'], the groups' columns side by side): (int8 codes
    [B, D'], float32 scales [B, G], float64 rounding errors ‖y − s·c‖ [B])."""
    codes = np.empty(C.shape, dtype=np.int8)
    scales = np.empty((C.shape[0], len(spans)), dtype=np.float32)
    err2 = np.zeros(C.shape[0])
    for g, (a, b) in enumerate(spans):
        y = scipy.fft.dct(C[:, a:b] * signs[a:b], type=2, norm="ortho", axis=1)
        rms = np.sqrt(np.einsum("ij,ij->i", y, y) / (b - a))
        if not np.isfinite(rms).all():
            raise ConfigError("style rows with non-finite values cannot be stored as int6")
        s = (CLIP * rms / LEVELS).astype(np.float32)
        s[s == 0] = 1.0
        c = np.clip(np.rint(y / s[:, None]), -LEVELS, LEVELS)
        codes[:, a:b] = c
        scales[:, g] = s
        d = y - c * s[:, None].astype(np.float64)
        err2 += np.einsum("ij,ij->i", d, d)
    return codes, scales, np.sqrt(err2)


def decode_codes(codes: np.ndarray, scales: np.ndarray, spans, signs: np.ndarray, mu: np.ndarray,
                 workers: int = 1) -> np.ndarray:
    """Float32 rows [B, D'] (the groups' columns side by side) from their codes: the inverse of
    :func:`encode_rows` up to its rounding."""
    out = np.empty(codes.shape, dtype=np.float32)
    for g, (a, b) in enumerate(spans):
        y = codes[:, a:b].astype(np.float32) * scales[:, g:g + 1]
        out[:, a:b] = scipy.fft.idct(y, type=2, norm="ortho", axis=1, workers=workers) * signs[a:b] + mu[a:b]
    return out


def unpack(packed: np.ndarray, groups, spans, width: int) -> np.ndarray:
    """Rows [B, ``width``] from their groups' columns side by side (``packed`` [B, D']); 0 elsewhere."""
    out = np.zeros((packed.shape[0], width), dtype=np.float32)
    for (a, b), (c, d) in zip(groups, spans):
        out[:, a:b] = packed[:, c:d]
    return out


def losses_from_codes(query_style: np.ndarray, codes: np.ndarray, scales: np.ndarray, groups, spans,
                      signs: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """[k] float64 ``‖q − x̂‖²`` of a query's style vector (float [D]) against the rows whose codes
    and scales are given, computed in the rotated space (the map is orthogonal, so no row is
    decoded): per group ``s²‖c‖² − 2 s c·q̃ + ‖q̃‖²`` with ``q̃ = DCT(signs · (q − μ))``, plus the
    query's ‖q‖² over the columns of no group (the rows are 0 there)."""
    q = np.asarray(query_style, dtype=np.float64)
    qc = block_columns(q[None], groups).astype(np.float64)[0] - mu
    inside = sum(float(np.dot(q[a:b], q[a:b])) for a, b in groups)
    out = np.full(len(codes), max(float(np.dot(q, q)) - inside, 0.0))
    for g, (a, b) in enumerate(spans):
        qt = scipy.fft.dct(qc[a:b] * signs[a:b], type=2, norm="ortho")
        c = codes[:, a:b].astype(np.float64)      # float64: a near-duplicate's small loss keeps its digits
        s = scales[:, g].astype(np.float64)
        out += s * s * np.einsum("ij,ij->i", c, c) - 2.0 * s * (c @ qt) + float(np.dot(qt, qt))
    return np.maximum(out, 0.0)


def _identity(n: int, width: int, groups) -> dict:
    return {"format": INT6_FORMAT, "rows": n, "width": width, "groups": [list(g) for g in groups],
            "levels": LEVELS, "clip": CLIP}


def fit_signs_and_mean(columns, n: int, kept: int, seed: int = 0, chunk: int = 512
                       ) -> tuple[np.ndarray, np.ndarray]:
    """The code's fixed parts for ``n`` rows: random signs (int8 [``kept``]) and the mean row μ (float32
    [``kept``]) of a sample of at most 2,000 rows, drawn in that order from ``seed``. ``columns(rows)``
    gives those rows' groups' columns side by side."""
    rng = np.random.default_rng(seed)
    signs = rng.choice(np.array([-1, 1], dtype=np.int8), size=kept)
    sample = np.sort(rng.choice(n, min(n, 2000), replace=False)) if n else np.zeros(0, np.int64)
    total = np.zeros(kept)
    for a in range(0, len(sample), chunk):
        total += np.asarray(columns(sample[a:a + chunk])).sum(axis=0, dtype=np.float64)
    return signs, (total / max(len(sample), 1)).astype(np.float32)


def write_int6(directory: Path, styles, groups, err: np.ndarray, chunk: int = 512, seed: int = 0,
               workers: int | None = None) -> None:
    """Write the int6 rows of ``styles`` (float32 [N, D], RAM or memory map) into ``directory`` and
    each row's rounding error into ``err`` ([N] float64)."""
    n, width = styles.shape
    if not groups:
        raise ConfigError("no live style columns to store as int6 (every Gram has weight 0)")
    spans = _spans(groups)
    signs, mu = fit_signs_and_mean(lambda rows: block_columns(styles, groups, rows), n, spans[-1][1], seed, chunk)
    signs64 = signs.astype(np.float64)
    offsets = np.zeros(n + 1, dtype=np.int64)
    scales = np.empty((n, len(spans)), dtype=np.float32)
    workers = workers or len(os.sched_getaffinity(0)) or 1
    with open(directory / "style_int6.bin", "wb") as f, ThreadPoolExecutor(workers) as pool:
        for a in range(0, n, chunk):
            C = block_columns(styles, groups, slice(a, a + chunk)).astype(np.float64) - mu
            codes, scales[a:a + len(C)], err[a:a + len(C)] = encode_rows(C, spans, signs64)
            for i, blob in enumerate(pool.map(lambda r: deflate(r.tobytes()), codes), start=a):
                f.write(blob)
                offsets[i + 1] = offsets[i] + len(blob)
        f.flush()
        os.fsync(f.fileno())
    np.save(directory / "style_int6_offsets.npy", offsets)
    np.save(directory / "style_int6_scales.npy", scales)
    np.save(directory / "style_int6_mu.npy", mu)
    np.save(directory / "style_int6_signs.npy", signs)
    (directory / "style_int6.json").write_text(json.dumps(_identity(n, width, groups)))


class Int6Rows:
    """:func:`write_int6`'s rows read back as float32 rows [k, D] (the re-rank reader contract of
    :func:`~dermsearch.search.fast_rows.open_compact_rows`). Raises ``ValueError`` when the files
    are missing pieces or were written for other rows."""

    def __init__(self, directory: Path, width: int):
        info = json.loads((directory / "style_int6.json").read_text())
        n, groups = int(info["rows"]), [tuple(g) for g in info["groups"]]
        if info != _identity(n, width, groups):
            raise ValueError(f"{directory}: int6 rows of another format or width ({info.get('format')})")
        if not groups or any(not 0 <= a < b <= min(width, a + GROUP_WIDTH) for a, b in groups):
            raise ValueError(f"{directory}: int6 column groups outside 1..{GROUP_WIDTH} columns of {width}")
        self.groups, self.spans = groups, _spans(groups)
        self.offsets = np.load(directory / "style_int6_offsets.npy")
        self.scales = np.load(directory / "style_int6_scales.npy", mmap_mode="r")
        self.mu = np.load(directory / "style_int6_mu.npy")
        self.signs = np.load(directory / "style_int6_signs.npy").astype(np.float32)
        self.kept = kept = self.spans[-1][1]
        if (self.offsets.shape != (n + 1,) or self.scales.shape != (n, len(groups)) or self.mu.shape != (kept,)
                or self.signs.shape != (kept,) or (directory / "style_int6.bin").stat().st_size != self.offsets[-1]):
            raise ValueError(f"{directory}: the int6 rows' files do not agree with style_int6.json")
        self.blobs = np.memmap(directory / "style_int6.bin", dtype=np.uint8, mode="r") if self.offsets[-1] else None
        self.shape, self.directory, self.workers = (n, width), directory, len(os.sched_getaffinity(0)) or 1

    def codes(self, rows: np.ndarray) -> np.ndarray:
        """The int8 codes [k, D'] of ``rows``."""
        kept = self.kept
        out = np.empty((len(rows), kept), dtype=np.int8)

        def inflate(r):
            try:
                return zlib.decompressobj().decompress(self.blobs[self.offsets[r]:self.offsets[r + 1]], kept + 1)
            except zlib.error as e:
                return e

        many = len(rows) >= 16 and self.workers > 1           # zlib lets go of the GIL while it inflates
        with ThreadPoolExecutor(self.workers) if many else nullcontext() as pool:
            raws = pool.map(inflate, rows) if many else map(inflate, rows)
            for i, (r, raw) in enumerate(zip(rows, raws)):
                if isinstance(raw, zlib.error) or len(raw) != kept:
                    from .fast_rows import FullRowsError

                    why = f"zlib: {raw}" if isinstance(raw, zlib.error) else f"{len(raw)} codes, not {kept}"
                    raise FullRowsError(f"{self.directory}: int6 row {r} is damaged ({why}); "
                                        "run 'dermsearch optimize' again")
                out[i] = np.frombuffer(raw, dtype=np.int8)
        return out

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        packed = decode_codes(self.codes(rows), np.asarray(self.scales[rows]), self.spans, self.signs, self.mu,
                              self.workers)
        return unpack(packed, self.groups, self.spans, self.shape[1])

    def style_losses(self, query_style: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """[k] float64 ``‖q − x̂‖²`` of the query's style vector against ``rows``' decoded rows
        (:func:`losses_from_codes`: no inverse DCT per row)."""
        rows = np.asarray(rows, dtype=np.int64)
        return losses_from_codes(query_style, self.codes(rows), np.asarray(self.scales[rows]), self.groups,
                                 self.spans, self.signs, self.mu)

    def all(self) -> np.ndarray:
        return self(np.arange(self.shape[0]))
