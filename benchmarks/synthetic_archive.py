"""Synthetic archives of any size in code space: fast mode's files for a million rows made from
ten thousand real ones, without a million-row float32 store (benchmark code, not the library).

A synthetic row is ``x' = x_src + β (x_a − x_b)`` for real rows src, a, b (features and style
vectors alike, one β for the archive) and the source's mask shifted by up to 6 px and mirrored
(:class:`Plan`: src, a, b, the shift and the mirror per row, drawn from a seed in fixed blocks, so
an archive's first n rows are the same whatever its size). Every code fast mode stores is linear
in the row, or a quadratic form of it, so a synthetic row's codes follow from the real rows' codes
without materialising its 80,712 style values:

- PCA projection ``V(x' − μ) = p_src + β (p_a − p_b)``, and the residual sketch likewise (the
  count sketch is linear);
- ``‖x' − μ‖²`` from the Gram matrix of the centred real rows (``G[s,s] + 2β(G[s,a] − G[s,b]) +
  β²(G[a,a] + G[b,b] − 2G[a,b])``), the residual norm from it less ``‖p'‖²``, ``‖x'‖²`` adding
  ``2⟨x' − μ, μ⟩ + ‖μ‖²``;
- the features (1,024 values) and the masks (2 KB) are materialised and written as they are.

The PCA bases are fitted as :class:`~dermsearch.search.fast_build.FastIndexWriter` fits them: the
same sample of ``fit_rows`` rows of the whole archive (materialised), the same functions. The style
rows fast mode re-ranks come from :class:`VirtualRows`, which synthesises the requested rows from
the real ones on demand (three positioned reads of real rows per row). Exact references use the
same linearity: ``⟨q, x'⟩ = ⟨q, x_src⟩ + β (⟨q, x_a⟩ − ⟨q, x_b⟩)``, so one pass over the real rows
per query batch gives the style products of every row (:func:`exact_raw`); the project's own
formulas turn them into distances. ``tests/test_bench_scaling_synthetic.py`` checks all of it
against the writer on the same rows materialised.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from dermsearch.io import replace_dir, temp_dir_for
from dermsearch.search.config import FastConfig
from dermsearch.search.engine import ExactEngine, Query
from dermsearch.search.fast import FAST_FORMAT, FastIndex, count_sketch
from dermsearch.search.fast_build import FastIndexWriter, _fit_pca, half_sketches, sketch_hash, write_mask_cells
from dermsearch.search.fast_parts import RowReader
from dermsearch.search.kernels import products
from dermsearch.search.measures import dice_from_intersections, distances_from_dots, mask_intersections, row_sqnorms

BLOCK = 65_536          # plan rows drawn per block of one seed
REAL_FILES = ("features", "styles", "masks", "mask_areas")


# ------------------------------------------------------------------------------ the real rows
def export_real(index_dir: Path, out: Path, say=print) -> Path:
    """The real rows of the index at ``index_dir`` as ``.npy`` files in ``out`` (read once; kept)."""
    out.mkdir(parents=True, exist_ok=True)
    if all((out / f"{n}.npy").is_file() for n in (*REAL_FILES, "ids")):
        return out
    from dermsearch.index import Index

    t0 = time.perf_counter()
    s = Index.open(index_dir).snapshot()
    for name, a in zip(REAL_FILES, (s.features, s.styles, s.masks, s.mask_areas)):
        np.save(out / f"{name}.tmp.npy", np.ascontiguousarray(a))
        (out / f"{name}.tmp.npy").replace(out / f"{name}.npy")
    np.save(out / "ids.tmp.npy", np.array(list(s.ids), dtype=str))
    (out / "ids.tmp.npy").replace(out / "ids.npy")        # last: the set counts only once complete
    say(f"real rows of {index_dir}: {len(s)} written to {out} ({time.perf_counter() - t0:.0f} s)")
    return out


class RealRows:
    """The real rows' ``.npy`` files (:func:`export_real`): features, masks and areas in RAM, the
    style rows memory-mapped."""

    def __init__(self, directory: Path, mask_size: int):
        self.directory, self.mask_size = Path(directory), mask_size
        self.features = np.load(self.directory / "features.npy")
        self.masks = np.load(self.directory / "masks.npy")
        self.mask_areas = np.load(self.directory / "mask_areas.npy")
        self.styles = np.load(self.directory / "styles.npy", mmap_mode="r")

    def __len__(self) -> int:
        return self.features.shape[0]


def choose_beta(styles: np.ndarray, seed: int = 0, sample: int = 200) -> tuple[float, float]:
    """β such that a synthetic row is about as far from its source as a real row from its nearest
    real neighbour, and the ratio ``median nn² / median pair²`` it comes from."""
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(styles.shape[0], min(sample, styles.shape[0]), replace=False))
    S = np.asarray(styles[pick], dtype=np.float32)
    sq = np.einsum("ij,ij->i", S, S, dtype=np.float64)
    d2 = sq[:, None] + sq[None] - 2 * (S @ S.T).astype(np.float64)
    np.fill_diagonal(d2, np.inf)
    ratio = float(np.median(d2.min(1)) / np.median(d2[np.isfinite(d2)]))
    return float(np.sqrt(ratio)), ratio


# ------------------------------------------------------------------------------ the recipe
@dataclass
class Plan:
    """Each row's recipe: real rows are themselves (src = a = b = the row); a synthetic row is
    ``x_src + β (x_a − x_b)`` with the source's mask rolled by ``shift`` and mirrored."""

    n_real: int
    beta: float
    src: np.ndarray          # int32 [N]
    a: np.ndarray
    b: np.ndarray
    shift: np.ndarray        # int8 [N, 2] (dy, dx)
    mirror: np.ndarray       # bool [N]

    def __len__(self) -> int:
        return self.src.shape[0]

    @property
    def beta32(self) -> np.float32:
        """β as the materialised rows use it (float32 arithmetic)."""
        return np.float32(self.beta)

    def save(self, path: Path) -> None:
        np.savez(path, n_real=self.n_real, beta=self.beta, src=self.src, a=self.a, b=self.b, shift=self.shift,
                 mirror=self.mirror)

    @classmethod
    def load(cls, path: Path) -> Plan:
        with np.load(path) as z:
            return cls(int(z["n_real"]), float(z["beta"]), z["src"], z["a"], z["b"], z["shift"], z["mirror"])


def make_plan(n_real: int, rows: int, beta: float, seed: int = 0) -> Plan:
    """The recipe of ``rows`` rows over ``n_real`` real ones (the first ``n_real`` rows real),
    drawn in blocks of :data:`BLOCK` rows, each from its own seed: a prefix does not depend on ``rows``."""
    src, a, b = (np.empty(rows, np.int32) for _ in range(3))
    shift, mirror = np.zeros((rows, 2), np.int8), np.zeros(rows, bool)
    for j, start in enumerate(range(0, rows, BLOCK)):
        stop = min(rows, start + BLOCK)
        rng = np.random.default_rng([seed, j])
        draws = rng.integers(0, n_real, (3, BLOCK)).astype(np.int32)
        sh, mi = rng.integers(-6, 7, (BLOCK, 2)).astype(np.int8), rng.random(BLOCK) < 0.5
        src[start:stop], a[start:stop], b[start:stop] = draws[:, :stop - start]
        shift[start:stop], mirror[start:stop] = sh[:stop - start], mi[:stop - start]
    real = np.arange(min(n_real, rows))
    src[real] = a[real] = b[real] = real
    shift[real], mirror[real] = 0, False
    return Plan(n_real, float(beta), src, a, b, shift, mirror)


def combine(get, plan: Plan, rows: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """The float32 rows ``rows`` of the archive from ``get(real_rows)`` (sorted unique real rows ->
    their vectors): ``x_src + β (x_a − x_b)`` in float32, element-wise, so a row's values never
    depend on the rows read with it (many rows: ``chunk`` at a time, into one array)."""
    rows = np.asarray(rows, dtype=np.int64)
    k = rows.size
    if k > chunk:
        first = combine(get, plan, rows[:chunk], chunk)
        out = np.empty((k, *first.shape[1:]), dtype=np.float32)
        out[:chunk] = first
        for s in range(chunk, k, chunk):
            out[s:s + chunk] = combine(get, plan, rows[s:s + chunk], chunk)
        return out
    need, inv = np.unique(np.concatenate([plan.src[rows], plan.a[rows], plan.b[rows]]), return_inverse=True)
    R = np.asarray(get(need), dtype=np.float32)
    out = R[inv[:k]]
    syn = np.flatnonzero(rows >= plan.n_real)
    if syn.size:
        out[syn] += plan.beta32 * (R[inv[k:2 * k][syn]] - R[inv[2 * k:][syn]])
    return out


def shifted_masks(real: RealRows, plan: Plan, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The packed masks and areas of ``rows``: the source's mask rolled by the row's shift, then
    mirrored left-right where the plan says (a roll and a mirror keep the area); one roll per
    (shift, mirror) among the rows."""
    side = real.mask_size
    src = plan.src[rows]
    bits = np.unpackbits(real.masks[src], axis=1)[:, :side * side].reshape(-1, side, side)
    out = np.empty_like(bits)
    dy, dx, mirror = plan.shift[rows, 0], plan.shift[rows, 1], plan.mirror[rows]
    key = (dy.astype(np.int64) + 6) * 26 + (dx.astype(np.int64) + 6) * 2 + mirror
    order = np.argsort(key, kind="stable")
    for sel in np.split(order, np.flatnonzero(np.diff(key[order])) + 1):
        i = sel[0]
        m = np.roll(bits[sel], (int(dy[i]), int(dx[i])), axis=(1, 2))
        out[sel] = m[:, :, ::-1] if mirror[i] else m
    return np.packbits(out.reshape(len(rows), -1), axis=1), real.mask_areas[src].astype(np.int32)


def materialise(real: RealRows, plan: Plan, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Features, style rows, packed masks and areas of ``rows``, as :class:`VirtualRows` gives them."""
    rows = np.asarray(rows, dtype=np.int64)
    masks, areas = shifted_masks(real, plan, rows)
    return (combine(lambda r: real.features[r], plan, rows), combine(lambda r: real.styles[r], plan, rows),
            masks, areas)


def row_ids(rows: np.ndarray, n_real: int) -> list[str]:
    return [f"real{i}" if i < n_real else f"syn{i}" for i in rows]


class VirtualRows:
    """The archive's float32 style rows, synthesised on demand from the real rows (three positioned
    reads of real rows per synthetic row): fast mode's re-rank and full rows. Counts the rows and
    seconds it serves (``served``, ``seconds``)."""

    def __init__(self, real_styles: Path, plan: Plan):
        self.reader, self.plan = RowReader(Path(real_styles)), plan
        self.shape, self.dtype = (len(plan), self.reader.shape[1]), np.dtype(np.float32)
        self.served, self.seconds = 0, 0.0

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        t = time.perf_counter()
        out = combine(self.reader, self.plan, rows)
        self.served += len(out)
        self.seconds += time.perf_counter() - t
        return out

    def __getitem__(self, rows) -> np.ndarray:
        return self(np.atleast_1d(np.asarray(rows)))

    def all(self) -> np.ndarray:
        if self.shape[0] > 50_000:
            raise MemoryError(f"{self.shape[0]} synthetic style rows do not fit in RAM: read them by row")
        return np.concatenate([self(np.arange(s, min(self.shape[0], s + 4096)))
                               for s in range(0, self.shape[0], 4096)])

    def close(self) -> None:
        self.reader.close()


class CodedRows:
    """The archive's re-rank rows as fast mode reads them at ``--rerank int6`` (:mod:`dermsearch.search.
    style_codec`): each synthesised row encoded as the writer would (its share of ``seconds``, the
    synthesis), deflated, then inflated and decoded (the query's share: what the product pays a row).
    ``mu`` and the signs are drawn as the writer draws them (the same rows decode to the same values)."""

    def __init__(self, rows: VirtualRows, groups, seed: int = 0, chunk: int = 512):
        from dermsearch.search.engine import block_columns
        from dermsearch.search.style_codec import _spans, fit_signs_and_mean

        self.rows, self.groups, self.spans = rows, tuple(groups), _spans(groups)
        signs, self.mu = fit_signs_and_mean(lambda r: block_columns(rows(r), self.groups), rows.shape[0],
                                            self.spans[-1][1], seed, chunk)        # the writer's draws
        self.signs = signs.astype(np.float64)
        self.shape, self.dtype = rows.shape, np.dtype(np.float32)
        self.bytes, self.coded = 0, 0

    def _coded(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(int8 codes, scales) of ``rows``, as inflated from the files a query reads."""
        import zlib

        from dermsearch.search.engine import block_columns
        from dermsearch.search.style_codec import deflate, encode_rows

        x = self.rows(rows)
        t = time.perf_counter()
        codes, scales, _ = encode_rows(block_columns(x, self.groups).astype(np.float64) - self.mu, self.spans,
                                       self.signs)
        blobs = [deflate(c.tobytes()) for c in codes]
        self.bytes, self.coded = self.bytes + sum(len(b) for b in blobs), self.coded + len(blobs)
        self.rows.seconds += time.perf_counter() - t              # the writer's work, not the query's
        return np.stack([np.frombuffer(zlib.decompress(b), dtype=np.int8) for b in blobs]), scales

    def style_losses(self, query_style: np.ndarray, rows: np.ndarray) -> np.ndarray:
        from dermsearch.search.style_codec import losses_from_codes

        codes, scales = self._coded(np.asarray(rows, dtype=np.int64))
        return losses_from_codes(query_style, codes, scales, self.groups, self.spans, self.signs.astype(np.float32),
                                 self.mu)

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        from dermsearch.search.style_codec import decode_codes, unpack

        back, scales = self._coded(rows)
        packed = decode_codes(back, scales, self.spans, self.signs.astype(np.float32), self.mu)
        return unpack(packed, self.groups, self.spans, self.shape[1])

    def __getitem__(self, rows) -> np.ndarray:
        return self(np.atleast_1d(np.asarray(rows)))

    @property
    def served(self) -> int:
        return self.rows.served

    @property
    def seconds(self) -> float:
        return self.rows.seconds

    def close(self) -> None:
        self.rows.close()


class _Shifted:
    """Rows ``start + i`` of a reader, indexed as ``X[i]`` (a block of the archive)."""

    def __init__(self, reader, start: int):
        self.reader, self.start = reader, start

    def __getitem__(self, rows) -> np.ndarray:
        return self.reader[np.asarray(rows, dtype=np.int64) + self.start]


# ------------------------------------------------------------------------------ the codes
def centred_codes(real: RealRows, mean: np.ndarray, basis: np.ndarray, hashing, say, chunk: int = 1024) -> dict:
    """The real style rows' codes: projections, residual sketches (as the writer computes them),
    the Gram matrix of the centred rows (float32 products, its diagonal in float64) and each
    centred row's product with the mean."""
    n = len(real)
    C = np.empty(real.styles.shape, dtype=np.float32)
    proj = np.empty((n, basis.shape[0]), np.float32)
    m = 0 if hashing is None else hashing[3].shape[1]
    sketch = np.empty((n, m), np.float32)
    diag, mdot = np.empty(n), np.empty(n)
    mean64 = mean.astype(np.float64)
    for s in range(0, n, chunk):
        c = np.asarray(real.styles[s:s + chunk]) - mean
        C[s:s + chunk] = c
        p = products(c, basis) if c.shape[0] > 1 else c @ basis.T
        proj[s:s + chunk] = p
        if m:
            order, signs, _, sketch_basis = hashing
            sketch[s:s + chunk] = count_sketch(c, order, signs, m) - p @ sketch_basis
        diag[s:s + chunk] = np.einsum("ij,ij->i", c, c, dtype=np.float64)
        mdot[s:s + chunk] = c.astype(np.float64) @ mean64
    t0 = time.perf_counter()
    gram = np.empty((n, n))
    step = 2048
    for s in range(0, n, step):            # the upper block triangle, mirrored
        block = (C[s:s + step] @ C[s:].T).astype(np.float64)
        gram[s:s + step, s:] = block
        gram[s:, s:s + step] = block.T
    gram[np.diag_indices(n)] = diag
    say(f"  Gram matrix of the {n} centred real style rows: {time.perf_counter() - t0:.0f} s")
    return {"proj": proj, "sketch": sketch, "gram": gram, "mdot": mdot}


class CodeSpaceWriter(FastIndexWriter):
    """Fast mode's files for the archive of ``plan`` without its style rows: the writer's own
    feature projection and mask cells over materialised features and masks, the style codes by
    linearity (module doc). The files are those :class:`FastIndexWriter` writes, less
    ``styles.npy`` (``full_rows`` "none"; :func:`open_archive` attaches :class:`VirtualRows`)."""

    def __init__(self, directory: Path, real: RealRows, plan: Plan, config: FastConfig):  # noqa: D107
        # only the attributes the parent's _project uses: there is no style matrix to hold
        self.final, self.real, self.plan = Path(directory), real, plan
        self.tmp = temp_dir_for(self.final)
        self.n, self.config, self.version, self.certified = len(plan), config, 0, False
        self.mask_size = real.mask_size
        self._mm = lambda name, dtype, shape: np.lib.format.open_memmap(self.tmp / f"{name}.npy", mode="w+",
                                                                         dtype=dtype, shape=shape)

    def build(self, say=lambda _m: None, chunk: int = 8192) -> Path:
        cfg, n, real, plan = self.config, self.n, self.real, self.plan
        t0 = time.perf_counter()
        rng = np.random.default_rng(cfg.seed)               # the writer's sample (FastIndexWriter.finish)
        sample = np.sort(rng.choice(n, size=min(n, cfg.fit_rows), replace=False))
        info: dict = {"format": FAST_FORMAT, "rows": n, "index_version": 0, "config": asdict(cfg),
                      "mask_size": self.mask_size}
        feats = self._mm("features", np.float32, (n, real.features.shape[1]))
        masks = self._mm("masks", np.uint8, (n, real.masks.shape[1]))
        areas = self._mm("mask_areas", np.int32, (n,))
        for s in range(0, n, chunk):
            sl, rows = slice(s, min(n, s + chunk)), np.arange(s, min(n, s + chunk))
            feats[sl] = combine(lambda r: real.features[r], plan, rows)
            masks[sl], areas[sl] = shifted_masks(real, plan, rows)
            if s % (20 * chunk) == 0:
                say(f"  {sl.stop} feature and mask rows written ({time.perf_counter() - t0:.0f} s)")
        write_mask_cells(self._mm, masks, self.mask_size, cfg, info, chunk)     # as the writer does
        self._project("feature", feats, cfg.feature_dims, sample, info, 2048, say)
        for a in (feats, masks, areas):
            a.flush()
        del feats, masks, areas      # unmapped: their pages leave the resident set before the style part
        self._style_codes(sample, info, say)
        half_sketches(self.tmp, cfg, info, say)
        info["precision"] = "float32"
        info["full_rows"] = {"kind": "none", "location": None}
        info["synthetic"] = {"real_rows": plan.n_real, "beta": plan.beta, "real_styles": str(real.directory /
                                                                                             "styles.npy")}
        np.save(self.tmp / "ids.npy", np.array(row_ids(np.arange(n), plan.n_real), dtype=str))
        plan.save(self.tmp / "plan.npz")
        info["build_seconds"] = round(time.perf_counter() - t0, 1)
        (self.tmp / "fast.json").write_text(json.dumps(info, indent=2))
        return replace_dir(self.tmp, self.final)

    def _style_codes(self, sample: np.ndarray, info: dict, say, chunk: int = 65_536) -> None:
        """The style PCA fitted on the writer's sample, materialised; every row's codes by linearity."""
        cfg, n, real, plan = self.config, self.n, self.real, self.plan
        say(f"fitting the style PCA on {sample.size} rows")
        mean, basis, explained = _fit_pca(combine(lambda r: real.styles[r], plan, sample), cfg.style_dims, cfg.seed)
        info["style_explained_variance"] = round(explained, 5)
        np.save(self.tmp / "style_mean.npy", mean)
        np.save(self.tmp / "style_basis.npy", basis)
        width = real.styles.shape[1]
        m = min(cfg.sketch_dims, width)
        info["config"]["sketch_dims"] = m
        hashing = None
        if m:
            order, signs = sketch_hash(width, m, cfg.seed)
            hashing = (order, signs, None, count_sketch(basis, order, signs, m))
            for suffix, v in (("order", order), ("signs", signs), ("basis", hashing[3])):
                np.save(self.tmp / f"style_sketch_{suffix}.npy", v)
        say("codes of the real style rows")
        codes = centred_codes(real, mean, basis, hashing, say)
        G, mu_sq = codes["gram"], float(np.dot(mean.astype(np.float64), mean))
        out = {name: self._mm(f"style_{name}", dt, shape) for name, dt, shape in (
            ("proj", np.float32, (n, basis.shape[0])), ("csq", np.float64, (n,)), ("resid", np.float64, (n,)),
            ("sqnorms", np.float64, (n,)))}
        if m:
            out["sketch"] = self._mm("style_sketch", np.float32, (n, m))
        beta = float(plan.beta32)
        for s0 in range(0, n, chunk):
            sl = slice(s0, min(n, s0 + chunk))
            s, a, b = plan.src[sl], plan.a[sl], plan.b[sl]
            bt = np.where(np.arange(sl.start, sl.stop) >= plan.n_real, beta, 0.0)     # real rows: themselves
            for name in ("proj", "sketch") if m else ("proj",):
                R = codes[name]
                out[name][sl] = R[s] + bt[:, None] * (R[a].astype(np.float64) - R[b])
            csq = G[s, s] + 2 * bt * (G[s, a] - G[s, b]) + bt ** 2 * (G[a, a] + G[b, b] - 2 * G[a, b])
            p = np.asarray(out["proj"][sl])
            out["csq"][sl] = csq
            out["resid"][sl] = np.sqrt(np.maximum(csq - np.einsum("ij,ij->i", p, p, dtype=np.float64), 0.0))
            md = codes["mdot"]
            out["sqnorms"][sl] = csq + 2 * (md[s] + bt * (md[a] - md[b])) + mu_sq
        for a in out.values():
            a.flush()


def build_archive(directory: Path, real: RealRows, plan: Plan, config: FastConfig, say=lambda _m: None) -> Path:
    """Write the code-space archive of ``plan`` into ``directory`` (replacing it)."""
    if config.precision != "float32":
        config = FastConfig(**{**asdict(config), "precision": "float32"})     # re-rank from the (virtual) rows
    return CodeSpaceWriter(directory, real, plan, config).build(say)


def open_archive(directory: Path) -> tuple[FastIndex, VirtualRows, Plan]:
    """The archive's fast index, its style rows synthesised by a :class:`VirtualRows`."""
    directory = Path(directory)
    fast = FastIndex.open(directory)
    plan = Plan.load(directory / "plan.npz")
    rows = VirtualRows(Path(fast.info["synthetic"]["real_styles"]), plan)
    fast.style_rows = fast.full_rows = rows
    return fast, rows, plan


# ------------------------------------------------------------------------------ exact references
def archive_arrays(directory: Path) -> dict[str, np.ndarray]:
    """The archive's per-row ``.npy`` files, memory-mapped (nothing copied into RAM)."""
    return {f.stem: np.load(f, mmap_mode="r") for f in Path(directory).glob("*.npy")}


def exact_raw(arrays, real: RealRows, rows: VirtualRows, queries: list[Query], say=lambda _m: None,
              block: int = 32_768) -> dict[str, np.ndarray]:
    """[B, N] exact raw values (ED, CS, LS, DC) of ``queries`` against every row of the archive
    (``arrays``: its files, :func:`archive_arrays` or a :class:`FastIndex`'s ``arrays``):
    ED and CS by the exact engine over the materialised features, DC by its functions over the
    materialised masks, LS from the real
    rows' style products by linearity, turned into distances by the engine's own formula
    (:func:`~dermsearch.search.measures.distances_from_dots`, near-duplicates recomputed from
    rows synthesised by ``rows``)."""
    a, plan = arrays, rows.plan
    n = a["features"].shape[0]
    batch = Query.batch(queries)
    S = np.asarray(batch.styles, dtype=np.float32)
    t0 = time.perf_counter()
    real_dots = np.empty((len(queries), len(real)), dtype=np.float32)
    for s in range(0, len(real), 2048):
        real_dots[:, s:s + 2048] = products(S, np.asarray(real.styles[s:s + 2048]))
    s_sq = row_sqnorms(S)
    out = {c: np.empty((len(queries), n)) for c in ("euclidean", "cosine", "style", "dice")}
    beta = float(plan.beta32)
    for s0 in range(0, n, block):
        sl = slice(s0, min(n, s0 + block))
        part = ExactEngine(a["features"][sl], feature_sqnorms=a["feature_sqnorms"][sl]).raw(batch, ["euclidean",
                                                                                                 "cosine"])
        for c, v in part.items():
            out[c][:, sl] = v
        masks = np.asarray(a["masks"][sl])
        for j in range(len(queries)):      # one query at a time: AND + popcount, 9x faster than a batch here
            out["dice"][j, sl] = dice_from_intersections(mask_intersections(batch.masks[j:j + 1], masks),
                                                         batch.mask_areas[j:j + 1], a["mask_areas"][sl])[0]
        src, ra, rb = plan.src[sl], plan.a[sl], plan.b[sl]
        bt = np.where(np.arange(sl.start, sl.stop) >= plan.n_real, beta, 0.0)
        dots = real_dots[:, src].astype(np.float64) + bt * (real_dots[:, ra].astype(np.float64) - real_dots[:, rb])
        out["style"][:, sl] = distances_from_dots(dots, S, _Shifted(rows, s0), s_sq, a["style_sqnorms"][sl])
        if s0 % (10 * block) == 0:
            say(f"  exact references: {sl.stop} of {n} rows ({time.perf_counter() - t0:.0f} s)")
    return out
