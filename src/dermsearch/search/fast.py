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
  the style estimate, and the best ``candidates`` get their style vectors read at the stored
  precision (323 KB a row in float32: positioned reads of a memory-mappable file, or a ``take``
  from the index's table; :mod:`.fast_rows` for fp16 and int8);

and the returned rows are ranked and scored with exact vectors only (the exact engine on those
rows; from compact re-rank rows, the returned scores are made exact from the full rows where
there are any: :func:`~.fast_rows.exact_hits`).

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
    features.npy masks.npy mask_areas.npy feature_sqnorms.npy style_sqnorms.npy   exact rows
    styles.npy (where full_rows is "here"), style_fp16.npy, certified_*.npy, style_code_err.npy: .fast_rows
    {feature,style}_{mean,basis,proj,csq,resid}.npy   PCA mean, basis [k, D], projections [N, k],
                                                       ||x − μ||², ||residual|| per row
    style_sketch.npy [N, m]    count sketches of the style residuals; style_sketch_{order,signs,basis}.npy:
                               the hash (a permutation cut into m equal buckets, and signs) and
                               the basis' sketch [k, m]
    mask_cells.npy  [N, G²] pixel counts per cell, float32; or float16 (FastConfig.code_precision, the
                    sketches too) each count / the cell's pixels (fast.json: mask_cells_unit "fraction")
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DermsearchError
from ..extract.vectors import Vectors
from ..index.fastfiles import FAST_FORMAT, READ_FAST_FORMATS, fast_dir, index_identity
from . import fast_rerank, fast_rows
from .config import FastConfig
from .engine import ExactEngine, Query, QueryRanking, Ranked, top_k_rows
from .fast_parts import (
    FastResult,
    RowReader,
    SearchPass,
    cell_counts,
    components_of,
    count_sketch,
    estimated_component,
    rough_scores,
    score_error_bound,
    style_candidates,
    top_rows,
)
from .kernels import blas_single_threaded, code_products, row_parallel_products
from .measures import stored_components

__all__ = ["read_info", "FastConfig", "FastIndex", "FastResult", "FastModeMissing", "fast_dir", "score_error_bound",
           "count_sketch", "cell_counts", "FAST_FORMAT", "index_identity", "RowReader"]

RESIDENT = ("feature_proj", "style_proj", "feature_csq", "style_csq", "feature_resid", "style_resid",
            "feature_sqnorms", "style_sqnorms", "mask_cells", "mask_areas", "style_sketch", "style_code_err")
RESIDENT_EXACT_BYTES = 2 << 30
NORMALISER_ROUNDS = 3       # extra rounds of exact checks for a normaliser not yet certified
SMALL = ("ids", "feature_mean", "feature_basis", "style_mean", "style_basis", "style_sketch_order",
         "style_sketch_signs", "style_sketch_basis")


class FastModeMissing(DermsearchError, RuntimeError):
    """The index has no fast-mode files for its current version."""


def read_info(directory: Path) -> dict:
    """``fast.json`` of a fast-mode directory; FastModeMissing when there is none or of another format."""
    path = directory / "fast.json"
    if not path.is_file():
        raise FastModeMissing(f"{directory} holds no fast-mode files")
    info = json.loads(path.read_text())
    if info.get("format") not in READ_FAST_FORMATS:
        raise FastModeMissing(f"{directory}: fast-mode format {info.get('format')} is not {FAST_FORMAT}")
    return info


class FastIndex:
    """A fast-mode directory, memory-mapped (see the module doc)."""

    def __init__(self, directory: Path, info: dict, arrays: dict[str, np.ndarray], style_rows: RowReader | None = None,
                 full_rows=None):
        """``style_rows``, ``full_rows``: readers of the re-rank and full rows (None: from ``info``)."""
        self.directory, self.info = directory, info
        self.config = FastConfig(**info["config"])
        self.precision = info.get("precision", "float32")
        self.arrays = arrays
        self.ids = arrays["ids"]
        if style_rows is None:
            shape = (len(self.ids), arrays["style_mean"].shape[0])
            full_rows = fast_rows.open_full_rows(directory, info, shape)
            style_rows = fast_rows.open_compact_rows(directory, self.precision, shape[1]) or full_rows
        self.style_rows, self.full_rows = style_rows, full_rows
        self._exact: ExactEngine | None = None
        if "styles" in arrays:          # memory-mapped here: the exact engine costs nothing to open
            self._exact = self._exact_engine(arrays["styles"])
        self._rerank_rows: dict[str, np.ndarray] | None = None      # see _rerank_arrays
        # float32 copies of per-row numbers every query's estimates use
        self._feature_sqnorms32 = arrays["feature_sqnorms"].astype(np.float32)
        self._feature_norms = np.sqrt(self._feature_sqnorms32)
        self._mask_areas32 = (arrays["mask_areas"].astype(np.float32) if "mask_areas" in arrays
                              else np.zeros(len(self.ids), np.float32))

    @classmethod
    def open(cls, directory: str | os.PathLike, rows: tuple[int, int] | None = None) -> FastIndex:
        """The fast-mode files in ``directory``; ``rows=(start, stop)``: those rows only, as an index
        of their own (a shard: its per-row arrays sliced, the PCA bases and sketches those fitted on
        all rows, the re-rank and full rows read at their place in the whole)."""
        directory = Path(directory)
        info = read_info(directory)
        arrays = {}
        for f in directory.glob("*.npy"):
            if f.stem.startswith("certified_"):           # certified mode's copy (search/certified.py)
                continue
            arrays[f.stem] = np.load(f) if f.stem in SMALL else np.load(f, mmap_mode="r")
        n = arrays["ids"].shape[0]
        shape = (n, arrays["style_mean"].shape[0])
        full = fast_rows.open_full_rows(directory, info, shape)
        style = fast_rows.open_compact_rows(directory, info.get("precision", "float32"), shape[1]) or full
        if rows is not None:
            start, stop = rows
            if not 0 <= start <= stop <= n:
                raise ConfigError(f"rows {start}-{stop}: the fast-mode files of {directory} hold {n}")
            for name, a in arrays.items():
                if (name == "ids" or name not in SMALL) and a.ndim >= 1 and a.shape[0] == n:
                    arrays[name] = a[start:stop]
            info = {**info, "rows": stop - start}
            same = style is full
            full = None if full is None else fast_rows.RowRange(full, start, stop)
            style = full if same else fast_rows.RowRange(style, start, stop)
        # the arrays every query scans are small: copy them into RAM (a memory map's pages would be
        # evicted by the exact rows streaming through the page cache, then re-read from disk)
        for name in (*RESIDENT, "ids"):
            if name in arrays:
                arrays[name] = np.array(arrays[name])
        return cls(directory, info, arrays, style, full)

    def __len__(self) -> int:
        return len(self.ids)

    def _exact_engine(self, styles) -> ExactEngine:
        a = self.arrays
        return ExactEngine(a["features"], styles, a.get("masks"), a.get("mask_areas"), a["feature_sqnorms"],
                           a["style_sqnorms"], style_blocks=self.info.get("style_blocks"))

    @property
    def exact(self) -> ExactEngine:
        """The exact engine: style rows memory-mapped from here, else read whole on first use."""
        if self._exact is None:
            if self.full_rows is None:
                raise ConfigError(f"{self.directory}: the fast-mode files keep no full style rows "
                                  f"({self.precision} only): exact and certified search need them")
            rows = self.full_rows.all()
            self._exact = self._exact_engine(rows[:len(self)] if rows.shape[0] != len(self) else rows)
        return self._exact

    @property
    def exact_mapped(self) -> bool:
        """Whether :attr:`exact` opens without reading every style row."""
        return self._exact is not None

    def prefix(self, n: int) -> FastIndex:
        """The same files restricted to their first ``n`` rows (the PCA bases and sketches stay the
        ones fitted on all rows): a smaller archive for benchmarks, sharing the memory."""
        if not 0 < n <= len(self):
            raise ConfigError(f"a prefix of {n} rows: the files hold {len(self)}")
        per_row = {k for k, v in self.arrays.items() if k not in SMALL and v.ndim >= 1 and v.shape[0] == len(self)}
        return FastIndex(self.directory, {**self.info, "rows": n},
                         {k: v[:n] if k in per_row or k == "ids" else v for k, v in self.arrays.items()},
                         self.style_rows, self.full_rows)

    def rows(self, manifest: dict) -> dict[str, np.ndarray] | None:
        """The rows' labels as Snapshot columns (paths, diagnosis, melanoma, lesion_id, meta_json),
        or None for files written without them, unreadable, or written for another index than the
        one of ``manifest`` (another model, or an index rebuilt in the same directory)."""
        return fast_rerank.fast_labels(self.directory, manifest, len(self.ids))

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
            scale = self.info.get(f"{kind}_sketch_scale", 1.0)          # fp16 sketches: stored x a power of two
            ranking = np.maximum(est - 2.0 * code_products(sq, a[f"{kind}_sketch"], scale), 0.0)
        return est, 2.0 * a[f"{kind}_resid"] * rq, ranking

    def search(self, query: Query, k: int, measures: Sequence[str], valid: np.ndarray) -> FastResult:
        """The top ``k`` valid rows per measure, exactly scored (see the module doc)."""
        with blas_single_threaded():
            return self._search(query, k, measures, valid)

    def _search(self, query: Query, k: int, measures: Sequence[str], valid: np.ndarray) -> FastResult:
        p = self._pass(query, k, measures, valid)
        if p.rows_valid.size == 0 or not measures:
            empty = np.zeros(0, dtype=np.int64)
            return FastResult({m: empty for m in measures}, {m: np.zeros(0) for m in measures}, {}, {}, empty, {})
        check_rows, upper = self._normaliser_candidates(p)
        comp_est = self._estimated_components(p)
        wide = self._wide_rows(p, comp_est)
        # stage A's rows and the normaliser checks: their feature and mask components exactly (6 KB a row)
        rerank = np.unique(np.concatenate(list(wide.values()) + list(check_rows.values())))
        raw = self._exact_raw(query, rerank, with_style=False)
        style_rows = np.zeros(0, dtype=np.int64)
        exact_ls = np.full(rerank.size, self.precision == "float32")     # style losses from float32 rows
        if p.est_s is not None:
            est_f2_max = float(np.max(p.est_f, where=p.valid, initial=0.0))     # 2. stage B (fast_parts)
            picked = style_candidates(raw, rerank, p.valid, p.measures, wide, comp_est["style"][rerank], est_f2_max,
                                      self.config.candidates, p.k)
            style_rows = np.unique(np.concatenate(picked + [check_rows["style"]]))
            # 3. style losses of those rows, from the re-rank rows at the stored precision
            raw["style"] = np.full(rerank.size, np.nan)
            raw["style"][np.searchsorted(rerank, style_rows)] = self._exact_raw(query, style_rows, True)["style"]
            fast_rerank.exact_near_max(self, query, p.valid, raw, rerank, exact_ls)
        normalisers, bounds, certified = {}, {}, {}
        for comp_name, known_rows in (("euclidean", rerank), ("style", style_rows)):
            if comp_name in upper:
                normalisers[comp_name], bounds[comp_name], certified[comp_name] = self._normaliser(
                    p, comp_name, raw, rerank, known_rows, upper[comp_name])
        if self.precision != "float32" and self.full_rows is None:
            certified.pop("style", None)        # a maximum of compact style losses: not the exact one
        comp = components_of(raw, normalisers)
        rows_out, scores_out = top_rows(comp, measures, rerank, valid, k)
        if p.est_s is not None:
            fast_rerank.fill_style(self, query, rows_out, rerank, raw, comp, normalisers)
            if self.precision != "float32" and self.full_rows is not None:
                comp, rows_out, scores_out = fast_rerank.exact_hits(self, query, measures, rerank, valid, k, raw,
                                                                  normalisers, exact_ls, rows_out)
        result = FastResult(rows_out, scores_out, comp, raw, rerank, normalisers, bounds, certified)
        if self.precision != "float32" and p.est_s is not None:
            result.style_precision = self.precision if self.full_rows is None else "float32"
        return result

    def _pass(self, query: Query, k: int, measures: Sequence[str], valid: np.ndarray) -> SearchPass:
        """The query's estimates for every row (nothing computed when there is nothing to rank)."""
        p = SearchPass(query, k, tuple(measures), valid, np.flatnonzero(valid), np.flatnonzero(~valid))
        if p.rows_valid.size and measures:
            p.est_f, p.rad_f, _ = self._estimate("feature", query.feature)
            if query.style is not None:
                p.est_s, p.rad_s, p.rank_s = self._estimate("style", query.style)
        return p

    def _normaliser_candidates(self, p: SearchPass) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """1. max-normalisers: per normalised component (ED, and LS with a query style), the rows
        with the largest upper bounds to measure exactly, and every row's upper bound (invalid rows
        -inf: chosen over every row at once, cheaper than gathering the valid)."""
        checks = {"euclidean": (p.est_f, p.rad_f)}
        if p.est_s is not None:
            checks["style"] = (p.est_s, p.rad_s)
        check_rows, upper = {}, {}
        for comp, (est, rad) in checks.items():
            hi = est + rad
            hi[p.invalid] = -np.inf
            check_rows[comp], upper[comp] = p.largest(hi, self.config.normaliser_candidates), hi
        return check_rows, upper

    def _estimated_components(self, p: SearchPass) -> dict[str, np.ndarray]:
        """2. candidates: every row's estimated components in float32 (they only choose rows)."""
        query, valid, est_f, a = p.query, p.valid, p.est_f, self.arrays
        qf = float(np.dot(query.feature.astype(np.float64), query.feature))
        f32 = est_f.astype(np.float32)
        max_f_est = float(np.sqrt(np.max(est_f, where=valid, initial=0.0))) or 1.0
        comp_est: dict[str, np.ndarray] = {"euclidean": estimated_component(np.sqrt(f32), max_f_est)}
        denom = self._feature_norms * np.float32(2.0 * np.sqrt(qf))
        cos = np.divide(self._feature_sqnorms32 + np.float32(qf) - f32, denom, out=np.zeros_like(f32),
                        where=denom > 0)
        comp_est["cosine"] = (np.clip(cos, -1.0, 1.0) + 1.0) * np.float32(0.5)
        if p.est_s is not None:
            top_s = float(np.max(p.est_s, where=valid, initial=0.0)) or 1.0
            comp_est["style"] = estimated_component(p.rank_s.astype(np.float32), top_s)
        if "dice" in p.needs and "mask_cells" in a and query.mask is not None:
            grid = self.config.mask_grid
            qcells = cell_counts(query.mask[None], self.info["mask_size"], grid)[0]
            cell_px = (self.info["mask_size"] // grid) ** 2
            frac = self.info.get("mask_cells_unit", "count") == "fraction"      # fp16 codes: count / cell_px
            q = qcells / np.float32(cell_px) if frac else qcells
            inter = code_products(q, a["mask_cells"]) * np.float32(2.0 * cell_px if frac else 2.0 / cell_px)
            total = self._mask_areas32 + np.float32(query.mask_area)
            comp_est["dice"] = np.divide(inter, total, out=np.ones_like(inter), where=total > 0)
        return comp_est

    def _wide_rows(self, p: SearchPass, comp_est: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Stage A: per measure, the best ``wide_candidates`` rows by the estimates (or more: see
        the module doc)."""
        cfg = self.config
        est_scores = rough_scores({c: v for c, v in comp_est.items() if c in p.needs}, p.measures)
        per_measure = max(cfg.wide_candidates, cfg.wide_rows // len(p.measures), p.k)
        wide = {}
        for m in p.measures:
            est_scores[m][p.invalid] = -np.inf
            wide[m] = p.largest(est_scores[m], per_measure)
        return wide

    def _normaliser(self, p: SearchPass, comp_name: str, raw: dict[str, np.ndarray], rerank: np.ndarray,
                    known_rows: np.ndarray, upper: np.ndarray) -> tuple[float, tuple[float, float], bool]:
        """The max-normaliser of ED or LS from the rows measured exactly, its certified interval
        and whether it is certified exact. Rows whose upper bound still exceeds the largest exact
        value are measured too (the largest bounds first, up to ``NORMALISER_ROUNDS`` rounds), so
        that it is certified more often; such far rows matter only for the maximum, not a top k."""
        style = comp_name == "style"
        vals = raw["style"] if style else raw["euclidean"] ** 2          # squared, like the bounds
        found = float(np.nanmax(np.where(p.valid[rerank], vals, np.nan)))
        unchecked_hi = upper.copy()
        unchecked_hi[known_rows] = -np.inf
        for _ in range(NORMALISER_ROUNDS):
            over = np.flatnonzero(unchecked_hi > found)
            if not over.size:
                break
            valid_over = np.ones(over.size, dtype=bool)
            more = np.sort(over[top_k_rows(unchecked_hi[over], valid_over, self.config.normaliser_candidates)[0]])
            exact_more = (self._exact_raw(p.query, more, with_style=True, full=True)["style"] if style
                          else self._exact_raw(p.query, more, with_style=False)["euclidean"] ** 2)
            found = max(found, float(exact_more.max()))
            unchecked_hi[more] = -np.inf
        hi = max(found, float(unchecked_hi.max()))
        root = (lambda v: v) if style else np.sqrt
        return float(root(found)), (float(root(found)), float(root(hi))), hi <= found

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

    def _exact_raw(self, query: Query, rows: np.ndarray, with_style: bool, full: bool = False
                   ) -> dict[str, np.ndarray]:
        """Exact raw values for these rows (sorted), read from the memory maps: the style loss
        only (``with_style``: from the re-rank rows at the stored precision, or with ``full`` from
        the full float32 rows where there are any), or the feature and mask components."""
        a = self.arrays
        if with_style:
            exact = self.precision == "float32" or (full and self.full_rows is not None)
            reader = self.full_rows if full and self.full_rows is not None else self.style_rows
            if not exact and self.precision == "int6" and query.style is not None:   # in the codes' own space
                return {"style": reader.style_losses(query.style, rows)}
            styles = reader(rows)
            sub = ExactEngine(a["features"][:0], styles, feature_sqnorms=a["feature_sqnorms"][:0],
                              style_sqnorms=a["style_sqnorms"][rows] if exact else None,
                              product=row_parallel_products)
            return {"style": sub.raw(Query.batch([query]), ["style"])["style"][0]}
        r = self._rerank_arrays()
        areas = a.get("mask_areas")
        sub = ExactEngine(r["features"][rows], None, None if "masks" not in r else r["masks"][rows],
                          None if areas is None else np.asarray(areas[rows]), a["feature_sqnorms"][rows],
                          product=row_parallel_products)
        return {name: v[0] for name, v in sub.raw(Query.batch([query]), ["euclidean", "cosine", "dice"]).items()}

    # ------------------------------------------------------- the engine contract
    @property
    def kernel(self) -> str | None:
        return self._exact.kernel if self._exact is not None else None

    @property
    def components(self) -> tuple[str, ...]:
        return stored_components(True, "masks" in self.arrays)

    def take(self, rows) -> Vectors:
        """These rows' vectors (the style rows from the full rows where there are any)."""
        return self._exact.take(rows) if self._exact is not None else fast_rerank.take_rows(self, rows)

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
            notes = fast_rerank.ranking_notes(r, self.precision)
            for comp, ok in r.certified.items():
                lo, hi = r.normaliser_bounds[comp]
                notes.append(f"{comp} normaliser certified exact" if ok else
                             f"{comp} normaliser not certified: exact max in [{lo:.6g}, {hi:.6g}]")
            out.append(QueryRanking(per, notes))
        return out


