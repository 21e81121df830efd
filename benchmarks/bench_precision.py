"""Fast mode's stored precisions against exact float32: recall@5, max |score difference| per
measure, bytes on disk per image, query time; and the cost of reading the re-rank rows from the
index's own table instead of a second float32 copy.

    python benchmarks/bench_precision.py INDEX_DIR [--rows 500] [--queries 30] [--read-rows N] [--only-reads]
    python benchmarks/bench_precision.py INDEX_DIR --rows 10015 --queries 100 --variants int8:none,int6:none

INDEX_DIR: an index of real images (the numbers in docs/performance.md: the bundled sample,
``dermsearch index examples/isic-sample/labels.csv --index INDEX_DIR``). Rows beyond the real ones
are synthetic, as in bench_scaling.py (``x' = x_src + β (x_a − x_b)``, the source's mask shifted);
the queries are the real rows, each left out of its own candidates.

Per variant (precision, where the full rows live: ``here`` = a float32 copy in the fast-mode
directory, ``none`` = the compact rows alone, ``tier`` = a second directory, ``index`` = a LanceDB
table laid out as an index's, what ``optimize`` uses from 100,000 rows), against the exact
engine over the float32 rows: recall@5 per measure (share of the exact top 5 returned), the
largest |returned score − exact score of the same row| per measure, the median query time, and
bytes on disk per image (fast-mode directory, tier). ``table_bytes_per_image``: the index's
LanceDB table per image (the full rows stored once). ``row_reads``: 32 and 200 scattered style
rows read from a float32 ``.npy`` (the FAST_FORMAT 2 copy) and from a LanceDB table of the same
rows (``take``), median of 20 reads. ``real_index_float32``: fast mode on the real index, float32
rows from a copy against from its own table. ``--variants PRECISION:FULL,...`` measures those
variants alone (no row reads, no real-index run). Prints JSON.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

import _common  # noqa: F401  (imports dermsearch before torch: OMP_WAIT_POLICY)
import numpy as np
from _common import emit, machine

from dermsearch.index import Index
from dermsearch.search.engine import ExactEngine, Query, maxima, normalise, rank_rows
from dermsearch.search.fast import FastConfig
from dermsearch.search.fast_build import FastIndexWriter
from dermsearch.search.fast_parts import RowReader
from dermsearch.search.fast_rows import _LanceRows, storage_facts
from dermsearch.search.measures import MEASURES, measure_scores

sys.path.insert(0, str(Path(__file__).parent))
from bench_scaling import shifted_masks  # noqa: E402

VARIANTS = (("float32", "here"), ("fp16", "none"), ("int8", "none"), ("int6", "none"), ("fp16", "tier"),
            ("int8", "tier"), ("int6", "tier"), ("int8", "index"))


def archive(index: Index, rows: int, seed: int = 0):
    """The real rows, then synthetic ones up to ``rows``."""
    s = index.snapshot()
    n = len(s)
    F, S, P, A = s.features, s.styles, s.masks, s.mask_areas
    if rows <= n:
        return F[:rows], S[:rows], P[:rows], A[:rows], n
    rng = np.random.default_rng(seed)
    sq = np.einsum("ij,ij->i", S, S, dtype=np.float64)
    d2 = sq[:, None] + sq[None] - 2 * (S @ S.T).astype(np.float64)
    np.fill_diagonal(d2, np.inf)
    beta = float(np.sqrt(np.median(d2.min(1)) / np.median(d2[np.isfinite(d2)])))
    extra = rows - n
    src, a, b = (rng.integers(0, n, extra) for _ in range(3))
    F2 = np.concatenate([F, F[src] + beta * (F[a] - F[b])]).astype(np.float32)
    S2 = np.concatenate([S, S[src] + beta * (S[a] - S[b])]).astype(np.float32)
    m, ar = shifted_masks(P[src], index.manifest["mask_size"], rng)
    return F2, S2, np.concatenate([P, m]), np.concatenate([A, ar]), n


def dir_bytes(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else 0


def per_row_bytes(p: Path, n: int) -> int:
    """Bytes of the files with one entry per row, per row (what grows with the archive; the rest,
    the PCA bases, sketch hash and means, is a fixed ~43 MB)."""
    total = 0
    for f in p.glob("*.npy"):
        a = np.load(f, mmap_mode="r")
        if a.ndim and a.shape[0] == n and not f.stem.endswith(("_order", "_signs", "_mean")):
            total += f.stat().st_size
    return round(total / n)


def run_variant(precision, full, data, layout, side, queries, workdir: Path) -> dict:
    F, S, P, A = data
    n = len(F)
    target, tier = workdir / f"{precision}-{full}", workdir / f"{precision}-tier-rows"
    for p in (target, tier):
        shutil.rmtree(p, ignore_errors=True)
    version = 0
    if full == "index":            # the full rows in a LanceDB table laid out as an index's (optimize's default)
        version = style_table(S, target / "lance")
        target = target / "fast" / f"v{version}"
    w = FastIndexWriter(target, n, F.shape[1], S.shape[1], P.shape[1], side, FastConfig(precision=precision),
                        version=version, style_layout=layout, full_rows=str(tier) if full == "tier" else full)
    w.write(0, [f"r{i}" for i in range(n)], F, S, P, A)
    t0 = time.perf_counter()
    fast = w.finish()
    build = time.perf_counter() - t0
    exact = ExactEngine(F, S, P, A)
    recall = {m: 0 for m in MEASURES}
    worst = {m: 0.0 for m in MEASURES}
    times = []
    for i in queries:
        q = Query(F[i], S[i], P[i], int(A[i]))
        valid = np.ones((1, n), bool)
        valid[0, i] = False
        raw = exact.raw(Query.batch([q]))
        want = rank_rows(raw, valid, MEASURES, 5)[0]
        scores = measure_scores(normalise(raw, maxima(raw, valid)), MEASURES)
        t = time.perf_counter()
        got = fast.search(q, 5, MEASURES, valid[0])
        times.append(time.perf_counter() - t)
        for m in MEASURES:
            recall[m] += len(set(want.measures[m].rows) & set(got.rows[m]))
            worst[m] = max(worst[m], float(np.abs(got.scores[m] - scores[m][0, got.rows[m]]).max()))
    return {"precision": precision, "full_rows": full,
            "recall_at_5": {m: round(v / (5 * len(queries)), 4) for m, v in recall.items()},
            "max_abs_score_diff": {m: float(f"{v:.3g}") for m, v in worst.items()},
            "median_query_ms": round(1000 * statistics.median(times), 2),
            "fast_dir_bytes_per_image": round(dir_bytes(target) / n),
            "fast_dir_per_row_bytes": per_row_bytes(target, n), "fast_dir_fixed_bytes": dir_bytes(target)
            - per_row_bytes(target, n) * n,
            "tier_bytes_per_image": round(dir_bytes(tier) / n), "build_seconds": round(build, 1)}


def style_table(S: np.ndarray, db: Path, rows=None) -> int:
    """A LanceDB table ``images`` with a ``style`` column of ``S``'s rows (``rows``: that many, the
    rows repeated), compacted into one data file; returns its version."""
    import lancedb
    import pyarrow as pa

    n, d = rows or len(S), S.shape[1]
    table = None
    for a in range(0, n, 1000):
        block = S[np.arange(a, min(n, a + 1000)) % len(S)]
        t = pa.table({"style": pa.FixedSizeListArray.from_arrays(pa.array(block.reshape(-1)), d)})
        table = lancedb.connect(str(db)).create_table("images", t) if table is None else table
        if a:
            table.add(t)
    table.optimize()
    return lancedb.connect(str(db)).open_table("images").version


def row_reads(S: np.ndarray, workdir: Path, n: int, reads: int = 20) -> dict:
    """32 and 200 scattered style rows (one style measure's re-rank; all ten measures') of an
    ``n``-row table (the archive's rows repeated): from a float32 .npy (positioned reads) and from a
    LanceDB table (take)."""
    d = S.shape[1]
    out_npy = np.lib.format.open_memmap(workdir / "rows.npy", mode="w+", dtype=np.float32, shape=(n, d))
    for a in range(0, n, 1000):
        out_npy[a:a + 1000] = S[np.arange(a, min(n, a + 1000)) % len(S)]
    out_npy.flush()
    del out_npy
    npy = RowReader(workdir / "rows.npy")
    db = workdir / "table" / "lance"
    shutil.rmtree(db.parent, ignore_errors=True)
    table = _LanceRows(db.parent, style_table(S, db, n), (n, d))      # one data file, as after 'dermsearch compact'

    rng = np.random.default_rng(1)
    out = {}
    for count in (32, 200):
        for name, reader in (("npy_copy", npy), ("lancedb_take", table)):
            reader(np.arange(4))                               # open, warm
            ts = []
            for _ in range(reads):
                rows = np.sort(rng.choice(n, min(count, n), replace=False))
                t = time.perf_counter()
                got = reader(rows)
                ts.append(time.perf_counter() - t)
                assert np.array_equal(got, S[rows % len(S)])
            out[f"{name}_{count}_rows_ms"] = round(1000 * statistics.median(ts), 2)
    return {"rows": n, **out}


def table_rerank(index: Index, workdir: Path) -> dict:
    """Fast mode on the real index, float32: style rows from a copy in the fast-mode directory
    (FAST_FORMAT 2's layout) against the index's own table (``optimize``'s default now); median
    query time over every real row as a query, and whether the answers are identical."""
    from dermsearch.search.fast_build import optimize

    s, m = index.snapshot(), index.manifest
    cfg = FastConfig(precision="float32")
    w = FastIndexWriter(workdir / "real-here", len(s), m["feature_dim"], m["style_dim"], m["mask_bytes"],
                        m["mask_size"], cfg, s.version, style_layout=m.get("style_layers"))
    w.write(0, s.ids, s.features, s.styles, s.masks, s.mask_areas)
    here = w.finish()
    table = optimize(index, cfg)
    out, same = {}, True
    for name, fast in (("copy_here", here), ("index_table", table)):
        ts = []
        for i in range(len(s)):
            valid = np.ones(len(s), bool)
            valid[i] = False
            q = Query.from_row(s.vectors, i)
            t = time.perf_counter()
            r = fast.search(q, 5, MEASURES, valid)
            ts.append(time.perf_counter() - t)
            if name == "index_table":
                ref = here.search(q, 5, MEASURES, valid)
                same &= all(np.array_equal(r.rows[x], ref.rows[x]) and np.array_equal(r.scores[x], ref.scores[x])
                            for x in MEASURES)
        out[f"{name}_median_ms"] = round(1000 * statistics.median(ts), 2)
    return {"rows": len(s), "queries": len(s), **out, "identical": bool(same)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("index")
    ap.add_argument("--rows", type=int, default=500)
    ap.add_argument("--queries", type=int, default=30)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/dermsearch-precision"))
    ap.add_argument("--read-rows", type=int, default=None, help="rows of the table the row reads are timed on "
                    "(default --rows)")
    ap.add_argument("--only-reads", action="store_true", help="time the row reads only")
    ap.add_argument("--variants", help="only these PRECISION:FULL variants, comma-separated (e.g. int6:none)")
    args = ap.parse_args()
    variants = [tuple(v.split(":")) for v in args.variants.split(",")] if args.variants else VARIANTS
    if any(len(v) != 2 for v in variants):
        ap.error("--variants takes PRECISION:FULL pairs, e.g. int6:none,int6:tier")
    args.workdir.mkdir(parents=True, exist_ok=True)
    index = Index.open(args.index)
    m = index.manifest
    F, S, P, A, n_real = archive(index, args.rows)
    queries = np.arange(min(args.queries, n_real))
    facts = storage_facts(index.directory, None, len(index))
    out = {"machine": machine(), "index": str(args.index), "real_rows": n_real, "rows": len(F),
           "queries": len(queries), "style_dim": S.shape[1],
           "table_bytes_per_image": facts["table_bytes_per_image"], "variants": []}
    for precision, full in () if args.only_reads else variants:
        out["variants"].append(run_variant(precision, full, (F, S, P, A), m.get("style_layers"), m["mask_size"],
                                           queries, args.workdir))
    if args.variants:
        return emit(out)
    out["row_reads"] = row_reads(S, args.workdir, args.read_rows or len(F))
    if not args.only_reads:
        out["real_index_float32"] = table_rerank(index, args.workdir)
    emit(out)


if __name__ == "__main__":
    main()
