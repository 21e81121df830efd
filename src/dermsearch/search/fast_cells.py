"""Fast mode's coarse partition (*cells*): past ``FastConfig.cells_from`` rows a query scans the codes
of the rows near it, not every row (:mod:`.fast`).

At a million rows the first pass of fast mode (products with 3.2 KB of codes per row, then a
dozen selections and elementwise passes over every row) costs 3.5x the 100 ms a query may take
(docs/performance.md). ``optimize`` therefore groups the rows, past ``cells_from`` of them, into
cells of about ``cell_rows`` rows: k-means (scikit-learn's ``MiniBatchKMeans``) on the joint PCA
projections of the feature and style vectors, each part scaled to unit mean square so that both
count, fitted on a sample of 64 rows per cell. Per cell it keeps the centre (its feature and style
parts), the largest distance of a member's projection from it (``radius``) and the largest PCA
residual norm of a member (``resid``).

A query then scans (:func:`search`), per component its measures rank by:

- feature (ED, CS) and style (SS): the cells whose centres lie nearest to the query's projection,
  nearest first, until they hold ``probe`` of the rows;
- mask (DC): the ``probe`` share of rows with the best Dice estimate from 4 x 4 coarse cell counts
  (a 64-byte code per row, summed from the 16 x 16 counts fast mode keeps);
- the two cells with the largest bound on each max-normalised distance (ED, LS), where the
  maxima are most likely to lie;

and runs fast mode's own steps on those rows (:meth:`FastIndex.view <.fast.FastIndex.view>`). The
returned scores are still exact; what a cell can change is *which* rows are found (recall is
measured, not proven: ``benchmarks/bench_scaling.py``) and the max-normalisers. Those stay
certified where they can be: every row of an unscanned cell lies within

    d² ≤ (‖p_q − c‖ + radius)² + (r_q + resid)²

of the query (triangle inequality in the PCA subspace, Cauchy-Schwarz on the residuals), so a
normaliser is certified exact only when no unscanned cell's bound exceeds the maximum found, and
otherwise its stated interval reaches that bound (:attr:`FastResult.normaliser_bounds`).

Files, beside fast mode's own: ``cell_rows.npy`` (the row numbers, cell by cell, ascending within
a cell), ``cell_starts.npy`` [C + 1], ``cell_{feature,style}_{centre,radius,resid}.npy``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .engine import Query, largest
from .fast_parts import FastResult, cell_counts
from .measures import MEASURE_COMPONENTS

__all__ = ["cell_count", "write_cells", "Cells", "search", "CELL_ARRAYS"]

CELL_ARRAYS = ("cell_rows", "cell_starts", "cell_feature_centre", "cell_style_centre", "cell_feature_radius",
               "cell_style_radius", "cell_feature_resid", "cell_style_resid")
SAMPLE_PER_CELL = 64
BOUND_CELLS = 2             # cells with the largest distance bounds scanned for each max-normaliser
COARSE_GRID = 4             # mask cells per side of the Dice prefilter
SLACK = 1.0 + 1e-5          # float32 rounding of the radii and projections


def cell_count(rows: int, config) -> int:
    """How many cells ``optimize`` makes for ``rows`` rows (0: none, below ``cells_from``)."""
    if not config.cells_from or rows < config.cells_from:
        return 0
    return max(2, int(round(rows / config.cell_rows)))


def _assign(joint: Callable[[np.ndarray], np.ndarray], n: int, centres: np.ndarray, chunk: int = 65_536) -> np.ndarray:
    """The nearest centre of every row (squared Euclidean in the joint space)."""
    c2 = np.einsum("ij,ij->i", centres, centres)
    out = np.empty(n, dtype=np.int32)
    for s in range(0, n, chunk):
        x = joint(np.arange(s, min(n, s + chunk)))
        out[s:s + len(x)] = np.argmin(c2[None, :] - 2.0 * (x @ centres.T), axis=1)
    return out


def write_cells(directory: Path, info: dict, config, say: Callable[[str], None] = lambda _m: None,
                chunk: int = 65_536) -> None:
    """Fit and write the cells of the fast-mode files in ``directory`` (their projections and
    residual norms written already); records them in ``info`` (``fast.json``). Nothing below
    ``cells_from`` rows."""
    from sklearn.cluster import MiniBatchKMeans

    n = int(info["rows"])
    count = cell_count(n, config)
    if not count:
        return
    t0 = time.perf_counter()
    proj = {k: np.load(directory / f"{k}_proj.npy", mmap_mode="r") for k in ("feature", "style")}
    resid = {k: np.load(directory / f"{k}_resid.npy", mmap_mode="r") for k in ("feature", "style")}
    rng = np.random.default_rng(config.seed)
    sample = np.sort(rng.choice(n, size=min(n, SAMPLE_PER_CELL * count), replace=False))
    scale = {k: float(np.sqrt(np.mean(np.sum(np.square(p[sample], dtype=np.float64), axis=1)))) or 1.0
             for k, p in proj.items()}

    def joint(rows: np.ndarray) -> np.ndarray:
        return np.hstack([np.asarray(proj[k][rows], np.float32) / np.float32(scale[k]) for k in ("feature", "style")])

    say(f"fitting {count} cells on {len(sample)} rows")
    km = MiniBatchKMeans(count, random_state=config.seed, n_init=1, batch_size=4096, max_iter=50,
                         compute_labels=False).fit(joint(sample))
    centres = km.cluster_centers_.astype(np.float32)
    assign = _assign(joint, n, centres, chunk)
    order = np.argsort(assign, kind="stable")
    starts = np.concatenate([[0], np.cumsum(np.bincount(assign, minlength=count))]).astype(np.int64)
    kf = proj["feature"].shape[1]
    parts = {"feature": centres[:, :kf] * np.float32(scale["feature"]),
             "style": centres[:, kf:] * np.float32(scale["style"])}
    out = {"cell_rows": order.astype(np.int64), "cell_starts": starts}
    for k, centre in parts.items():
        radius = np.zeros(count, dtype=np.float64)
        rmax = np.zeros(count, dtype=np.float64)
        for s in range(0, n, chunk):
            a = assign[s:s + chunk]
            d = np.linalg.norm(np.asarray(proj[k][s:s + chunk], np.float64) - centre[a], axis=1)
            np.maximum.at(radius, a, d)
            np.maximum.at(rmax, a, np.asarray(resid[k][s:s + chunk], np.float64))
        out[f"cell_{k}_centre"] = centre
        out[f"cell_{k}_radius"] = radius * SLACK
        out[f"cell_{k}_resid"] = rmax * SLACK
    for name, a in out.items():
        np.save(directory / f"{name}.npy", a)
    sizes = np.diff(starts)
    info["cells"] = {"count": count, "largest": int(sizes.max()), "empty": int((sizes == 0).sum()),
                     "seconds": round(time.perf_counter() - t0, 1)}
    say(f"{count} cells written ({info['cells']['seconds']} s; largest {info['cells']['largest']} rows)")


class Cells:
    """The cells of a fast-mode directory (in RAM: 8 bytes a row and ~1 KB a cell)."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.rows = np.asarray(arrays["cell_rows"], dtype=np.int64)
        self.starts = np.asarray(arrays["cell_starts"], dtype=np.int64)
        self.centre = {k: np.asarray(arrays[f"cell_{k}_centre"], np.float32) for k in ("feature", "style")}
        self.radius = {k: np.asarray(arrays[f"cell_{k}_radius"], np.float64) for k in ("feature", "style")}
        self.resid = {k: np.asarray(arrays[f"cell_{k}_resid"], np.float64) for k in ("feature", "style")}
        self.sizes = np.diff(self.starts)
        self._coarse: np.ndarray | None = None

    @classmethod
    def of(cls, arrays: dict[str, np.ndarray]) -> Cells | None:
        return cls(arrays) if all(a in arrays for a in CELL_ARRAYS) else None

    def __len__(self) -> int:
        return len(self.sizes)

    def restrict(self, start: int, stop: int) -> Cells:
        """The same cells over rows ``[start, stop)`` only, numbered from 0 (a prefix or a shard;
        the radii, of all members, still bound the rest)."""
        cell = np.repeat(np.arange(len(self)), self.sizes)
        keep = (self.rows >= start) & (self.rows < stop)
        out = object.__new__(Cells)
        out.__dict__.update(self.__dict__)
        out.rows = self.rows[keep] - start
        out.starts = np.concatenate([[0], np.cumsum(np.bincount(cell[keep], minlength=len(self)))]).astype(np.int64)
        out.sizes = np.diff(out.starts)
        out._coarse = None
        return out

    def members(self, chosen: np.ndarray) -> np.ndarray:
        """The rows of the chosen cells (a boolean per cell), ascending."""
        picked = np.flatnonzero(chosen & (self.sizes > 0))
        if not picked.size:
            return np.zeros(0, dtype=np.int64)
        return np.sort(np.concatenate([self.rows[self.starts[c]:self.starts[c + 1]] for c in picked]))

    def distances(self, kind: str, p: np.ndarray) -> np.ndarray:
        """Distance of the query's projection ``p`` from every cell's centre."""
        diff = self.centre[kind] - np.asarray(p, np.float32)[None, :]
        return np.sqrt(np.einsum("ij,ij->i", diff, diff, dtype=np.float64))

    def upper(self, kind: str, dist: np.ndarray, rq: float) -> np.ndarray:
        """Per cell, a bound on the squared distance of any member from the query (module doc)."""
        return ((dist + self.radius[kind]) ** 2 + (rq + self.resid[kind]) ** 2) * SLACK

    def nearest(self, dist: np.ndarray, rows: int) -> np.ndarray:
        """The cells nearest first until they hold ``rows`` rows (a boolean per cell)."""
        order = np.argsort(dist, kind="stable")
        upto = int(np.searchsorted(np.cumsum(self.sizes[order]), rows)) + 1
        chosen = np.zeros(len(self), dtype=bool)
        chosen[order[:upto]] = True
        return chosen

    def coarse_masks(self, mask_cells: np.ndarray, grid: int) -> np.ndarray | None:
        """[N, 16] pixel counts of 4 x 4 coarse cells (None when ``grid`` is not a multiple of 4)."""
        if grid % COARSE_GRID:
            return None
        if self._coarse is None:
            f = grid // COARSE_GRID
            self._coarse = np.asarray(mask_cells, np.float32).reshape(-1, COARSE_GRID, f, COARSE_GRID, f).sum(
                axis=(2, 4), dtype=np.float32).reshape(-1, COARSE_GRID ** 2)
        return self._coarse


def _dice_rows(fast, cells: Cells, query: Query, rows: int) -> np.ndarray:
    """The ``rows`` rows with the best coarse Dice estimate (every row when there is no coarse code)."""
    a = fast.arrays
    coarse = cells.coarse_masks(a["mask_cells"], fast.config.mask_grid)
    if coarse is None:
        return np.arange(len(fast), dtype=np.int64)
    grid = fast.config.mask_grid
    f = grid // COARSE_GRID
    q = cell_counts(query.mask[None], fast.info["mask_size"], grid)[0].reshape(COARSE_GRID, f, COARSE_GRID, f)
    qc = q.sum(axis=(1, 3)).reshape(-1).astype(np.float32)
    cell_px = np.float32((fast.info["mask_size"] // COARSE_GRID) ** 2)
    est = (coarse @ qc) / cell_px / (fast._mask_areas32 + np.float32(query.mask_area) + np.float32(1.0))
    return np.sort(largest(est, min(rows, est.size)))


def search(fast, query: Query, k: int, measures, valid: np.ndarray) -> FastResult:
    """Fast mode's search over the rows of the cells near the query (module doc); every row when
    those would be most of them."""
    cells: Cells = fast.cells
    n = len(fast)
    needs = {c for m in measures for c in MEASURE_COMPONENTS[m]}
    per = max(int(np.ceil(fast.config.probe * n)), k)
    codes = {"feature": fast.query_codes("feature", query.feature)}
    if query.style is not None:
        codes["style"] = fast.query_codes("style", query.style)
    dist = {kind: cells.distances(kind, c[1]) for kind, c in codes.items()}
    upper = {kind: cells.upper(kind, dist[kind], c[3]) for kind, c in codes.items()}
    chosen = np.zeros(len(cells), dtype=bool)
    if needs & {"euclidean", "cosine"}:
        chosen |= cells.nearest(dist["feature"], per)
    if "style" in needs and "style" in dist:
        chosen |= cells.nearest(dist["style"], per)
    for u in upper.values():                 # where each max-normaliser most likely lies
        chosen[largest(np.where(cells.sizes > 0, u, -np.inf), min(BOUND_CELLS, len(cells)))] = True
    rows = cells.members(chosen)
    if "dice" in needs and query.mask is not None and "mask_cells" in fast.arrays:
        rows = np.union1d(rows, _dice_rows(fast, cells, query, per))
    if rows.size > n // 2 or not valid[rows].any():
        return fast.search_rows(query, k, measures, valid, codes)
    view = fast.view(rows)
    r = view.search_rows(query, k, measures, valid[rows], codes)
    out = FastResult({m: rows[v] for m, v in r.rows.items()}, r.scores, r.components, r.raw, rows[r.reranked],
                     r.normalisers, dict(r.normaliser_bounds), dict(r.certified), r.style_precision)
    out.cells = (int(chosen.sum()), len(cells), int(rows.size))
    for comp, kind in (("euclidean", "feature"), ("style", "style")):
        if comp not in out.normaliser_bounds:
            continue
        rest = upper[kind][~chosen & (cells.sizes > 0)]
        if not rest.size:
            continue
        hi_rest = float(rest.max()) if comp == "style" else float(np.sqrt(rest.max()))
        lo, hi = out.normaliser_bounds[comp]
        out.normaliser_bounds[comp] = (lo, max(hi, hi_rest))
        if hi_rest > lo:
            out.certified[comp] = False
    return out
