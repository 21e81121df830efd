"""Exact search: latency against the memory-bandwidth bound, batching, FAISS, precision.

    python benchmarks/bench_search.py INDEX_DIR [--queries 20] [--batch 64]

With no INDEX_DIR, indexes isic-uda1 (557 images) into a temporary directory first. For
N = 10,015: ``dermsearch index ../shared/data/ham10000/labels.csv --index /tmp/ham-index``
then ``python benchmarks/bench_search.py /tmp/ham-index``.

All in the same run, on the same matrices:
- the read bandwidth of this machine (``_common.read_bandwidth``) and the bound it implies:
  the bytes every stored matrix holds / bandwidth (exact search reads fewer when the style
  columns of Grams with weight 0 are skipped; the same engine reading every column is timed beside it);
- single-query latency per measure and for all ten at once, and its ratio to the bound;
- a batch of queries through ``Searcher.search_batch`` (matrix-matrix products);
- FAISS IndexFlatL2 / IndexFlatIP (exact, same vectors) against the engine's Euclidean and cosine
  top-5, one query and a batch;
- a per-image Python loop in float64 (how the measures read in the paper), checked to agree;
- precision: the engine's distances against float64 references, including near-duplicates.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import DATA, dir_bytes, emit, machine, read_bandwidth, require, timed

from dermsearch.extract.vectors import Vectors
from dermsearch.index.build import build_index
from dermsearch.search import MEASURES, Searcher
from dermsearch.search.engine import ExactEngine, Query, rank_rows
from dermsearch.search.kernels import KERNELS, calibrate
from dermsearch.search.measures import cosine_new, harmonic_mean


def naive_scores(s: Searcher, q) -> dict[str, np.ndarray]:
    snap = s.snapshot
    n = len(snap)
    ed, cs, ls, dc = np.empty(n), np.empty(n), np.empty(n), np.empty(n)
    qm = np.unpackbits(q.mask)
    qf, qs = q.feature.astype(np.float64), q.style.astype(np.float64)
    for i in range(n):  # one candidate at a time, in float64
        f = snap.features[i].astype(np.float64)
        ed[i] = float(np.sqrt(((f - qf) ** 2).sum()))
        cs[i] = float(f @ qf / (np.linalg.norm(f) * np.linalg.norm(qf)))
        ls[i] = float(((snap.styles[i].astype(np.float64) - qs) ** 2).sum())
        m = np.unpackbits(snap.masks[i])
        tot = m.sum() + qm.sum()
        dc[i] = 2 * (m & qm).sum() / tot if tot else 1.0
    es, ss, csn = 1 - ed / ed.max(), 1 - ls / ls.max(), cosine_new(cs)
    return {"euclidean": es, "cosine": csn, "style": ss, "dice": dc, "i1_sd": harmonic_mean(ss, dc)}


def ms(values: list[float]) -> float:
    return round(statistics.median(values) * 1000, 2)


def engine_top5(engine: ExactEngine, Q: Vectors, component: str) -> list[np.ndarray]:
    raw = engine.raw(Q, [component])
    valid = np.ones((len(Q), len(engine)), dtype=bool)
    return [r.measures[component].rows for r in rank_rows(raw, valid, [component], 5)]


def faiss_comparison(engine: ExactEngine, Qf: np.ndarray, repeat: int) -> dict:
    try:
        import faiss
    except ImportError:
        return {"skipped": "faiss-cpu is not installed (pip install -e '.[bench]')"}
    F = np.ascontiguousarray(engine.features, dtype=np.float32)
    l2 = faiss.IndexFlatL2(F.shape[1])
    l2.add(F)
    norms = np.linalg.norm(F, axis=1, keepdims=True)
    ip = faiss.IndexFlatIP(F.shape[1])      # cosine = inner product of unit vectors (FAISS's recipe)
    ip.add(F / np.where(norms > 0, norms, 1))
    Qn = Qf / np.linalg.norm(Qf, axis=1, keepdims=True)
    out = {"faiss_version": faiss.__version__, "faiss_threads": faiss.omp_get_max_threads()}
    for label, Q in (("one_query", Qf[:1]), (f"batch_{len(Qf)}", Qf)):
        qb = Vectors(Q)
        row = {
            "dermsearch_euclidean_ms": ms(timed(lambda qb=qb: engine_top5(engine, qb, "euclidean"), repeat)),
            "faiss_flat_l2_ms": ms(timed(lambda Q=Q: l2.search(Q, 5), repeat)),
            "dermsearch_cosine_ms": ms(timed(lambda qb=qb: engine_top5(engine, qb, "cosine"), repeat)),
            "faiss_flat_ip_ms": ms(timed(lambda Q=Q: ip.search(Qn[: len(Q)], 5), repeat)),
        }
        ours = engine_top5(engine, qb, "euclidean")
        _, theirs = l2.search(Q, 5)
        row["same_top5_as_faiss_l2"] = float(np.mean([set(a) == set(b) for a, b in zip(ours, theirs)]))
        ours = engine_top5(engine, qb, "cosine")
        _, theirs = ip.search(Qn[: len(Q)], 5)
        row["same_top5_as_faiss_ip"] = float(np.mean([set(a) == set(b) for a, b in zip(ours, theirs)]))
        out[label] = row
    return out


def use_engine(s: Searcher, engine, snapshot=None) -> None:
    """Benchmark only: make ``engine`` the searcher's default-mode engine (and ``snapshot`` its
    rows), so that the same searcher times another engine over the same matrices. The searcher
    opens its engines itself (``search/engines.py``); nothing outside a benchmark swaps them."""
    opened = s._open
    if snapshot is not None:
        opened.snapshot = snapshot
    spec = s._spec
    opened._engines[(spec.mode, spec.device, spec.max_checked)] = engine
    assert s.engine is engine, "the searcher's engine cache changed its key: update use_engine"


def certified_comparison(s: Searcher, engine: ExactEngine, ids, queries, bound_ms: float) -> dict:
    """The certified engine (int8 style pass + exact checks) on the same queries: latency,
    ratio to the float32 bound, rows checked, and whether its answers equal exact search's."""
    from dermsearch.search.certified import CertifiedEngine

    t = time.perf_counter()
    layout = s.index.manifest.get("style_layers")
    cert = CertifiedEngine(engine, layout=layout)
    build = time.perf_counter() - t
    opened = None
    fast = getattr(s, "fast", None)
    if fast is not None and (fast.directory / "certified.json").is_file():
        # what a searcher gets after 'dermsearch optimize --certified': the copy memory-mapped
        t = time.perf_counter()
        cert = CertifiedEngine(engine, files=fast.directory, layout=layout)
        opened = round(time.perf_counter() - t, 2)
    exact = [s.search(q, k=5, exclude_ids=[i]) for i, q in zip(ids, queries)]
    use_engine(s, cert)
    got = [s.search(q, k=5, exclude_ids=[i]) for i, q in zip(ids, queries)]        # warm-up
    lat = []
    for i, q in zip(ids, queries):
        t = time.perf_counter()
        s.search(q, k=5, exclude_ids=[i])
        lat.append(time.perf_counter() - t)
    use_engine(s, engine)
    checked = [int(n.split(", ")[1].split()[0]) for r in got for n in r.messages if "rows checked exactly" in n]
    same = sum(all([h.id for h in a.results[m]] == [h.id for h in b.results[m]] for m in a.results)
               for a, b in zip(exact, got))
    diff = max(abs(x.score - y.score) for a, b in zip(exact, got) for m in a.results
               for x, y in zip(a.results[m], b.results[m]))
    return {"build_seconds": round(build, 1), "open_seconds_from_optimize_files": opened,
            "bytes_first_pass_per_query": cert.bytes_per_query,
            "bytes_ratio_to_exact": round(cert.bytes_per_query / engine.bytes_per_query, 3),
            "bytes_ratio_to_stored": round(cert.bytes_per_query / engine.stored_bytes_per_query, 3),
            "query_ms_all_ten_measures": ms(lat), "ratio_to_float32_bound": round(ms(lat) / bound_ms, 3),
            "rows_checked_exactly": {"median": float(np.median(checked)) if checked else None,
                                     "max": max(checked) if checked else None},
            "queries_certified": f"{len(checked)}/{len(got)}",
            "queries_with_identical_top5_all_measures": f"{same}/{len(got)}",
            "max_abs_score_diff_vs_exact": diff}


def precision(engine: ExactEngine, s: Searcher, ids) -> dict:
    """Largest relative error of ED and LS against float64, over some queries and every row,
    and for near-duplicates (a stored row plus noise of 1e-4 of its norm)."""
    snap = s.snapshot
    worst_ed = worst_ls = 0.0
    for i in ids[:3]:
        q = s.query_for_id(i)
        raw = engine.raw(Query.batch([q]), ["euclidean", "style"])
        F64, q64 = snap.features.astype(np.float64), q.feature.astype(np.float64)
        ref_ed = np.sqrt(((F64 - q64) ** 2).sum(1))
        ref_ls = np.array([((snap.styles[j].astype(np.float64) - q.style) ** 2).sum() for j in range(len(snap))])
        ok = ref_ed > 0
        worst_ed = max(worst_ed, float((np.abs(raw["euclidean"][0] - ref_ed)[ok] / ref_ed[ok]).max()))
        worst_ls = max(worst_ls, float((np.abs(raw["style"][0] - ref_ls)[ok] / ref_ls[ok]).max()))
    rng = np.random.default_rng(1)
    j = s.row(ids[0])
    f, st = snap.features[j], snap.styles[j]
    fq = (f + rng.standard_normal(f.shape) * 1e-4 * np.linalg.norm(f) / np.sqrt(f.size)).astype(np.float32)
    sq = (st + rng.standard_normal(st.shape) * 1e-4 * np.linalg.norm(st) / np.sqrt(st.size)).astype(np.float32)
    raw = engine.raw(Vectors(fq[None], sq[None]), ["euclidean", "style"])
    ref_ed = float(np.sqrt(((f.astype(np.float64) - fq) ** 2).sum()))
    ref_ls = float(((st.astype(np.float64) - sq) ** 2).sum())
    naive32_ls = float(np.float32(np.dot(st, st)) + np.float32(np.dot(sq, sq)) - 2 * np.float32(np.dot(st, sq)))
    return {
        "max_relative_error_ed": worst_ed, "max_relative_error_ls": worst_ls,
        "near_duplicate_relative_error_ed": abs(float(raw["euclidean"][0, j]) - ref_ed) / ref_ed,
        "near_duplicate_relative_error_ls": abs(float(raw["style"][0, j]) - ref_ls) / ref_ls,
        "near_duplicate_relative_error_ls_plain_float32_expansion": abs(naive32_ls - ref_ls) / ref_ls,
    }


def run(index_dir: Path, n_queries: int, batch: int) -> dict:
    t0 = time.perf_counter()
    s = Searcher(index_dir)
    open_s = time.perf_counter() - t0
    if isinstance(s.snapshot.styles, np.memmap):
        # fast-mode files present: the Searcher memory-maps them. Measure on RAM copies, as an index
        # without them is searched, so that page-cache evictions by other files cannot interfere.
        snap = s.snapshot
        copies = {name: np.array(getattr(snap, name)) for name in ("features", "styles", "masks", "mask_areas")}
        use_engine(s, ExactEngine(copies["features"], copies["styles"], copies["masks"], copies["mask_areas"],
                                  style_blocks=s.engine.style_blocks), dataclasses.replace(snap, **copies))
    snap, engine = s.snapshot, s.engine
    n = len(snap)
    rng = np.random.default_rng(0)
    ids = rng.choice(snap.ids, size=min(n_queries, n), replace=False)
    queries = [s.query_for_id(i) for i in ids]

    matrices = [a for a in (snap.features, snap.styles, snap.masks) if a is not None]
    bandwidth = read_bandwidth(matrices)
    # the yardstick: every stored byte read once (what exact search read before it skipped the
    # style columns that are zero in every row); the engine may read fewer
    scanned = engine.stored_bytes_per_query
    bound_ms = scanned / bandwidth * 1000

    def one(m=None):
        lat = []
        for i, q in zip(ids, queries):
            t = time.perf_counter()
            s.search(q, k=5, measures=m, exclude_ids=[i])
            lat.append(time.perf_counter() - t)
        return lat

    one()  # warm-up
    all_ten = one()
    # each product kernel on the same matrices, in the same run (the engine uses the calibrated one)
    by_kernel = {}
    for name in KERNELS:
        use_engine(s, ExactEngine(snap.features, snap.styles, snap.masks, snap.mask_areas, engine.feature_sqnorms,
                                  engine.style_sqnorms, kernel=name, style_blocks=engine.style_blocks))
        one()
        lat = one()
        by_kernel[name] = {"query_ms_all_ten_measures": ms(lat), "ratio_to_bound": round(ms(lat) / bound_ms, 3)}
    every_column = None
    if engine.style_blocks is not None:
        # the same engine reading every style column (as before the zero columns were skipped)
        use_engine(s, ExactEngine(snap.features, snap.styles, snap.masks, snap.mask_areas, engine.feature_sqnorms,
                                  engine.style_sqnorms))
        one()
        lat = one()
        every_column = {"query_ms_all_ten_measures": ms(lat), "ratio_to_bound": round(ms(lat) / bound_ms, 3),
                        "kernel": s.engine.kernel}
    use_engine(s, engine)
    certified = certified_comparison(s, engine, ids, queries, bound_ms)
    per_measure = {m: ms(one([m])) for m in MEASURES}
    nb = min(batch, n)
    bq = [s.query_for_id(i) for i in rng.choice(snap.ids, size=nb, replace=False)]
    batch_s = statistics.median(timed(lambda: s.search_batch(bq, k=5), 3))
    one_by_one = [s.search(q, k=5) for q in bq[:4]]
    same_as_single = all(
        [h.id for h in a.results[m]] == [h.id for h in b.results[m]]
        for a, b in zip(one_by_one, s.search_batch(bq[:4], k=5)) for m in a.results)

    q = queries[0]
    t = time.perf_counter()
    ref = naive_scores(s, q)
    naive = time.perf_counter() - t
    full = s.search(q, k=0)
    max_diff = 0.0
    for m, scores in ref.items():
        by_id = {h.id: h.score for h in full.results[m]}
        got = np.array([by_id[i] for i in snap.ids])
        max_diff = max(max_diff, float(np.abs(got - scores).max()))

    path = snap.paths[0]
    s.search(path, k=5)
    e2e = statistics.median(timed(lambda: s.search(path, k=5), 3))
    Qf = np.stack([x.feature for x in bq]).astype(np.float32)
    return {
        "images": n,
        "open_seconds": round(open_s, 2),
        "bytes_per_image_exact": int(scanned / n),
        "bytes_scanned_per_query": scanned,
        "read_bandwidth_gb_s": round(bandwidth / 1e9, 2),
        "bandwidth_bound_ms": round(bound_ms, 2),
        "query_ms_all_ten_measures": {"median": ms(all_ten), "p95": round(float(np.percentile(all_ten, 95)) * 1000, 2),
                                      "queries": len(all_ten)},
        "ratio_to_bound_all_ten": round(statistics.median(all_ten) * 1000 / bound_ms, 3),
        "kernel": engine.kernel,
        "calibration": {k: v for k, v in calibrate().items() if k not in ("path", "machine")},
        "by_kernel": by_kernel,
        "style_blocks_read": None if engine.style_blocks is None else [list(b) for b in engine.style_blocks],
        "bytes_read_per_query": engine.bytes_per_query,
        "reading_every_style_column": every_column,
        "query_ms_per_measure": per_measure,
        "worst_ratio_to_bound_per_measure": round(max(per_measure.values()) / bound_ms, 3),
        f"batch_{nb}_ms_per_query": round(batch_s / nb * 1000, 2),
        "batch_speedup_vs_single": round(statistics.median(all_ten) / (batch_s / nb), 2),
        "batch_same_ranks_as_single": same_as_single,
        "certified": certified,
        "faiss": faiss_comparison(engine, Qf, 5),
        "baseline_per_image_loop_ms": round(naive * 1000, 1),
        "speedup_vs_loop": round(naive / statistics.median(all_ten), 1),
        "max_abs_score_diff_vs_loop": max_diff,
        "precision": precision(engine, s, ids),
        "end_to_end_ms_from_image_file": round(e2e * 1000, 1),
        "index_bytes_per_image_on_disk": int(dir_bytes(Path(index_dir) / "lance") / n),
        "fast_mode_files_bytes_per_image": int(dir_bytes(Path(index_dir) / "fast") / n)
        if (Path(index_dir) / "fast").exists() else 0,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("index", nargs="?", type=Path)
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    if args.index:
        result = run(args.index, args.queries, args.batch)
        result["data"] = str(args.index)
    else:
        labels = require(DATA / "isic-uda1" / "labels.csv")
        with tempfile.TemporaryDirectory() as tmp:
            build_index(labels, Path(tmp) / "ix")
            result = run(Path(tmp) / "ix", args.queries, args.batch)
        result["data"] = "isic-uda1"
    emit({"benchmark": "search", **result, "machine": machine()})


if __name__ == "__main__":
    main()
