"""Exact answers from fewer bytes: an int8 first pass over the style matrix with a proven
per-row error bound, then exact values for the few rows the bound cannot rule out.

The style matrix is ~98% of what an exact query reads (80,712 float32 per image). This engine
keeps an int8 copy of it, centred on a mean style vector ``μ`` and cut into column *groups* (the
Grams of the manifest's ``style_layers``, at most ``GROUP_WIDTH`` columns each): every row has its
own scale per group, ``s = max |x_g − μ_g| / 127``, and codes ``a = round((x_g − μ_g) / s)``. One
scale per row for the whole vector would leave ~10% of a row's norm in rounding (the Grams differ
in magnitude by orders); one per row and group leaves ~1.6% on HAM10000. Per row and group the
engine keeps ``e_g = ‖(x_g − μ_g) − s·a‖`` and ``‖s·a‖``, per row ``‖x − μ‖²``, all float64.

A query is centred (``qc``) and rounded the same way, one scale ``t`` per group: codes ``b``,
rounding error ``f_g = ‖qc_g − t·b‖``. The integer products ``I_g = b·a`` are exact (int32 sums of
at most 127²·``GROUP_WIDTH`` < 2³¹, checked), and with ``p = Σ_g t·s·I_g``

    |p − qc·(x − μ)| ≤ Σ_g ‖qc_g‖·e_g + f_g·‖s·a‖

(Cauchy-Schwarz on each rounding; float64 rounding of these few sums is covered by a 1e-9
relative margin). With ``LS = ‖qc‖² + ‖x − μ‖² − 2 qc·(x − μ)`` that gives every row an
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

Columns that are zero in every row (the Grams of weight 0: ``ExactEngine.style_blocks``) are in
no group: the copy skips them, and a query's values there enter LS through their exact norm.

The int8 products run in torch (``torch._int_mm``: int8 × int8 → int32, exact; checked when an
engine opens). The copy and the per-row numbers are built from the float32 rows when the engine
opens, or read (memory-mapped) from ``certified_*.npy`` beside the fast-mode files when
``dermsearch optimize --certified`` wrote them (:func:`write_certified`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..extract.vectors import Vectors
from .engine import (
    ExactEngine,
    QueryRanking,
    Ranked,
    block_columns,
    empty_rankings,
    kth_largest,
    maxima,
    normalise,
    outside_sqnorms,
    top_k_rows,
)
from .measures import MEASURE_COMPONENTS, harmonic_mean, measure_scores, normalised_by

__all__ = ["CertifiedEngine", "certified_groups", "int8_bound", "quantise", "write_certified"]

CERTIFIED_FORMAT = 3      # 3: int8 codes, one scale per row and column group
GROUP_WIDTH = 16384       # the widest group: 127² × 16384 < 2³¹, so no int32 sum can overflow
MARGIN = 1e-9             # relative margin for the float64 rounding of the bound's own sums


def certified_groups(width: int, layout: Sequence[dict] | None = None, blocks=None,
                     group_width: int = GROUP_WIDTH) -> tuple[tuple[int, int], ...]:
    """The column groups of the int8 copy: the live ``blocks`` (the exact engine's
    ``style_blocks``: every column for None), cut at the Grams of ``layout`` (a manifest's
    ``style_layers``, when it tiles the ``width``) and into pieces of at most ``group_width``
    columns. The groups cover the live blocks exactly; the columns left out are 0 in every row."""
    spans = [(int(e["offset"]), int(e["offset"]) + int(e["size"])) for e in layout or []]
    if not spans or spans[0][0] != 0 or spans[-1][1] != width or any(
            spans[i][1] != spans[i + 1][0] for i in range(len(spans) - 1)):
        spans = [(0, width)]
    live = list(blocks) if blocks is not None else [(0, width)]
    spans = [(max(a, lo), min(b, hi)) for a, b in spans for lo, hi in live if min(b, hi) > max(a, lo)]
    out = []
    for a, b in spans:
        out.extend((c, min(c + group_width, b)) for c in range(a, b, group_width))
    return tuple(out)


def quantise(X: np.ndarray, groups) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Int8 codes of float64 rows ``X`` [B, D'] (the groups' columns side by side, centred), one scale
    per row and group: (codes int8 [B, D'], scales, rounding errors ‖x_g − s·a‖, ‖s·a‖: [B, G])."""
    B, G = X.shape[0], len(groups)
    codes = np.empty(X.shape, dtype=np.int8)
    scale, err, norm = np.empty((B, G)), np.empty((B, G)), np.empty((B, G))
    at = 0
    for g, (a, b) in enumerate(groups):
        seg = X[:, at:at + b - a]
        s = np.abs(seg).max(axis=1) / 127.0
        s[s == 0] = 1.0
        c = np.clip(np.rint(seg / s[:, None]), -127, 127)
        codes[:, at:at + b - a] = c
        back = c * s[:, None]
        scale[:, g] = s
        err[:, g] = np.sqrt(np.einsum("ij,ij->i", seg - back, seg - back))
        norm[:, g] = np.sqrt(np.einsum("ij,ij->i", back, back))
        at += b - a
    return codes, scale, err, norm


def int8_bound(q_norm: np.ndarray, q_err: np.ndarray, err: np.ndarray, norm: np.ndarray, p_abs: np.ndarray,
               scale_prod: float) -> np.ndarray:
    """The proven bound of the module doc, per row: ``q_norm``, ``q_err`` [G] the query's ‖qc_g‖ and
    f_g, ``err``, ``norm`` [N, G] the rows' e_g and ‖s·a‖; ``p_abs`` [N] Σ_g |t·s·I_g|, for the
    margin."""
    # einsum, not BLAS: numpy's BLAS threads would spin on after a product, on the cores the next
    # query's torch products need
    total = np.einsum("ng,g->n", err, q_norm) + np.einsum("ng,g->n", norm, q_err)
    return total * (1 + MARGIN) + MARGIN * (p_abs + scale_prod) + 1e-300


def _norm(v: np.ndarray) -> float:
    """‖v‖ in float64 without BLAS (numpy's BLAS threads would spin on the cores torch's
    products need next)."""
    return float(np.sqrt(np.einsum("i,i->", v, v)))


def _int_mm_is_exact() -> bool:
    """Whether ``torch._int_mm`` sums int8 products exactly in int32 (the bound assumes it), on the
    layout the engine uses (a transposed column slice of a wider matrix, the widest group, extreme
    codes of both signs: kernels that saturate in 16-bit intermediates fail here)."""
    import torch

    rng = np.random.default_rng(0)
    wide = rng.choice(np.array([-127, 127, -1, 0, 1], np.int8), size=(64, GROUP_WIDTH + 96))
    wide[:8, 48:48 + GROUP_WIDTH] = 127
    wide[8:16, 48:48 + GROUP_WIDTH] = -127
    q = np.stack([np.full(GROUP_WIDTH, 127, np.int8), np.full(GROUP_WIDTH, -127, np.int8),
                  rng.choice(np.array([-127, 127], np.int8), GROUP_WIDTH)])
    rows = torch.from_numpy(wide)[:, 48:48 + GROUP_WIDTH]
    try:
        got = torch._int_mm(torch.from_numpy(q), rows.T).numpy()
    except (RuntimeError, AttributeError):
        return False
    return np.array_equal(got.astype(np.int64), q.astype(np.int64) @ wide[:, 48:48 + GROUP_WIDTH].T.astype(np.int64))


def _int8_copy(S, out: np.ndarray, groups, block: int = 512, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Write the int8 codes of ``S − μ`` (the ``groups``' columns of S) into ``out`` (int8 [N, D'],
    in RAM or a memory map); return μ (the mean of a sample of rows, float32) and the per-row numbers
    [N, 1 + 3G]: ‖x − μ‖², then the scales, the rounding errors and ‖s·a‖ of each group."""
    n, G = S.shape[0], len(groups)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, min(n, 2000), replace=False)) if n else np.zeros(0, np.int64)
    mu = (block_columns(S, groups, sample).mean(axis=0, dtype=np.float64) if n
          else np.zeros(out.shape[1])).astype(np.float32)
    per_row = np.empty((n, 1 + 3 * G))
    for a in range(0, n, block):
        c = block_columns(S, groups, slice(a, a + block)).astype(np.float64) - mu
        codes, scale, err, norm = quantise(c, groups)
        out[a:a + block] = codes
        per_row[a:a + block, 0] = np.einsum("ij,ij->i", c, c)
        per_row[a:a + block, 1:] = np.concatenate([scale, err, norm], axis=1)
    return mu, per_row


def _identity(n: int, width: int, groups) -> dict:
    return {"format": CERTIFIED_FORMAT, "rows": n, "width": width, "groups": [list(g) for g in groups]}


def write_certified(directory: str | Path, styles, groups) -> None:
    """Write the certified engine's int8 copy of ``styles`` (float32 [N, D], RAM or memory map),
    the ``groups``' columns (:func:`certified_groups`), into ``directory``
    (``certified_codes.npy`` [N, D'] int8, ``certified_mu.npy``, ``certified_rows.npy``,
    ``certified.json`` last). The caller makes the directory appear atomically (the fast-mode
    writer writes it into its temporary directory)."""
    directory = Path(directory)
    n, width = styles.shape
    kept = sum(b - a for a, b in groups)
    codes = np.lib.format.open_memmap(directory / "certified_codes.npy", mode="w+", dtype=np.int8, shape=(n, kept))
    mu, per_row = _int8_copy(styles, codes, groups)
    codes.flush()
    del codes
    np.save(directory / "certified_mu.npy", mu)
    np.save(directory / "certified_rows.npy", per_row)
    (directory / "certified.json").write_text(json.dumps(_identity(n, width, groups)))


def _read_certified(directory: Path, n: int, width: int, groups):
    """(μ, codes memory-mapped, per-row numbers) from :func:`write_certified`'s files, or None when
    they are missing or were written for another shape or other column groups."""
    try:
        info = json.loads((directory / "certified.json").read_text())
    except (OSError, ValueError):
        return None
    if info != _identity(n, width, groups):
        return None
    # copy-on-write: torch wants a writable buffer; nothing writes to it
    return (np.load(directory / "certified_mu.npy"), np.load(directory / "certified_codes.npy", mmap_mode="c"),
            np.load(directory / "certified_rows.npy"))


class CertifiedEngine:
    """The engine contract (:class:`~dermsearch.search.engine.Engine`) with an int8 first pass
    over the style vectors, certified per query (see the module doc). ``exact``: the float32
    engine over the same rows (RAM or memory-mapped: only the rows checked are read from it)."""

    def __init__(self, exact: ExactEngine, max_checked: float = 0.02, files: str | Path | None = None,
                 layout: Sequence[dict] | None = None):
        """``max_checked``: the largest share of rows one query may check exactly before it falls back
        to the exact engine. ``files``: a directory where :func:`write_certified` wrote the int8
        copy of these rows (used when it matches them, else the copy is built in memory).
        ``layout``: the index manifest's ``style_layers`` (the column groups follow the Grams)."""
        import torch

        if exact.styles is None:
            raise ConfigError("a certified style pass needs style vectors (the index stores none)")
        if not _int_mm_is_exact():
            raise ConfigError("this torch build has no exact int8 product (torch._int_mm): use exact mode")
        self.exact, self.max_checked = exact, max_checked
        n, full = exact.styles.shape
        self.blocks = exact.style_blocks                 # the columns that may be non-zero (None: all)
        self.groups = certified_groups(full, layout, self.blocks)
        self.width = sum(b - a for a, b in self.groups)
        saved = _read_certified(Path(files), n, full, self.groups) if files is not None else None
        if saved is None:
            codes = np.empty((n, self.width), dtype=np.int8)
            self.mu, per_row = _int8_copy(exact.styles, codes, self.groups)
        else:
            self.mu, codes, per_row = saved
        self.stored = saved is not None
        # the features and masks (ES, CSnew, DC) in float32 like exact search, products by torch:
        # numpy's BLAS threads would spin on after their product, on the cores the int8 product
        # needs next (82 vs 119 ms a query at N = 10,015 on 2 cores, measured with bfloat16)
        self.cheap = ExactEngine(exact.features, None, exact.masks, exact.mask_areas, exact.feature_sqnorms,
                                 kernel="torch")
        self.codes = torch.from_numpy(codes)
        self._rows = np.asarray(exact.styles)               # a plain view of RAM or the memory map
        cuts = np.cumsum([0] + [b - a for a, b in self.groups])
        self._spans = list(zip(cuts[:-1].tolist(), cuts[1:].tolist()))   # each group's columns in the copy
        self._views = [self.codes[:, a:b].T for a, b in self._spans]     # [D_g, N] each, no copy
        G = len(self.groups)
        self.c_sq = per_row[:, 0]
        self.scale, self.err, self.qnorm = per_row[:, 1:1 + G], per_row[:, 1 + G:1 + 2 * G], per_row[:, 1 + 2 * G:]

    # ------------------------------------------------------------------ contract
    @property
    def kernel(self) -> str:
        """The kernel of the float32 products (features and masks; the style pass is int8)."""
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
        """Bytes the first pass reads (before the checked rows): int8 styles, float32 features,
        masks, and the per-row numbers."""
        e = self.exact
        total = self.codes.numel() + e.features.nbytes + e.feature_sqnorms.nbytes + 8 * len(self) * (
            1 + 3 * len(self.groups))
        if e.masks is not None:
            total += e.masks.nbytes + e.mask_areas.nbytes
        return int(total)

    def rank(self, batch: Vectors, valid: np.ndarray, measures: Sequence[str], k: int) -> list[QueryRanking]:
        if not len(self):
            return empty_rankings(len(batch), measures)
        if batch.styles is not None and batch.styles.dtype != np.float32:
            # the rows are float32, and so are queries from Query.batch: the intervals and the exact
            # checks must describe the same query
            batch = Vectors(batch.features, np.asarray(batch.styles, np.float32), batch.masks, batch.mask_areas)
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

        qc = block_columns(np.atleast_2d(styles), self.groups).astype(np.float64) - self.mu
        codes, t, f, _ = quantise(qc, self.groups)
        qn = np.stack([np.sqrt(np.einsum("ij,ij->i", qc[:, a:b], qc[:, a:b]))
                       for a, b in self._spans], axis=1)                            # [B, G] ‖qc_g‖
        B, n = len(qc), len(self)
        p, p_abs = np.zeros((B, n)), np.zeros((B, n))
        with torch.inference_mode():
            for g, ((a, b), view) in enumerate(zip(self._spans, self._views)):
                ints = torch._int_mm(torch.from_numpy(np.ascontiguousarray(codes[:, a:b])), view).numpy()
                term = (t[:, g:g + 1] * self.scale[None, :, g]) * ints
                p += term
                p_abs += np.abs(term)
        bounds = [int8_bound(qn[j], f[j], self.err, self.qnorm, p_abs[j], _norm(qn[j]) * np.sqrt(self.c_sq))
                  for j in range(B)]
        return list(p), bounds

    def _exact_ls(self, q: np.ndarray, rows: np.ndarray, skipped: float) -> np.ndarray:
        """LS of these rows in float64 from the float32 rows (read from RAM or the memory map): the
        groups' columns, plus ``skipped``, the query's ‖q‖² over the columns in no group (the rows
        are 0 there)."""
        q64 = np.asarray(q, dtype=np.float64)
        order = np.argsort(rows)
        X = self._rows[rows[order]]                          # one sorted gather
        ls = np.full(rows.size, skipped)
        for a, b in self.groups:
            d = X[:, a:b].astype(np.float64)
            d -= q64[a:b]
            ls += np.einsum("ij,ij->i", d, d)
        out = np.empty(rows.size)
        out[order] = ls
        return out

    def _rank_one(self, q: np.ndarray, cheap: dict[str, np.ndarray], p: np.ndarray, bound: np.ndarray,
                  valid: np.ndarray, measures: Sequence[str], k: int) -> QueryRanking | None:
        n = len(self)
        qc = block_columns(q[None], self.groups)[0].astype(np.float64) - self.mu
        skipped = float(outside_sqnorms(q[None], self.groups)[0])   # the rows are 0 there
        base = _norm(qc) ** 2 + skipped + self.c_sq
        slack = 2 * bound + MARGIN * base                  # MARGIN·base: float64 rounding of base and LS
        ls_lo, ls_hi = np.maximum(base - 2 * p - slack, 0.0), np.maximum(base - 2 * p + slack, 0.0)
        known = np.full(n, np.nan)                     # exact LS of the rows checked so far
        limit = max(k, min(n, 64), int(self.max_checked * n)) if self.max_checked > 0 else 0

        def check(rows: np.ndarray) -> bool:
            rows = rows[np.isnan(known[rows])]
            if np.count_nonzero(~np.isnan(known)) + rows.size > limit:
                return False
            known[rows] = self._exact_ls(q, rows, skipped)
            ls_lo[rows] = ls_hi[rows] = known[rows]
            return True

        rows_valid = np.flatnonzero(valid)
        if rows_valid.size == 0:
            return empty_rankings(1, measures, ["certified mode: no candidates"])[0]
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
                lo = harmonic_mean(_ss(ls_hi, top_ls), *others)
                hi = harmonic_mean(_ss(ls_lo, top_ls), *others)
                reach[m] = valid & (hi >= kth_largest(lo[rows_valid], min(k, rows_valid.size)))
                if not check(np.flatnonzero(reach[m] & (lo < hi))):
                    return None
        checked = np.flatnonzero(~np.isnan(known))
        comp["style"] = _ss(np.where(np.isnan(known), ls_hi, known), top_ls)
        scores = measure_scores(comp, measures)
        raw = {**cheap, "style": known}
        for m in measures:
            top = top_k_rows(scores[m], reach.get(m, valid), k)[0]      # the top k lies within reach
            per[m] = Ranked(top, scores[m][top], {c: v[top] for c, v in comp.items()},
                            {c: v[top] for c, v in raw.items()})
        self._fill_style(q, per, known, top_ls[0], skipped)
        return QueryRanking(per, [f"certified mode: int8 style pass, {checked.size} rows checked exactly"])

    def _fill_style(self, q, per: dict[str, Ranked], known: np.ndarray, top: float, skipped: float) -> None:
        """Every hit reports all four components: measure the style of returned rows not checked."""
        hits = np.unique(np.concatenate([r.rows for r in per.values()])) if per else np.zeros(0, np.int64)
        missing = hits[np.isnan(known[hits])]
        if missing.size:
            known[missing] = self._exact_ls(q, missing, skipped)
        for r in per.values():
            r.raw["style"] = known[r.rows]
            r.components["style"] = _ss(known[r.rows], np.array([top]))


def _ss(ls: np.ndarray, top: np.ndarray) -> np.ndarray:
    """SS of one query's LS values [n] for its max-normaliser ``top`` ([1], > 0)."""
    return normalised_by(ls[None], top)[0]
