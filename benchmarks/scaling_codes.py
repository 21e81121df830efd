"""``bench_scaling.py`` past 100,000 images: the archive in code space (:mod:`synthetic_archive`).

The real rows are read once from the index (``WORKDIR/real``), fast mode's files for ``--rows``
rows are written from them by linearity (``WORKDIR/codes``: features and masks materialised, no
style rows; the re-rank rows are synthesised on demand), the exact references of the queries
come from one pass over the real rows and the materialised features and masks
(``WORKDIR/codes_references.npz``); all three are kept and reused by a re-run with the same
settings. Then for each size (prefixes of the one archive): fast mode, all ten measures at once
(two passes over the queries) and, at the largest size, one measure per query, with recall@5
against exact float32; FAISS ``IndexFlatL2`` + ``IndexFlatIP`` on the features (the style rows
are not materialised: no FAISS style index); memory (the process's resident set after fast
mode's queries, and its peak while only fast mode ran) and bytes on disk per image.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import synthetic_archive as sa

from dermsearch.index import Index
from dermsearch.search.engine import Query, rank_rows
from dermsearch.search.fast import FAST_FORMAT, FastConfig
from dermsearch.search.measures import MEASURES

SIZES = (10_000, 20_000, 50_000, 100_000, 200_000, 500_000, 1_000_000)
QUERY_SETTINGS = ("candidates", "wide_candidates", "wide_rows", "normaliser_candidates")


def proc_bytes(field: str) -> int:
    """``VmRSS`` or ``VmHWM`` of this process, in bytes (0 where /proc has none)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def reset_peak() -> bool:
    """Start this process's peak resident set (VmHWM) again from now (Linux ``clear_refs`` 5)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def prepare(args, log) -> tuple[sa.RealRows, dict]:
    """The real rows and the code-space archive of ``args.rows`` rows (written unless kept)."""
    index = Index.open(args.index)
    real = sa.RealRows(sa.export_real(args.index, args.workdir / "real", log), index.manifest["mask_size"])
    beta, ratio = sa.choose_beta(real.styles)
    config = FastConfig(precision="float32", code_precision=getattr(args, "code_precision", "auto"))
    ident = {"format": FAST_FORMAT, "rows": args.rows, "real_rows": len(real), "beta": round(beta, 6), "seed": 0,
             "config": dataclasses.asdict(config), "index": str(Path(args.index).resolve())}
    target, meta = args.workdir / "codes", args.workdir / "codes.json"
    if (target / "fast.json").is_file() and meta.is_file() and json.loads(meta.read_text()).get("ident") == ident:
        log(f"reusing {target}")
        return real, json.loads(meta.read_text())
    meta.unlink(missing_ok=True)
    log(f"writing the code-space archive of {args.rows} rows ({len(real)} real, beta = {beta:.3f})")
    t0 = time.perf_counter()
    sa.build_archive(target, real, sa.make_plan(len(real), args.rows, beta), config, log)
    info = {"ident": ident, "real_rows": len(real), "beta": round(beta, 4), "median_nn_sq_over_pair_sq":
            round(ratio, 4), "archive_seconds": round(time.perf_counter() - t0, 1)}
    meta.write_text(json.dumps(info))
    log(f"  archive written in {info['archive_seconds']} s")
    return real, info


def int6_rows(index_dir, rows: sa.VirtualRows) -> sa.CodedRows:
    """The archive's re-rank rows through the int6 code, in the writer's column groups."""
    from dermsearch.search.certified import certified_groups
    from dermsearch.search.engine import dead_style_ranges, live_style_blocks

    layout = Index.open(index_dir).manifest.get("style_layers")
    width = rows.shape[1]
    return sa.CodedRows(rows, certified_groups(width, layout, live_style_blocks(width, dead_style_ranges(layout))))


def queries_of(real: sa.RealRows, plan: sa.Plan, qrows: np.ndarray) -> list[Query]:
    F, S, M, A = sa.materialise(real, plan, qrows)
    return [Query(F[j], S[j], M[j], int(A[j]), str(i)) for j, i in enumerate(qrows)]


def references(args, real: sa.RealRows, synth: dict, qrows: np.ndarray, log) -> dict[str, np.ndarray]:
    """[Q, N] exact raw values of the queries against the whole archive (cached beside it)."""
    ident = {"archive": synth["ident"], "queries": [int(i) for i in qrows]}
    path, meta = args.workdir / "codes_references.npz", args.workdir / "codes_references.json"
    if path.is_file() and meta.is_file() and json.loads(meta.read_text()) == ident:
        log(f"reusing the exact references in {path}")
        with np.load(path) as z:
            return {c: z[c] for c in z.files}
    log(f"exact references: {len(qrows)} queries x {args.rows} rows (by linearity)")
    t0 = time.perf_counter()
    plan = sa.Plan.load(args.workdir / "codes" / "plan.npz")
    rows = sa.VirtualRows(real.directory / "styles.npy", plan)
    raw = sa.exact_raw(sa.archive_arrays(args.workdir / "codes"), real, rows, queries_of(real, plan, qrows), log)
    rows.close()       # the maps go with the function's frame: the pages they read leave the RSS
    log(f"  {time.perf_counter() - t0:.0f} s")
    tmp = args.workdir / "codes_references.tmp.npz"
    np.savez(tmp, **raw)
    tmp.replace(path)
    meta.write_text(json.dumps(ident))
    return raw


def top5(raw: dict[str, np.ndarray], qrows: np.ndarray, n: int, count: int, step: int = 8) -> dict[str, list]:
    """The exact top 5 per measure of the first ``count`` queries over the first ``n`` rows (each
    query's own row excluded), a few queries at a time (the scores of all would not fit)."""
    out: dict[str, list] = {m: [] for m in MEASURES}
    for s in range(0, count, step):
        j = np.arange(s, min(count, s + step))
        valid = np.ones((j.size, n), dtype=bool)
        valid[np.arange(j.size), qrows[j]] = False
        for r in rank_rows({c: v[j, :n] for c, v in raw.items()}, valid, MEASURES, 5):
            for m in MEASURES:
                out[m].append(r.measures[m].rows)
    return out


def timed(view, rows: sa.VirtualRows, queries, valid_of, measures) -> tuple[list, list, list]:
    lat, results, synth = [], [], []
    for j, q in enumerate(queries):
        before = rows.seconds
        t = time.perf_counter()
        results.append(view.search(q, 5, measures, valid_of(j)))
        lat.append(time.perf_counter() - t)
        synth.append(rows.seconds - before)
    return lat, results, synth


def ms(values, q=None) -> float:
    return round((statistics.median(values) if q is None else float(np.percentile(values, q))) * 1000, 2)


def fast_curve(fast, rows, sizes, qrows, queries, refs, args, log) -> list[dict]:
    curve = []
    for n in sizes:
        view = fast.prefix(n)
        count = 20 if n < max(sizes) else args.queries

        def valid_of(j, n=n):
            v = np.ones(n, dtype=bool)
            v[qrows[j]] = False
            return v

        first, _, _ = timed(view, rows, queries[:count], valid_of, MEASURES)
        served = rows.served
        lat, results, synth = timed(view, rows, queries[:count], valid_of, MEASURES)
        recall = {m: round(float(np.mean([len(set(refs[n][m][j]) & set(r.rows[m])) / 5
                                          for j, r in enumerate(results)])), 4) for m in MEASURES}
        row = {"images": n, "fast_ms_median": ms(lat), "fast_ms_p95": ms(lat, 95),
               "fast_first_pass_ms_median": ms(first), "fast_first_pass_ms_p95": ms(first, 95),
               "fast_queries": count, "fast_recall_at_5": recall,
               "fast_normalisers_certified": f"{sum(all(r.certified.values()) for r in results)}/{count}",
               "style_rows_synthesised_per_query": round((rows.served - served) / count, 1),
               "style_row_synthesis_ms_median": ms(synth)}
        if n == max(sizes):
            per = {}
            for m in MEASURES:
                lat_m, res_m, _ = timed(view, rows, queries[:count], valid_of, (m,))
                per[m] = {"ms_median": ms(lat_m), "ms_p95": ms(lat_m, 95), "recall_at_5": round(float(np.mean(
                    [len(set(refs[n][m][j]) & set(r.rows[m])) / 5 for j, r in enumerate(res_m)])), 4)}
            row["fast_one_measure_per_query"] = per
        row.update({"fast_bytes_scanned_per_query": view.bytes_scanned_per_query,
                    "fast_resident_bytes": view.resident_bytes, "rss_bytes": proc_bytes("VmRSS"),
                    # of which mapped files (the exact feature and mask rows fast mode reads, in the page cache)
                    "rss_file_bytes": proc_bytes("RssFile")})
        log(json.dumps(row))
        curve.append(row)
    return curve


def faiss_features(features: np.ndarray, n: int, queries: list[Query], chunk: int = 65_536) -> dict | None:
    """FAISS IndexFlatL2 and IndexFlatIP on the first ``n`` feature rows (one built, timed and
    dropped before the other, so that one copy is in RAM at a time); per query, the sum of both."""
    try:
        import faiss
    except ImportError:
        return None
    lat = np.zeros(len(queries))
    for kind in ("l2", "ip"):
        index = faiss.IndexFlatL2(features.shape[1]) if kind == "l2" else faiss.IndexFlatIP(features.shape[1])
        for s in range(0, n, chunk):
            F = np.array(features[s:min(n, s + chunk)], dtype=np.float32)
            if kind == "ip":
                F /= np.maximum(np.linalg.norm(F, axis=1, keepdims=True), 1e-30)
            index.add(F)
        for j, q in enumerate(queries):
            v = q.feature[None] if kind == "l2" else (q.feature / np.linalg.norm(q.feature))[None]
            t = time.perf_counter()
            index.search(np.ascontiguousarray(v, dtype=np.float32), 5)
            lat[j] += time.perf_counter() - t
        del index
        gc.collect()
    return {"ms": round(float(np.median(lat)) * 1000, 2), "includes_style": False,
            "ram_bytes": int(2 * n * features.shape[1] * 4)}


def run(args, log) -> dict:
    t_start = time.perf_counter()
    args.workdir.mkdir(parents=True, exist_ok=True)
    real, synth = prepare(args, log)
    if args.build_only:
        return {"built": str(args.workdir / "codes"), **{k: v for k, v in synth.items() if k != "ident"}}
    sizes = sorted(args.sizes or [n for n in SIZES if n < args.rows] + [args.rows])
    qrows = np.random.default_rng(1).choice(len(real), max(20, args.queries), replace=False)
    t0 = time.perf_counter()
    raw = references(args, real, synth, qrows, log)
    refs = {n: top5(raw, qrows, n, 20 if n < max(sizes) else args.queries) for n in sizes}
    del raw
    real = sa.RealRows(real.directory, real.mask_size)      # a fresh map: the build's pages leave the RSS
    gc.collect()
    ref_s = round(time.perf_counter() - t0, 1)
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    reset = reset_peak()
    fast, rows, plan = sa.open_archive(args.workdir / "codes")
    fast.config = FastConfig(**{**fast.info["config"], **{k: getattr(FastConfig(), k) for k in QUERY_SETTINGS}})
    if getattr(args, "rerank", "float32") == "int6":      # the compact rows alone: no full rows anywhere
        rows = int6_rows(args.index, rows)
        fast.style_rows, fast.full_rows, fast.precision = rows, None, "int6"
        fast.info = {**fast.info, "precision": "int6"}                    # what fast.prefix(n) passes on
    queries = queries_of(real, plan, qrows)
    t0 = time.perf_counter()
    curve = fast_curve(fast, rows, sizes, qrows, queries, refs, args, log)
    fast_s = round(time.perf_counter() - t0, 1)
    fast_peak = proc_bytes("VmHWM") if reset else None
    t0 = time.perf_counter()
    for row in curve:
        ft = faiss_features(fast.arrays["features"], row["images"], queries[:5])
        if ft:
            row["faiss_flat"] = ft
        row["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        log(f"N = {row['images']}: FAISS {ft}")
    disk = sum(f.stat().st_size for f in (args.workdir / "codes").iterdir() if f.suffix == ".npy")
    return {"benchmark": "scaling", "method": "codes", "data": f"{args.index} + synthetic (code space)",
            "synthetic": {k: v for k, v in synth.items() if k != "ident"},
            "fast_config": dataclasses.asdict(fast.config), "fast_files_config": fast.info["config"],
            "style_explained_variance": fast.info["style_explained_variance"],
            "fast_files_bytes_per_image": round(disk / len(fast)),
            "rerank": getattr(args, "rerank", "float32"),
            **({"rerank_int6_bytes_per_row": round(rows.bytes / max(rows.coded, 1))} if hasattr(rows, "coded")
               else {}),
            "fast_peak_rss_bytes": fast_peak, "peak_rss_bytes_before_fast": peak_before,
            "seconds": {"references": ref_s, "fast": fast_s, "faiss": round(time.perf_counter() - t0, 1),
                        "total": round(time.perf_counter() - t_start, 1)},
            "curve": curve}
