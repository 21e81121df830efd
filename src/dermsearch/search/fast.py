"""Fast mode for large archives: compressed vectors pick candidates, the exact vectors re-rank them.

Exact search reads every stored byte per query (329 KB per image, almost all of it the 80,712-d
style vector), so at 100,000 images a query reads 33 GB. Fast mode reads instead:

- the PCA projections of the style vectors (``style_dims`` floats per image, the basis fitted on the
  index itself) and of the feature vectors (``feature_dims``), plus each row's exact norm and the
  norm of its PCA residual;
- a count sketch of each style vector's PCA residual (``sketch_dims`` floats): every coordinate of
  the 80,712 goes, with a random sign, into one of ``sketch_dims`` buckets, so that the product of
  two sketches is an unbiased estimate of the product of the residuals. PCA alone drops that
  product, which is what makes near-duplicates near (several images of one lesion, one image
  with small changes: their residuals agree): ``d² ≈ ‖p_x − p_q‖² + ‖r_x‖² + ‖r_q‖² − 2 s_x·s_q``.
  The sketch is linear, so the query's residual sketch costs no second pass over the basis:
  ``s_q = sketch(q − μ) − p_q · sketch(basis)``;
- coarse mask cell counts (``mask_grid``² per image) for an estimate of the Dice overlap;

and with them estimates every component for every candidate. Then, per requested measure:

- stage A: per measure, the best ``wide_candidates`` rows by the estimates (or ``wide_rows`` divided
  by the number of measures asked for, if more; k, if more still) get their feature and mask
  components computed exactly (6 KB a row);
- stage B (measures with style): those rows are re-scored with the exact feature and mask parts and
  the style estimate, and the best ``candidates`` get their exact style vectors read (323 KB a row,
  positioned reads of a memory-mappable file, several threads);

and the returned rows are ranked and scored with exact vectors only (the exact engine on those
rows).

The max-normalisers (ES and SS divide by the largest distance over all candidates) are found the
same way: the ``normaliser_candidates`` rows with the largest upper bound on their distance are
measured exactly. The PCA residual gives every row a guaranteed interval for its distance,
``|d² − est| ≤ 2·r_x·r_q`` (Cauchy-Schwarz on the residuals; the sketch, an estimate, plays no part
here), so each query knows whether its normaliser is certified exact: no unchecked row's upper
bound exceeds the exact maximum found. While some do, up to ``NORMALISER_ROUNDS`` more rounds
measure the rows with the largest such bounds.
When it is not certified, the returned ES/SS are still within a stated bound of the exact ones
(:attr:`FastResult.normaliser_bounds`, tested in ``tests/test_fast.py``).

Files, under ``INDEX/fast/v{version}/`` (one index version; written to a temporary directory and
renamed into place, so a crash never leaves a half-written set)::

    fast.json      config, row count, index version, explained variance
    ids.npy        row ids (fixed-width unicode), checked against the snapshot on open
    features.npy styles.npy masks.npy mask_areas.npy feature_sqnorms.npy style_sqnorms.npy   exact rows
    {feature,style}_{mean,basis,proj,csq,resid}.npy   PCA mean, basis [k, D], projections [N, k],
                                                       ||x − μ||², ||residual|| per row
    style_sketch.npy [N, m]    count sketches of the style residuals; style_sketch_{order,signs,basis}.npy:
                               the hash (a permutation cut into m equal buckets, and signs) and
                               the basis' sketch [k, m]
    mask_cells.npy  [N, G²] float32 pixel counts per cell
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DermsearchError
from ..extract.vectors import Vectors
from .config import FastConfig
from .engine import (
    ExactEngine,
    Query,
    QueryRanking,
    Ranked,
    normalise,
    top_k_rows,
)
from .kernels import blas_single_threaded, row_parallel_products
from .measures import MEASURE_COMPONENTS, measure_scores

__all__ = ["FastConfig", "FastIndex", "FastResult", "FastModeMissing", "fast_dir", "score_error_bound",
           "count_sketch", "cell_counts"]

FAST_FORMAT = 2          # 2: residual sketches
RESIDENT = ("feature_proj", "style_proj", "feature_csq", "style_csq", "feature_resid", "style_resid",
            "feature_sqnorms", "style_sqnorms", "mask_cells", "mask_areas", "style_sketch")
RESIDENT_EXACT_BYTES = 2 << 30
NORMALISER_ROUNDS = 3       # extra rounds of exact checks for a normaliser not yet certified
SMALL = ("ids", "feature_mean", "feature_basis", "style_mean", "style_basis", "style_sketch_order",
         "style_sketch_signs", "style_sketch_basis")


class FastModeMissing(DermsearchError, RuntimeError):
    """The index has no fast-mode files for its current version."""


def index_identity(manifest: dict) -> dict:
    """What tells one index from another in the same directory: its model and creation time."""
    return {"fingerprint": manifest.get("fingerprint"), "created": manifest.get("created")}


def fast_dir(index_directory: str | os.PathLike, version: int) -> Path:
    return Path(index_directory) / "fast" / f"v{version}"


# ---------------------------------------------------------------------------------- shared with the writer (fast_build)
def count_sketch(x: np.ndarray, order: np.ndarray, signs: np.ndarray, buckets: int, block: int = 256) -> np.ndarray:
    """[B, buckets] float32 count sketches of the rows of ``x`` [B, D]."""
    x = np.asarray(x, dtype=np.float32)
    starts = (np.arange(buckets, dtype=np.int64) * x.shape[1]) // buckets
    out = np.empty((x.shape[0], buckets), dtype=np.float32)
    for a in range(0, x.shape[0], block):
        out[a:a + block] = np.add.reduceat(x[a:a + block, order] * signs, starts, axis=1)
    return out


def cell_counts(masks_packed: np.ndarray, side: int, grid: int) -> np.ndarray:
    """[B, grid²] float32 pixel counts of bit-packed square masks."""
    bits = np.unpackbits(np.asarray(masks_packed, dtype=np.uint8), axis=1)[:, : side * side]
    cell = side // grid
    return bits.reshape(-1, grid, cell, grid, cell).sum(axis=(2, 4), dtype=np.int32).reshape(-1, grid * grid
                                                                                            ).astype(np.float32)


# ---------------------------------------------------------------------------------- querying
class RowReader:
    """Reads chosen rows of a 2-D ``.npy`` file with positioned reads from a few threads.

    Faster than fancy-indexing a memory map for scattered rows: no page-table work per 4 KB page,
    and reads from disk overlap when the file is larger than the page cache."""

    def __init__(self, path: Path, threads: int = 4):
        mm = np.load(path, mmap_mode="r")
        self.shape, self.dtype, self.offset = mm.shape, mm.dtype, mm.offset
        self.row_bytes = int(np.prod(mm.shape[1:])) * mm.dtype.itemsize
        del mm
        self.fd = os.open(path, os.O_RDONLY)
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="dermsearch-rows")
        self._local = threading.local()

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        """The rows, in a buffer owned by the calling thread and reused by its next call (a fresh
        array per query would cost a page fault per 4 KB)."""
        buf = getattr(self._local, "buffer", None)
        if buf is None or buf.shape[0] < len(rows):
            buf = self._local.buffer = np.zeros((max(len(rows), 2 * (0 if buf is None else buf.shape[0])),)
                                                + tuple(self.shape[1:]), dtype=self.dtype)
        out = buf[:len(rows)]
        self._read(rows, out)
        return out

    def _read(self, rows: np.ndarray, out: np.ndarray) -> None:
        flat = out.reshape(len(rows), -1).view(np.uint8)

        def read(part: np.ndarray) -> None:
            for j in part:
                view = memoryview(flat[j])
                got = os.preadv(self.fd, [view], self.offset + int(rows[j]) * self.row_bytes)
                if got != self.row_bytes:
                    raise OSError(f"short read of row {rows[j]}")

        parts = np.array_split(np.arange(len(rows)), min(len(rows), self.pool._max_workers) or 1)
        list(self.pool.map(read, parts))

    def close(self) -> None:
        self.pool.shutdown(wait=False)
        os.close(self.fd)


@dataclass
class FastResult:
    """Per measure, the returned rows (best first) and their exact scores; plus what the query read."""

    rows: dict[str, np.ndarray]
    scores: dict[str, np.ndarray]
    components: dict[str, np.ndarray]          # [n_reranked] exact normalised components of `reranked`
    raw: dict[str, np.ndarray]
    reranked: np.ndarray                        # rows scored exactly
    normalisers: dict[str, float]               # the maxima used (ED for ES, LS for SS)
    normaliser_bounds: dict[str, tuple[float, float]] = field(default_factory=dict)  # certified [low, high]
    certified: dict[str, bool] = field(default_factory=dict)


class FastIndex:
    """A fast-mode directory, memory-mapped (see the module doc)."""

    def __init__(self, directory: Path, info: dict, arrays: dict[str, np.ndarray], style_rows: RowReader | None = None):
        self.directory, self.info = directory, info
        self.config = FastConfig(**info["config"])
        self.arrays = arrays
        self.ids = arrays["ids"]
        self.exact = ExactEngine(arrays["features"], arrays["styles"], arrays.get("masks"), arrays.get("mask_areas"),
                                 arrays["feature_sqnorms"], arrays["style_sqnorms"],
                                 style_blocks=info.get("style_blocks"))
        self.style_rows = style_rows or RowReader(directory / "styles.npy")
        self._rerank_rows: dict[str, np.ndarray] | None = None      # see _rerank_arrays
        # float32 copies of per-row numbers every query's estimates use
        self._feature_sqnorms32 = arrays["feature_sqnorms"].astype(np.float32)
        self._feature_norms = np.sqrt(self._feature_sqnorms32)
        self._mask_areas32 = (arrays["mask_areas"].astype(np.float32) if "mask_areas" in arrays
                              else np.zeros(len(self.ids), np.float32))

    @classmethod
    def open(cls, directory: str | os.PathLike) -> FastIndex:
        directory = Path(directory)
        path = directory / "fast.json"
        if not path.is_file():
            raise FastModeMissing(f"{directory} holds no fast-mode files")
        info = json.loads(path.read_text())
        if info.get("format") != FAST_FORMAT:
            raise FastModeMissing(f"{directory}: fast-mode format {info.get('format')} is not {FAST_FORMAT}")
        arrays = {}
        for f in directory.glob("*.npy"):
            if f.stem.startswith("certified_"):           # certified mode's copy (search/certified.py)
                continue
            arrays[f.stem] = np.load(f) if f.stem in SMALL else np.load(f, mmap_mode="r")
        # the arrays every query scans are small: copy them into RAM (a memory map's pages would be
        # evicted by the exact rows streaming through the page cache, then re-read from disk)
        for name in RESIDENT:
            if name in arrays:
                arrays[name] = np.array(arrays[name])
        return cls(directory, info, arrays)

    def __len__(self) -> int:
        return len(self.ids)

    def prefix(self, n: int) -> FastIndex:
        """The same files restricted to their first ``n`` rows (the PCA bases and sketches stay the
        ones fitted on all rows): a smaller archive for benchmarks, sharing the memory."""
        if not 0 < n <= len(self):
            raise ConfigError(f"a prefix of {n} rows: the files hold {len(self)}")
        per_row = {k for k, v in self.arrays.items() if k not in SMALL and v.ndim >= 1 and v.shape[0] == len(self)}
        return FastIndex(self.directory, {**self.info, "rows": n},
                         {k: v[:n] if k in per_row or k == "ids" else v for k, v in self.arrays.items()},
                         self.style_rows)

    def rows(self, manifest: dict) -> dict[str, np.ndarray] | None:
        """The rows' labels as Snapshot columns (paths, diagnosis, melanoma, lesion_id, meta_json),
        or None for files written without them, unreadable, or written for another index than the
        one of ``manifest`` (another model, or an index rebuilt in the same directory)."""
        try:
            r = json.loads((self.directory / "rows.json").read_text())
        except (OSError, ValueError):
            return None
        if r.get("identity") != index_identity(manifest) or r.get("rows") != len(self.ids):
            return None
        obj = {k: np.array(r[k], dtype=object) for k in ("paths", "diagnosis", "lesion_id", "meta_json")}
        obj["melanoma"] = np.array([np.nan if v is None else v for v in r["melanoma"]], dtype=np.float64)
        return obj

    @property
    def bytes_scanned_per_query(self) -> int:
        """Bytes read from every row per query (before the exact re-rank of a few rows)."""
        a = self.arrays
        names = ["feature_proj", "style_proj", "feature_csq", "style_csq", "feature_resid", "style_resid",
                 "feature_sqnorms", "mask_cells", "mask_areas", "feature_basis", "style_basis", "style_sketch",
                 "style_sketch_basis", "style_sketch_order", "style_sketch_signs"]
        return int(sum(a[n].nbytes for n in names if n in a))

    @property
    def resident_bytes(self) -> int:
        """Bytes fast mode keeps in RAM (the exact style rows stay on disk, memory-mapped)."""
        return int(sum(v.nbytes for n, v in self.arrays.items() if n in RESIDENT or not isinstance(v, np.memmap)))

    # --------------------------------------------------------------- estimates
    def _estimate(self, kind: str, vec: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per row: the PCA estimate of the squared distance, its proven error radius (2·r_x·r_q),
        and the estimate that ranks (the PCA one less twice the residual sketches' product, where
        the files have sketches; not bounded, so never used for certification)."""
        a = self.arrays
        centred = np.asarray(vec, np.float32) - a[f"{kind}_mean"]
        p = row_parallel_products(centred[None], a[f"{kind}_basis"])[0]
        cq = float(np.dot(centred.astype(np.float64), centred))
        rq = float(np.sqrt(max(cq - float(np.dot(p.astype(np.float64), p)), 0.0)))
        est = np.maximum(a[f"{kind}_csq"] + cq - 2.0 * row_parallel_products(p[None], a[f"{kind}_proj"])[0], 0.0)
        ranking = est
        if f"{kind}_sketch" in a:
            sb = a[f"{kind}_sketch_basis"]
            sq = count_sketch(centred[None], a[f"{kind}_sketch_order"], a[f"{kind}_sketch_signs"], sb.shape[1])[0]
            sq -= p @ sb
            ranking = np.maximum(est - 2.0 * row_parallel_products(sq[None], a[f"{kind}_sketch"])[0], 0.0)
        return est, 2.0 * a[f"{kind}_resid"] * rq, ranking

    def search(self, query: Query, k: int, measures: Sequence[str], valid: np.ndarray) -> FastResult:
        """The top ``k`` valid rows per measure, exactly scored (see the module doc)."""
        with blas_single_threaded():
            return self._search(query, k, measures, valid)

    def _search(self, query: Query, k: int, measures: Sequence[str], valid: np.ndarray) -> FastResult:
        cfg, a = self.config, self.arrays
        rows_valid = np.flatnonzero(valid)
        if rows_valid.size == 0 or not measures:
            empty = np.zeros(0, dtype=np.int64)
            return FastResult({m: empty for m in measures}, {m: np.zeros(0) for m in measures}, {}, {}, empty, {})
        needs = {c for m in measures for c in MEASURE_COMPONENTS[m]}
        est_f, rad_f, _ = self._estimate("feature", query.feature)
        est_s, rad_s, rank_s = self._estimate("style", query.style) if query.style is not None else (None,) * 3

        # 1. max-normalisers: measure exactly the rows with the largest upper bounds. Candidates are
        # chosen over every row at once, invalid rows scored -inf (cheaper than gathering the valid)
        n_valid = rows_valid.size
        invalid = np.flatnonzero(~valid)

        def largest(scores: np.ndarray, c: int) -> np.ndarray:
            """The rows of the ``c`` largest valid ``scores`` (invalid rows already -inf)."""
            if c >= n_valid:
                return rows_valid
            return np.argpartition(scores, scores.size - c)[scores.size - c:]

        checks = {"euclidean": (est_f, rad_f)}
        if est_s is not None:
            checks["style"] = (est_s, rad_s)
        check_rows, upper = {}, {}
        for comp, (est, rad) in checks.items():
            hi = est + rad
            hi[invalid] = -np.inf
            check_rows[comp], upper[comp] = largest(hi, cfg.normaliser_candidates), hi

        # 2. candidates: estimated components in float32 (they only choose rows)
        qf = float(np.dot(query.feature.astype(np.float64), query.feature))
        f32 = est_f.astype(np.float32)
        max_f_est = float(np.sqrt(np.max(est_f, where=valid, initial=0.0))) or 1.0
        comp_est: dict[str, np.ndarray] = {"euclidean": 1.0 - np.sqrt(f32) / np.float32(max_f_est)}
        denom = self._feature_norms * np.float32(2.0 * np.sqrt(qf))
        cos = np.divide(self._feature_sqnorms32 + np.float32(qf) - f32, denom, out=np.zeros_like(f32),
                        where=denom > 0)
        comp_est["cosine"] = (np.clip(cos, -1.0, 1.0) + 1.0) * np.float32(0.5)
        if est_s is not None:
            top_s = float(np.max(est_s, where=valid, initial=0.0)) or 1.0
            comp_est["style"] = 1.0 - rank_s.astype(np.float32) / np.float32(top_s)
        if "dice" in needs and "mask_cells" in a and query.mask is not None:
            qcells = cell_counts(query.mask[None], self.info["mask_size"], cfg.mask_grid)[0]
            cell_px = (self.info["mask_size"] // cfg.mask_grid) ** 2
            inter = row_parallel_products(qcells[None], a["mask_cells"])[0] * np.float32(2.0 / cell_px)
            total = self._mask_areas32 + np.float32(query.mask_area)
            comp_est["dice"] = np.divide(inter, total, out=np.ones_like(inter), where=total > 0)
        est_scores = rough_scores({c: v for c, v in comp_est.items() if c in needs}, measures)

        def top(scores: np.ndarray, rows: np.ndarray, c: int) -> np.ndarray:
            c = min(c, rows.size)
            return rows[np.argpartition(-scores, c - 1)[:c]] if c < rows.size else rows

        # stage A: the best `wide_candidates` rows of every measure by the estimates; their feature
        # and mask components are then computed exactly (6 KB a row)
        wide, per_measure = {}, max(cfg.wide_candidates, cfg.wide_rows // len(measures), k)
        for m in measures:
            est_scores[m][invalid] = -np.inf
            wide[m] = largest(est_scores[m], per_measure)
        rerank = np.unique(np.concatenate(list(wide.values()) + list(check_rows.values())))
        raw = self._exact_raw(query, rerank, with_style=False)
        # stage B (style measures): re-score stage A's rows with their exact feature and mask
        # components and the style estimate, keep the best `candidates`, and read their style rows
        # (323 KB each) with the normaliser checks
        with_style = [m for m in measures if "style" in MEASURE_COMPONENTS[m]]
        style_rows = np.zeros(0, dtype=np.int64)
        if est_s is not None:
            e2 = raw["euclidean"] ** 2
            max_f = float(np.sqrt(max(e2[valid[rerank]].max(), float(np.max(est_f, where=valid, initial=0.0)))))
            refined = _components({c: v for c, v in raw.items() if c != "style"}, {"euclidean": max_f})
            refined["style"] = comp_est["style"][rerank]
            refined_scores = measure_scores(refined, with_style)
            picked = []
            for m in with_style:
                pos = np.flatnonzero(np.isin(rerank, wide[m]))
                picked.append(top(refined_scores[m][pos], rerank[pos], max(cfg.candidates, k)))
            # and the exact top k of the measures without style (known now: their components are
            # exact for these rows), whose hits report a style too: one read for all
            nonstyle = [m for m in measures if m not in with_style]
            if nonstyle:
                e2v = np.where(valid[rerank], raw["euclidean"] ** 2, np.nan)
                ed_top = float(np.sqrt(np.nanmax(e2v))) if np.isfinite(e2v).any() else 0.0
                exact_scores = measure_scores(_components({c: v for c, v in raw.items() if c != "style"},
                                                          {"euclidean": ed_top}), nonstyle)
                picked += [rerank[top_k_rows(exact_scores[m], valid[rerank] & ~np.isnan(exact_scores[m]), k)[0]]
                           for m in nonstyle]
            style_rows = np.unique(np.concatenate(picked + [check_rows["style"]]))

        # 3. exact style losses of those rows, from the memory-mapped exact vectors
        ls = np.full(rerank.size, np.nan)
        if est_s is not None:
            ls[np.searchsorted(rerank, style_rows)] = self._exact_raw(query, style_rows, with_style=True)["style"]
            raw["style"] = ls
        normalisers, bounds, certified = {}, {}, {}
        in_valid = valid[rerank]
        for comp_name, known_rows in (("euclidean", rerank), ("style", style_rows)):
            if comp_name not in checks:
                continue
            vals = raw["style"] if comp_name == "style" else raw["euclidean"] ** 2   # squared, like the bounds
            found = float(np.nanmax(np.where(in_valid, vals, np.nan)))
            unchecked_hi = upper[comp_name].copy()
            unchecked_hi[known_rows] = -np.inf
            # rows whose upper bound still exceeds the largest exact value: measure them too (the
            # largest bounds first, a few rounds), so that the normaliser is certified more often;
            # such far rows matter only for the maximum, not for any top k
            for _ in range(NORMALISER_ROUNDS):
                over = np.flatnonzero(unchecked_hi > found)
                if not over.size:
                    break
                more = np.sort(over[np.argsort(-unchecked_hi[over], kind="stable")[:cfg.normaliser_candidates]])
                exact_more = (self._exact_raw(query, more, with_style=True)["style"] if comp_name == "style"
                              else self._exact_raw(query, more, with_style=False)["euclidean"] ** 2)
                found = max(found, float(exact_more.max()))
                unchecked_hi[more] = -np.inf
            hi = max(found, float(unchecked_hi.max()))
            certified[comp_name] = hi <= found
            root = (lambda v: v) if comp_name == "style" else np.sqrt
            normalisers[comp_name], bounds[comp_name] = float(root(found)), (float(root(found)), float(root(hi)))
        comp = _components(raw, normalisers)
        scores = measure_scores(comp, measures)
        rows_out, scores_out = {}, {}
        for m in measures:
            order = top_k_rows(scores[m], in_valid & ~np.isnan(scores[m]), k)[0]    # rerank is sorted: ties by row
            rows_out[m], scores_out[m] = rerank[order], scores[m][order]
        # every hit reports all four components: fill the style of returned rows not read yet
        if est_s is not None:
            hits = np.unique(np.concatenate(list(rows_out.values())))
            missing = hits[np.isnan(ls[np.searchsorted(rerank, hits)])]
            if missing.size:
                ls[np.searchsorted(rerank, missing)] = self._exact_raw(query, missing, with_style=True)["style"]
                comp["style"] = _components({"style": ls}, normalisers)["style"]
        return FastResult(rows_out, scores_out, comp, raw, rerank, normalisers, bounds, certified)

    def _rerank_arrays(self) -> dict[str, np.ndarray]:
        """The exact features and masks fast mode re-ranks from: copied into RAM on the first fast
        query while they are small (6 KB a row: 0.6 GB at 100k; a query reads ~1,000 scattered rows,
        and from a memory map every 4 KB page would fault in: 7 ms a query at 100k), else the
        memory maps. Exact search over the same files keeps reading the memory maps."""
        if self._rerank_rows is None:
            a = self.arrays
            names = [n for n in ("features", "masks") if n in a]
            small = sum(a[n].nbytes for n in names) <= RESIDENT_EXACT_BYTES
            self._rerank_rows = {n: np.array(a[n]) if small else a[n] for n in names}
        return self._rerank_rows

    def _exact_raw(self, query: Query, rows: np.ndarray, with_style: bool) -> dict[str, np.ndarray]:
        """Exact raw values for these rows (sorted), read from the memory maps: the style loss
        only (``with_style``), or the feature and mask components."""
        e, a = self.exact, self.arrays
        if with_style:
            sub = ExactEngine(e.features[:0], self.style_rows(rows), feature_sqnorms=a["feature_sqnorms"][:0],
                              style_sqnorms=a["style_sqnorms"][rows], product=row_parallel_products)
            return {"style": sub.raw(Query.batch([query]), ["style"])["style"][0]}
        r = self._rerank_arrays()
        sub = ExactEngine(r["features"][rows], None, None if "masks" not in r else r["masks"][rows],
                          None if e.mask_areas is None else e.mask_areas[rows], a["feature_sqnorms"][rows],
                          product=row_parallel_products)
        return {name: v[0] for name, v in sub.raw(Query.batch([query]), ["euclidean", "cosine", "dice"]).items()}

    # ------------------------------------------------------- the engine contract
    @property
    def kernel(self) -> str | None:
        return self.exact.kernel

    @property
    def components(self) -> tuple[str, ...]:
        return self.exact.components

    def take(self, rows) -> Vectors:
        return self.exact.take(rows)

    def rank(self, batch: Vectors, valid: np.ndarray, measures: Sequence[str], k: int) -> list[QueryRanking]:
        """The contract (:class:`~dermsearch.search.engine.Engine`), one query at a time; each
        ranking's notes say how many rows were re-ranked and whether its normalisers are certified."""
        if k <= 0:
            raise ConfigError("fast mode returns the top k rows (k >= 1); use exact mode to rank every row (k=0)")
        out = []
        for j in range(len(batch)):
            r = self.search(Query.from_row(batch, j), k, measures, valid[j])
            per = {}
            for m in measures:
                at = np.searchsorted(r.reranked, r.rows[m])
                per[m] = Ranked(r.rows[m], r.scores[m], {c: v[at] for c, v in r.components.items()},
                                {c: v[at] for c, v in r.raw.items()})
            notes = [f"fast mode: {r.reranked.size} rows re-ranked with exact vectors"]
            for comp, ok in r.certified.items():
                lo, hi = r.normaliser_bounds[comp]
                notes.append(f"{comp} normaliser certified exact" if ok else
                             f"{comp} normaliser not certified: exact max in [{lo:.6g}, {hi:.6g}]")
            out.append(QueryRanking(per, notes))
        return out


def rough_scores(components: dict[str, np.ndarray], measures: Sequence[str]) -> dict[str, np.ndarray]:
    """The measures of estimated components, in float32 and without the exact function's guards (a
    part <= 0 gives a score of about 0): they only choose candidates, over every row."""
    inv = {c: np.reciprocal(np.maximum(v.astype(np.float32), np.float32(1e-12)))
           for c, v in components.items() if any(len(MEASURE_COMPONENTS[m]) > 1 and c in MEASURE_COMPONENTS[m]
                                                  for m in measures)}
    out = {}
    for m in measures:
        parts = MEASURE_COMPONENTS[m]
        if len(parts) == 1:
            out[m] = components[parts[0]].copy()
            continue
        total = inv[parts[0]].copy()
        for c in parts[1:]:
            total += inv[c]
        out[m] = np.float32(len(parts)) / total
    return out


def _components(raw: dict[str, np.ndarray], tops: dict[str, float]) -> dict[str, np.ndarray]:
    """ES, CSnew, SS, DC of one query's raw values (1-D) for scalar maxima."""
    comp = normalise({c: v[None] for c, v in raw.items()}, {c: np.array([t]) for c, t in tops.items()})
    return {c: v[0] for c, v in comp.items()}


def score_error_bound(value: float, low: float, high: float) -> float:
    """Largest |returned − exact| of a max-normalised score 1 − v/max, when the max used is
    ``low`` and the exact max lies in [low, high]."""
    if low <= 0:
        return 0.0
    return float(value) * (1.0 / low - 1.0 / high)
