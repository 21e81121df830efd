"""Exact answers from fewer bytes: a bfloat16 first pass over the style matrix with a proven
per-row error bound, then exact values for the few rows the bound cannot rule out.

The style matrix is ~98% of what an exact query reads (80,712 float32 per image). This engine
keeps a bfloat16 copy of it, centred on a mean style vector ``μ`` (centring shrinks every error
term below by ``‖x − μ‖ / ‖x‖``, about 0.55 on HAM10000), and per row three float64 numbers:
``‖x − μ‖²``, ``e = ‖(x − μ) − x̃‖`` (what the bfloat16 rounding lost) and ``‖x̃‖``. For a query q
(centred: ``qc``, rounded: ``q̃``) the style loss is ``LS = ‖qc‖² + ‖x − μ‖² − 2 qc·(x − μ)``, and
the bfloat16 product ``p = fl(q̃·x̃)`` (float32 accumulation, bfloat16 result) satisfies

    |p − qc·(x − μ)| ≤ ‖qc‖·e + ‖qc − q̃‖·‖x̃‖ + γ_S ‖q̃‖‖x̃‖ + 2⁻⁸ |p|

(Cauchy-Schwarz on both roundings; ``γ_S = S·u/(1 − S·u)``, u = 2⁻²⁴, the worst case of summing S
float32 terms in any order; the last term the rounding of the result). That gives every row an
interval for LS, hence for SS (once the max-normaliser is known) and for each measure with style
(a harmonic mean rises with each part). Then, per query:

1. the max-normaliser: the rows whose LS interval reaches the largest lower bound are measured
   exactly; the largest of those is the exact maximum (no other row can exceed it);
2. per measure, the rows whose score interval reaches the k-th largest lower bound are measured
   exactly; no other row can be in the top k (its best case is below k rows' worst case).

"Exactly" means in float64 from the float32 rows (``Σ (q − x)²``), so the returned style ranking
is the float64 reference's; ES, CSnew and DC come from float32 products (torch's; exact search's
kernel may be numpy's, so they can differ from its in float32 rounding). A
query whose bound leaves more than ``max_checked`` rows open, or ``k = 0``, is searched by the
exact engine instead, and its notes say so. On HAM10000 a query checks a few dozen rows.

When the exact engine skips style columns that are zero in every row (the Grams of weight 0:
``ExactEngine.style_blocks``), the bfloat16 copy holds only the other columns, μ and the per-row
numbers are those of the kept columns, and a query's skipped columns enter LS through their exact
norm (``‖q_skipped‖²``, the rows being 0 there): the bound above holds on the kept columns.

The bfloat16 copy and the per-row numbers are built from the float32 rows when the engine opens,
or read (memory-mapped) from ``certified_*.npy`` beside the fast-mode files when
``dermsearch optimize --certified`` wrote them (:func:`write_certified`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..extract.vectors import Vectors
from .engine import ExactEngine, QueryRanking, Ranked, maxima, normalise, top_k_rows
from .measures import MEASURE_COMPONENTS, harmonic_mean, measure_scores

__all__ = ["CertifiedEngine", "style_bound", "write_certified"]

CERTIFIED_FORMAT = 2      # 2: the copy holds the live style blocks only

U32 = 2.0 ** -24          # float32 unit roundoff
OUT = 2.0 ** -8           # bfloat16 result rounding, relative to the result (2u, conservative)


def style_bound(p: np.ndarray, qc_norm: float, q_err: float, qt_norm: float, e: np.ndarray, xt_norm: np.ndarray,
                width: int) -> np.ndarray:
    """The proven bound on |p − qc·(x − μ)| of the module doc, per row."""
    gamma = width * U32 / (1.0 - width * U32)
    return qc_norm * e + q_err * xt_norm + gamma * qt_norm * xt_norm + OUT * np.abs(p) + 1e-30


def _norm(v: np.ndarray) -> float:
    """‖v‖ in float64 without BLAS (numpy's BLAS threads would spin on the cores torch's
    bfloat16 product needs next)."""
    return float(np.sqrt(np.einsum("i,i->", v, v)))


def _bf16_accumulates_in_float32() -> bool:
    """Whether torch's bfloat16 product sums in float32 (the bound assumes it): 4096 ones sum to
    4096 in float32, but stall at 256 in bfloat16."""
    import torch

    ones = torch.ones((2, 4096), dtype=torch.bfloat16)
    return float((ones @ ones[0][:, None])[0, 0]) == 4096.0


def _columns(S, blocks, rows=slice(None)) -> np.ndarray:
    """``S[rows]`` restricted to the column ``blocks`` (all columns for None), float32 in RAM."""
    if blocks is None:
        return np.asarray(S[rows], dtype=np.float32)
    return np.concatenate([np.asarray(S[rows, a:b], dtype=np.float32) for a, b in blocks], axis=-1)


def _centred_bf16(S, out: np.ndarray, block: int = 512, seed: int = 0,
                  blocks=None) -> tuple[np.ndarray, np.ndarray]:
    """Write the bfloat16 bits of ``S − μ`` (the column ``blocks`` of S, all for None) into ``out``
    (uint16 [N, D'], in RAM or a memory map); return μ (the mean of a sample of rows) and the
    per-row [‖x − μ‖², e, ‖x̃‖] of the module doc."""
    import torch

    n = S.shape[0]
    width = out.shape[1]
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, min(n, 2000), replace=False)) if n else np.zeros(0, np.int64)
    mu = (_columns(S, blocks, sample).mean(axis=0, dtype=np.float64) if n else np.zeros(width)).astype(np.float32)
    per_row = np.empty((n, 3))
    for a in range(0, n, block):
        c = _columns(S, blocks, slice(a, a + block)) - mu
        low = torch.from_numpy(c).to(torch.bfloat16)
        out[a:a + block] = low.view(torch.uint16).numpy()
        c64, l64 = c.astype(np.float64), low.float().numpy().astype(np.float64)
        per_row[a:a + block, 0] = np.einsum("ij,ij->i", c64, c64)
        per_row[a:a + block, 1] = np.sqrt(np.einsum("ij,ij->i", c64 - l64, c64 - l64))
        per_row[a:a + block, 2] = np.sqrt(np.einsum("ij,ij->i", l64, l64))
    return mu, per_row


def _identity(n: int, width: int, blocks) -> dict:
    return {"format": CERTIFIED_FORMAT, "rows": n, "width": width,
            "blocks": None if blocks is None else [list(b) for b in blocks]}


def _kept_width(width: int, blocks) -> int:
    return width if blocks is None else sum(b - a for a, b in blocks)


def write_certified(directory: str | Path, styles, blocks=None) -> None:
    """Write the certified engine's bfloat16 copy of ``styles`` (float32 [N, D], RAM or memory
    map; only the column ``blocks`` when given: the live blocks of the exact engine) into
    ``directory`` (``certified_bits.npy`` [N, D'] uint16, ``certified_mu.npy``,
    ``certified_rows.npy`` [N, 3], ``certified.json`` last). The caller makes the directory appear
    atomically (the fast-mode writer writes it into its temporary directory)."""
    directory = Path(directory)
    n, width = styles.shape
    kept = _kept_width(width, blocks)
    bits = np.lib.format.open_memmap(directory / "certified_bits.npy", mode="w+", dtype=np.uint16, shape=(n, kept))
    mu, per_row = _centred_bf16(styles, bits, blocks=blocks)
    bits.flush()
    del bits
    np.save(directory / "certified_mu.npy", mu)
    np.save(directory / "certified_rows.npy", per_row)
    (directory / "certified.json").write_text(json.dumps(_identity(n, width, blocks)))


def _read_certified(directory: Path, n: int, width: int, blocks=None):
    """(μ, bits memory-mapped, per-row numbers) from :func:`write_certified`'s files, or None when
    they are missing or were written for another shape or other column blocks."""
    try:
        info = json.loads((directory / "certified.json").read_text())
    except (OSError, ValueError):
        return None
    if info != _identity(n, width, blocks):
        return None
    # copy-on-write: torch wants a writable buffer; nothing writes to it
    return (np.load(directory / "certified_mu.npy"), np.load(directory / "certified_bits.npy", mmap_mode="c"),
            np.load(directory / "certified_rows.npy"))


class CertifiedEngine:
    """The engine contract (:class:`~dermsearch.search.engine.Engine`) with a bfloat16 first pass
    over the style vectors, certified per query (see the module doc). ``exact``: the float32
    engine over the same rows (RAM or memory-mapped: only the rows checked are read from it)."""

    def __init__(self, exact: ExactEngine, max_checked: float = 0.02, files: str | Path | None = None):
        """``max_checked``: the largest share of rows one query may check exactly before it falls back
        to the exact engine. ``files``: a directory where :func:`write_certified` wrote the bfloat16
        copy of these rows (used when it matches them, else the copy is built in memory)."""
        import torch

        if exact.styles is None:
            raise ConfigError("a certified style pass needs style vectors (the index stores none)")
        if not _bf16_accumulates_in_float32():
            raise ConfigError("this torch build does not sum bfloat16 products in float32: use exact mode")
        self.exact, self.max_checked = exact, max_checked
        n, full = exact.styles.shape
        self.blocks = exact.style_blocks                 # the columns that may be non-zero (None: all)
        self.width = _kept_width(full, self.blocks)
        saved = _read_certified(Path(files), n, full, self.blocks) if files is not None else None
        if saved is None:
            bits = np.empty((n, self.width), dtype=np.uint16)
            self.mu, per_row = _centred_bf16(exact.styles, bits, blocks=self.blocks)
        else:
            self.mu, bits, per_row = saved
        self.stored = saved is not None
        # the features and masks (ES, CSnew, DC) in float32 like exact search, products by torch:
        # numpy's BLAS threads would spin on after their product, on the cores the bfloat16
        # product needs next (82 vs 119 ms a query at N = 10,015 on 2 cores)
        self.cheap = ExactEngine(exact.features, None, exact.masks, exact.mask_areas, exact.feature_sqnorms,
                                 kernel="torch")
        self.low = torch.from_numpy(bits).view(torch.bfloat16)
        self.c_sq, self.err, self.low_norm = per_row[:, 0], per_row[:, 1], per_row[:, 2]

    # ------------------------------------------------------------------ contract
    @property
    def kernel(self) -> str:
        """The kernel of the float32 products (features and masks; the style pass is bfloat16)."""
        return "torch"

    def __len__(self) -> int:
        return len(self.exact)

    @property
    def components(self) -> tuple[str, ...]:
        return self.exact.components

    def take(self, rows) -> Vectors:
        return self.exact.take(rows)

    @property
    def bytes_per_query(self) -> int:
        """Bytes the first pass reads (before the checked rows): bfloat16 styles, float32 features,
        masks, and the per-row numbers."""
        e = self.exact
        total = self.low.numel() * 2 + e.features.nbytes + e.feature_sqnorms.nbytes + 3 * 8 * len(self)
        if e.masks is not None:
            total += e.masks.nbytes + e.mask_areas.nbytes
        return int(total)

    def rank(self, batch: Vectors, valid: np.ndarray, measures: Sequence[str], k: int) -> list[QueryRanking]:
        if not len(self):
            return [QueryRanking({m: Ranked.empty() for m in measures}) for _ in range(len(batch))]
        if k <= 0 or batch.styles is None:
            out = self.exact.rank(batch, valid, measures, k)
            for r in out:
                r.notes.append("certified mode: exact pass (every row ranked, or no query style)")
            return out
        # the float32 engine for the cheap components (one pass over features and masks)
        cheap = self.cheap.raw(batch)
        low, bounds = self._first_pass(batch.styles)
        out = []
        for j in range(len(batch)):
            r = self._rank_one(batch.styles[j], {c: v[j] for c, v in cheap.items()}, low[j], bounds[j], valid[j],
                               measures, k)
            if r is None:
                r = self.exact.rank(batch.take(slice(j, j + 1)), valid[j:j + 1], measures, k)[0]
                r.notes.append("certified mode: the bound left too many rows open, this query was searched "
                               "exactly")
            out.append(r)
        return out

    # ------------------------------------------------------------------ internals
    def _first_pass(self, styles: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per query: the centred products' estimates and their proven bounds, per row."""
        import torch

        qc = _columns(np.atleast_2d(styles), self.blocks) - self.mu
        qt = torch.from_numpy(np.ascontiguousarray(qc)).to(torch.bfloat16)
        with torch.inference_mode():
            p = (self.low @ qt.T).float().numpy().astype(np.float64).T          # [B, N]
        qc64, qt64 = qc.astype(np.float64), qt.float().numpy().astype(np.float64)
        bounds = []
        for j in range(len(qc)):
            bounds.append(style_bound(p[j], _norm(qc64[j]), _norm(qc64[j] - qt64[j]), _norm(qt64[j]), self.err,
                                      self.low_norm, self.width))
        return list(p), bounds

    def _skipped_sq(self, q: np.ndarray) -> float:
        """‖q‖² over the style columns the copy skips (the rows are 0 there), in float64."""
        if self.blocks is None:
            return 0.0
        q64, total, at = np.asarray(q, dtype=np.float64), 0.0, 0
        for a, b in (*self.blocks, (q64.size, q64.size)):
            total += float(np.einsum("i,i->", q64[at:a], q64[at:a]))
            at = b
        return total

    def _exact_ls(self, q: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """LS of these rows in float64 from the float32 rows (read from RAM or the memory map)."""
        q64 = np.asarray(q, dtype=np.float64)
        out = np.empty(rows.size)
        for n, i in enumerate(rows.tolist()):
            d = np.asarray(self.exact.styles[i], dtype=np.float64) - q64
            out[n] = np.einsum("i,i->", d, d)
        return out

    def _rank_one(self, q: np.ndarray, cheap: dict[str, np.ndarray], p: np.ndarray, bound: np.ndarray,
                  valid: np.ndarray, measures: Sequence[str], k: int) -> QueryRanking | None:
        n = len(self)
        qc = _columns(q[None], self.blocks)[0].astype(np.float64) - self.mu
        base = _norm(qc) ** 2 + self._skipped_sq(q) + self.c_sq
        ls_lo, ls_hi = np.maximum(base - 2 * (p + bound), 0.0), np.maximum(base - 2 * (p - bound), 0.0)
        known = np.full(n, np.nan)                     # exact LS of the rows checked so far
        limit = max(k, min(n, 64), int(self.max_checked * n)) if self.max_checked > 0 else 0

        def check(rows: np.ndarray) -> bool:
            rows = rows[np.isnan(known[rows])]
            if np.count_nonzero(~np.isnan(known)) + rows.size > limit:
                return False
            known[rows] = self._exact_ls(q, rows)
            ls_lo[rows] = ls_hi[rows] = known[rows]
            return True

        rows_valid = np.flatnonzero(valid)
        if rows_valid.size == 0:
            return QueryRanking({m: Ranked.empty() for m in measures}, ["certified mode: no candidates"])
        # 1. the max-normaliser of SS
        floor = ls_lo[rows_valid].max()
        if not check(rows_valid[ls_hi[rows_valid] >= floor]):
            return None
        top_ls = np.array([np.nanmax(np.where(valid, known, np.nan))])
        if not top_ls[0] > 0:
            return None                                # every candidate's style equals the query's
        tops = maxima({c: v[None] for c, v in cheap.items()}, valid[None]) | {"style": top_ls}
        comp = normalise({c: v[None] for c, v in cheap.items()}, tops)
        comp = {c: v[0] for c, v in comp.items()}
        per, reach = {}, {}
        for m in measures:
            parts = MEASURE_COMPONENTS[m]
            if "style" in parts:
                # 2. rows whose best case reaches the k-th best worst case; of those, the ones whose
                # score the style can still change (not those another component holds at 0)
                others = [comp[c] for c in parts if c != "style"]
                lo = harmonic_mean(1.0 - ls_hi / top_ls[0], *others)
                hi = harmonic_mean(1.0 - ls_lo / top_ls[0], *others)
                kk = min(k, rows_valid.size)
                kth = np.partition(lo[rows_valid], rows_valid.size - kk)[rows_valid.size - kk]
                reach[m] = valid & (hi >= kth)
                if not check(np.flatnonzero(reach[m] & (lo < hi))):
                    return None
        checked = np.flatnonzero(~np.isnan(known))
        comp["style"] = 1.0 - np.where(np.isnan(known), ls_hi, known) / top_ls[0]
        scores = measure_scores(comp, measures)
        raw = {**cheap, "style": known}
        for m in measures:
            top = top_k_rows(scores[m], reach.get(m, valid), k)[0]      # the top k lies within reach
            per[m] = Ranked(top, scores[m][top], {c: v[top] for c, v in comp.items()},
                            {c: v[top] for c, v in raw.items()})
        self._fill_style(q, per, known, top_ls[0], comp)
        return QueryRanking(per, [f"certified mode: bfloat16 style pass, {checked.size} rows checked exactly"])

    def _fill_style(self, q, per: dict[str, Ranked], known: np.ndarray, top: float, comp) -> None:
        """Every hit reports all four components: measure the style of returned rows not checked."""
        hits = np.unique(np.concatenate([r.rows for r in per.values()])) if per else np.zeros(0, np.int64)
        missing = hits[np.isnan(known[hits])]
        if missing.size:
            known[missing] = self._exact_ls(q, missing)
        for r in per.values():
            r.raw["style"] = known[r.rows]
            r.components["style"] = 1.0 - known[r.rows] / top
