"""Fast mode at 100,000 images and the scaling curve from 1k to 100k (latency and memory); past
100,000 rows, the curve 10k to 1M in code space.

    python benchmarks/bench_scaling.py INDEX_DIR [--rows 100000] [--workdir /tmp/dermsearch-scaling]
    python benchmarks/bench_scaling.py INDEX_DIR --rows 1000000 [--workdir DIR]     # code space

Past 100,000 rows (or with ``--method codes``) the synthetic rows are never materialised: a
million 80,712-float style rows would be 323 GB. Every code fast mode stores is linear in the row
(or a quadratic form of it), so ``benchmarks/synthetic_archive.py`` writes fast mode's files for
``x' = x_src + β (x_a − x_b)`` from the real rows' codes and their Gram matrix, the re-rank style
rows are synthesised on demand from the real rows, and the exact references come from the same
linearity (``⟨q, x'⟩ = ⟨q, x_src⟩ + β (⟨q, x_a⟩ − ⟨q, x_b⟩)``); ``scaling_codes.py`` runs that
curve (fast mode, FAISS on the features, memory). INDEX_DIR needs no fast-mode files there: its
rows are read once into ``WORKDIR/real``. Up to 100,000 rows, as before:

INDEX_DIR: an index of real images with fast-mode files (``dermsearch optimize INDEX_DIR``); for
the numbers in docs/performance.md, HAM10000's 10,015 images. Rows beyond the real ones are
synthetic, built from real rows plus noise that lies in the data's own directions:
``x' = x_src + β (x_a − x_b)`` for random real rows src, a, b (features and style vectors alike,
one β for the whole archive, chosen so that a synthetic row is about as far from its source as
a real image is from its nearest real neighbour), and the source's mask shifted by up to 6 px
and mirrored at random. The first rows are the real ones.

In the same run, for N in 1k ... 100k (prefixes of the same archive):
- exact mode, all ten measures (the exact engine over memory-mapped rows; past the page cache,
  reads come from disk);
- fast mode (PCA fitted on a sample of the whole archive), its recall@5 against exact for every
  measure at 100k, and whether its max-normalisers were certified exact;
- FAISS IndexFlatL2 + IndexFlatIP on the features and IndexFlatL2 on the style vectors (the three
  rankings FAISS can give; it has no max-normalised scores or I1 combinations), while the style
  matrix fits in RAM beside the page cache;
- a per-image Python loop (float64, as the measures read in the paper), one query;
- memory: bytes held in RAM per mode and the process's peak RSS.
Prints JSON; writes docs/scaling.png with ``--plot``.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import resource
import statistics
import time
from pathlib import Path

import _common  # noqa: F401  (imports dermsearch before torch: OMP_WAIT_POLICY)
import numpy as np
from _common import REPO, emit, machine

from dermsearch.index import Index
from dermsearch.names import CODE_PRECISIONS
from dermsearch.search.engine import ExactEngine, Query, maxima, normalise, rank_rows, top_k_rows
from dermsearch.search.fast import FastConfig, FastIndex, FastModeMissing, fast_dir
from dermsearch.search.fast_build import FastIndexWriter
from dermsearch.search.measures import MEASURES, cosine_new, harmonic_mean, measure_scores

SIZES = (1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000)


def shifted_masks(packed: np.ndarray, side: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    bits = np.unpackbits(packed, axis=1)[:, : side * side].reshape(-1, side, side)
    out = np.empty_like(bits)
    for i, m in enumerate(bits):
        dy, dx = rng.integers(-6, 7, size=2)
        m = np.roll(m, (int(dy), int(dx)), axis=(0, 1))
        out[i] = m[:, ::-1] if rng.random() < 0.5 else m
    return np.packbits(out.reshape(len(out), -1), axis=1), out.reshape(len(out), -1).sum(1).astype(np.int32)


def build_archive(real: FastIndex, rows: int, workdir: Path, config: FastConfig, log) -> tuple[FastIndex, dict]:
    target = workdir / "fast"
    if (target / "fast.json").is_file():
        fast = FastIndex.open(target)
        if len(fast) == rows:
            log(f"reusing {target}")
            return fast, json.loads((workdir / "synthetic.json").read_text())
    e = real.exact
    n_real = len(real)
    rng = np.random.default_rng(0)
    # beta: a synthetic row as far from its source as a real image from its nearest real neighbour
    sample = rng.choice(n_real, 200, replace=False)
    S = np.asarray(e.styles[sample], dtype=np.float32)
    sq = np.einsum("ij,ij->i", S, S, dtype=np.float64)
    d2 = sq[:, None] + sq[None] - 2 * (S @ S.T).astype(np.float64)
    np.fill_diagonal(d2, np.inf)
    nn = np.median(d2.min(1))
    pair = np.median(d2[np.isfinite(d2)])
    beta = float(np.sqrt(nn / pair))
    info = {"real_rows": n_real, "beta": round(beta, 4), "median_nn_sq_over_pair_sq": round(float(nn / pair), 4)}
    log(f"synthetic rows: beta = {beta:.3f}")
    side = real.info["mask_size"]
    w = FastIndexWriter(target, rows, e.features.shape[1], e.styles.shape[1], e.masks.shape[1], side, config)
    t0 = time.perf_counter()
    chunk = 1000
    for start in range(0, rows, chunk):
        stop = min(rows, start + chunk)
        idx = np.arange(start, stop)
        src = np.where(idx < n_real, idx, rng.integers(0, n_real, stop - start))
        order = np.argsort(src)
        src_sorted = src[order]
        f = np.empty((stop - start, e.features.shape[1]), np.float32)
        s = np.empty((stop - start, e.styles.shape[1]), np.float32)
        f[order], s[order] = e.features[src_sorted], e.styles[src_sorted]
        m, areas = np.asarray(e.masks[src]), np.asarray(e.mask_areas[src])
        synth = idx >= n_real
        if synth.any():
            a, b = np.sort(rng.integers(0, n_real, synth.sum())), np.sort(rng.integers(0, n_real, synth.sum()))
            perm = rng.permutation(synth.sum())
            f[synth] += beta * (e.features[a][perm] - e.features[b])
            s[synth] += beta * (np.asarray(e.styles[a])[perm] - np.asarray(e.styles[b]))
            m[synth], areas[synth] = shifted_masks(m[synth], side, rng)
        ids = [f"real{i}" if i < n_real else f"syn{i}" for i in idx]
        w.write(start, ids, f, s, m, areas)
        if start % 10_000 == 0:
            log(f"  {stop} rows written ({time.perf_counter() - t0:.0f} s)")
    info["write_seconds"] = round(time.perf_counter() - t0, 1)
    fast = w.finish(log)
    info["fast_build_seconds"] = fast.info["build_seconds"]
    (workdir / "synthetic.json").write_text(json.dumps(info))
    return fast, info


def head(fast: FastIndex, n: int) -> FastIndex:
    """The same fast-mode files restricted to their first n rows (a prefix archive; the PCA basis
    stays the one fitted on the whole archive)."""
    return fast.prefix(n)


def query_of(engine: ExactEngine, i: int) -> Query:
    return Query(np.array(engine.features[i]), np.array(engine.styles[i]), np.array(engine.masks[i]),
                 int(engine.mask_areas[i]), str(i))


def exact_search(engine: ExactEngine, q: Query, exclude: int, k: int = 5) -> dict[str, np.ndarray]:
    valid = np.ones((1, len(engine)), dtype=bool)
    valid[0, exclude] = False
    raw = engine.raw(Query.batch([q]))
    scores = measure_scores(normalise(raw, maxima(raw, valid)), MEASURES)
    return {m: top_k_rows(scores[m], valid, k)[0] for m in MEASURES}


def exact_references(e: ExactEngine, qrows: np.ndarray, workdir: Path, log, block: int = 4096
                     ) -> dict[str, np.ndarray]:
    """Raw components (ED, CS, LS, DC) of the queries ``qrows`` (rows of the archive) against every
    row: one batched pass over the archive, cached in ``workdir`` beside it and keyed by the
    archive and the queries. Every prefix size's exact reference ranking comes from these (its
    rows, its own max-normalisers), so the 33 GB of a 100k archive are streamed once, not once
    per size and run."""
    archive = json.loads((workdir / "synthetic.json").read_text())
    # the rows are a deterministic function of these (not of the fast-mode settings or timings)
    ident = {"rows": len(e), "queries": [int(i) for i in qrows],
             "archive": {k: archive[k] for k in ("real_rows", "beta", "median_nn_sq_over_pair_sq")}}
    path, meta = workdir / "references.npz", workdir / "references.json"
    if path.is_file() and meta.is_file() and json.loads(meta.read_text()) == ident:
        log(f"reusing the exact references in {path}")
        with np.load(path) as z:
            return {c: z[c] for c in z.files}
    log(f"exact references: {len(qrows)} queries x {len(e)} rows, one pass")
    batch = Query.batch([query_of(e, int(i)) for i in qrows])
    raw: dict[str, np.ndarray] = {}
    t0 = time.perf_counter()
    for start in range(0, len(e), block):
        sl = slice(start, min(len(e), start + block))
        part = ExactEngine(e.features[sl], e.styles[sl], e.masks[sl], e.mask_areas[sl], e.feature_sqnorms[sl],
                           e.style_sqnorms[sl]).raw(batch)
        for c, v in part.items():
            raw.setdefault(c, np.empty((len(qrows), len(e)), dtype=np.float64))[:, sl] = v
    log(f"  {time.perf_counter() - t0:.0f} s")
    tmp = workdir / "references.tmp.npz"
    np.savez(tmp, **raw)
    tmp.replace(path)
    meta.write_text(json.dumps(ident))      # written last: the cache counts only once complete
    return raw


def references_at(raw: dict[str, np.ndarray], qrows: np.ndarray, n: int, queries: int
                  ) -> tuple[np.ndarray, dict[str, list[np.ndarray]]]:
    """The first ``queries`` queries' exact top 5 per measure over the first ``n`` rows (each
    query excluded), and their candidate masks."""
    valid = np.ones((queries, n), dtype=bool)
    valid[np.arange(queries), qrows[:queries]] = False
    ranked = rank_rows({c: v[:queries, :n] for c, v in raw.items()}, valid, MEASURES, 5)
    return valid, {m: [r.measures[m].rows for r in ranked] for m in MEASURES}


def disk_probe(path: Path, rows: int = 200, seed: int = 9) -> dict:
    """Random exact style rows read with positioned reads, one at a time: what a first-pass
    fast-mode query pays per row when its rows are not in the page cache (the yardstick of the
    ``fast_first_pass`` figures; the machines here share their disks)."""
    mm = np.load(path, mmap_mode="r")
    row_bytes, offset, n = int(np.prod(mm.shape[1:])) * mm.dtype.itemsize, mm.offset, mm.shape[0]
    del mm
    picks = np.random.default_rng(seed).choice(n, min(rows, n), replace=False)
    buf = bytearray(row_bytes)
    fd = os.open(path, os.O_RDONLY)
    try:
        t = time.perf_counter()
        for i in picks:
            os.preadv(fd, [buf], offset + int(i) * row_bytes)
        dt = time.perf_counter() - t
    finally:
        os.close(fd)
    return {"rows": int(picks.size), "ms_per_row": round(dt / picks.size * 1000, 3),
            "mb_per_s": round(picks.size * row_bytes / dt / 1e6, 1)}


def naive_loop(engine: ExactEngine, q: Query) -> float:
    t = time.perf_counter()
    n = len(engine)
    ed, cs, ls, dc = np.empty(n), np.empty(n), np.empty(n), np.empty(n)
    qm, qf, qs = np.unpackbits(q.mask), q.feature.astype(np.float64), q.style.astype(np.float64)
    for i in range(n):
        f = engine.features[i].astype(np.float64)
        ed[i] = np.sqrt(((f - qf) ** 2).sum())
        cs[i] = f @ qf / (np.linalg.norm(f) * np.linalg.norm(qf))
        ls[i] = ((engine.styles[i].astype(np.float64) - qs) ** 2).sum()
        m = np.unpackbits(engine.masks[i])
        tot = m.sum() + qm.sum()
        dc[i] = 2 * (m & qm).sum() / tot if tot else 1.0
    es, ss = 1 - ed / ed.max(), 1 - ls / ls.max()
    for parts in ((es, dc), (cosine_new(cs), dc), (ss, es), (ss, cosine_new(cs)), (ss, dc)):
        np.argsort(-harmonic_mean(*parts))[:5]
    return time.perf_counter() - t


def faiss_time(engine: ExactEngine, n: int, queries: list[Query], budget_bytes: int) -> dict | None:
    try:
        import faiss
    except ImportError:
        return None
    F = np.ascontiguousarray(engine.features[:n])
    l2, ip = faiss.IndexFlatL2(F.shape[1]), faiss.IndexFlatIP(F.shape[1])
    l2.add(F)
    norms = np.linalg.norm(F, axis=1, keepdims=True)
    ip.add(F / np.where(norms > 0, norms, 1))
    style = None
    if n * engine.styles.shape[1] * 4 <= budget_bytes:
        style = faiss.IndexFlatL2(engine.styles.shape[1])
        for s in range(0, n, 2000):
            style.add(np.ascontiguousarray(engine.styles[s:min(n, s + 2000)]))
    lat = []
    for q in queries:
        t = time.perf_counter()
        l2.search(q.feature[None], 5)
        ip.search((q.feature / np.linalg.norm(q.feature))[None], 5)
        if style is not None:
            style.search(q.style[None], 5)
        lat.append(time.perf_counter() - t)
    out = {"ms": round(statistics.median(lat) * 1000, 2), "includes_style": style is not None,
           "ram_bytes": int(F.nbytes * 2 + (n * engine.styles.shape[1] * 4 if style is not None else 0))}
    del l2, ip, style
    gc.collect()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("index", type=Path)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/dermsearch-scaling"))
    ap.add_argument("--queries", type=int, default=100, help="fast-mode queries at the largest size")
    ap.add_argument("--faiss-style-gb", type=float, default=7.0, help="FAISS copies the style matrix into RAM: "
                    "largest copy to try (GB)")
    ap.add_argument("--plot", action="store_true", help="write docs/scaling.png")
    ap.add_argument("--build-only", action="store_true", help="write the synthetic archive and stop")
    ap.add_argument("--sizes", type=int, nargs="+", help="measure only these archive sizes")
    ap.add_argument("--code-precision", choices=CODE_PRECISIONS, default="auto",
                    help="the code-space archive's sketches and mask cells (FastConfig.code_precision; float32 "
                    "for bench_fast_codes.py's paired comparison)")
    ap.add_argument("--rerank", choices=("float32", "int6"), default="float32",
                    help="code-space method: re-rank from the float32 rows (exact scores), or from int6 rows alone "
                         "(each synthesised row encoded and decoded as `optimize --precision int6` stores it)")
    ap.add_argument("--method", choices=("auto", "rows", "codes"), default="auto",
                    help="rows: synthetic rows materialised (fast-mode files of INDEX_DIR needed); codes: the "
                    "archive in code space, no style rows stored (scaling_codes.py); auto: codes past 100,000 rows")
    args = ap.parse_args()
    import sys

    def log(msg: str) -> None:
        print(time.strftime("%H:%M:%S ") + msg, file=sys.stderr, flush=True)

    if args.method == "codes" or (args.method == "auto" and args.rows > 100_000):
        import scaling_codes

        if args.plot:
            log("--plot draws the curve up to 100,000 rows only (it has exact mode's figures): not drawn")
        result = scaling_codes.run(args, log)
        emit(result if "built" in result else {**result, "machine": machine()})
        return

    if args.rerank != "float32":
        sys.exit("--rerank int6 needs the code-space method (--method codes, or --rows above 100,000)")
    index = Index.open(args.index)
    try:
        real = FastIndex.open(fast_dir(index.directory, index.version))
    except FastModeMissing as e:
        sys.exit(f"{e}: run 'dermsearch optimize {args.index}' on a copy you may write, or use --method codes")
    args.workdir.mkdir(parents=True, exist_ok=True)
    fast, synth = build_archive(real, args.rows, args.workdir, real.config, log)
    fast.config = FastConfig(**{**fast.info["config"], **{k: getattr(FastConfig(), k) for k in
                                                          ("candidates", "wide_candidates", "wide_rows",
                                                                                      "normaliser_candidates")}})
    if args.build_only:
        emit({"built": str(args.workdir), **synth})
        return
    rng = np.random.default_rng(1)
    sizes = args.sizes or [n for n in SIZES if n < args.rows] + [args.rows]
    # one query set for every size: rows of the smallest prefix (real images), the first 20 at the
    # smaller sizes; their exact references come from one cached pass over the whole archive
    qrows_all = rng.choice(min(sizes + [synth["real_rows"]]), max(20, args.queries), replace=False)
    raw_ref = exact_references(head(fast, max(sizes)).exact, qrows_all, args.workdir, log)
    curve = []
    for n in sizes:
        log(f"N = {n}")
        view = head(fast, n)
        e = view.exact
        qrows = qrows_all[:20 if n < args.rows else args.queries]
        queries = [query_of(e, int(i)) for i in qrows]
        n_exact = 5 if n <= 20_000 else 1       # past 20k every exact query streams the archive from disk
        exact_lat = []
        if n <= 20_000:          # warm-up where the page cache can hold the rows; past it, reads come from disk
            exact_search(e, queries[0], int(qrows[0]))
        for q, i in zip(queries[:n_exact], qrows):
            t = time.perf_counter()
            exact_search(e, q, int(i))
            exact_lat.append(time.perf_counter() - t)
        valid, ref = references_at(raw_ref, qrows_all, n, len(queries))
        probe = disk_probe(view.directory / "styles.npy") if n == max(sizes) else None
        # two passes over the queries: the first reads its exact style rows from wherever they are
        # (disk, unless cached), the second finds the same rows in the page cache
        first_lat, fast_lat, recall, certified = [], [], {m: [] for m in MEASURES}, 0
        for j, q in enumerate(queries):
            t = time.perf_counter()
            view.search(q, 5, MEASURES, valid[j])
            first_lat.append(time.perf_counter() - t)
        for j, q in enumerate(queries):
            t = time.perf_counter()
            r = view.search(q, 5, MEASURES, valid[j])
            fast_lat.append(time.perf_counter() - t)
            certified += all(r.certified.values())
            for m in MEASURES:
                recall[m].append(len(set(ref[m][j]) & set(r.rows[m])) / 5)
        per_measure = {}
        if n == max(sizes):       # one measure per query (what `search --measure NAME` asks)
            for m in MEASURES:
                lat, rec = [], []
                for j, q in enumerate(queries):
                    t = time.perf_counter()
                    r = view.search(q, 5, (m,), valid[j])
                    lat.append(time.perf_counter() - t)
                    rec.append(len(set(ref[m][j]) & set(r.rows[m])) / 5)
                per_measure[m] = {"ms_median": round(statistics.median(lat) * 1000, 2),
                                  "ms_p95": round(float(np.percentile(lat, 95)) * 1000, 2),
                                  "recall_at_5": round(float(np.mean(rec)), 4)}
        row = {
            "images": n,
            "exact_ms": round(statistics.median(exact_lat) * 1000, 1),
            "exact_bytes_per_query": e.bytes_per_query,
            "fast_ms_median": round(statistics.median(fast_lat) * 1000, 2),
            "fast_ms_p95": round(float(np.percentile(fast_lat, 95)) * 1000, 2),
            "fast_first_pass_ms_median": round(statistics.median(first_lat) * 1000, 2),
            "fast_first_pass_ms_p95": round(float(np.percentile(first_lat, 95)) * 1000, 2),
            "fast_queries": len(fast_lat),
            "fast_recall_at_5": {m: round(float(np.mean(v)), 4) for m, v in recall.items()},
            "fast_normalisers_certified": f"{certified}/{len(fast_lat)}",
            **({"fast_one_measure_per_query": per_measure} if per_measure else {}),
            **({"style_row_reads_before_the_fast_queries": probe} if probe else {}),
            "fast_bytes_scanned_per_query": view.bytes_scanned_per_query,
            "fast_resident_bytes": view.resident_bytes,
        }
        if n <= 20_000:            # the loop reads every row in Python: past 20k it alone would take minutes
            row["naive_loop_ms"] = round(naive_loop(e, queries[0]) * 1000, 0)
        ft = faiss_time(e, n, queries[:5], int(args.faiss_style_gb * 1e9))
        if ft:
            row["faiss_flat"] = ft
        row["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        log(json.dumps(row))
        curve.append(row)
    result = {"benchmark": "scaling", "data": f"{args.index} + synthetic", "synthetic": synth,
              "fast_config": dataclasses.asdict(fast.config), "fast_files_config": fast.info["config"],
              "style_explained_variance": fast.info["style_explained_variance"],
              "curve": curve, "machine": machine()}
    emit(result)
    if args.plot:
        plot(curve, REPO / "docs" / "scaling.png")


def plot(curve: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r["images"] for r in curve]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    a.plot(n, [r["exact_ms"] for r in curve], "o-", label="dermsearch exact (all 10 measures)")
    a.plot(n, [r["fast_ms_median"] for r in curve], "s-", label="dermsearch fast (all 10, exact re-rank)")
    nv = [(r["images"], r["naive_loop_ms"]) for r in curve if "naive_loop_ms" in r]
    a.plot(*zip(*nv), "x--", label="per-image loop (float64)")
    fs = [(r["images"], r["faiss_flat"]["ms"]) for r in curve if r.get("faiss_flat", {}).get("includes_style")]
    if fs:
        a.plot(*zip(*fs), "^-", label="FAISS Flat (ED, CS, LS rankings only)")
    a.axhline(50, color="grey", lw=0.8, ls=":")
    a.set(xscale="log", yscale="log", xlabel="images in the archive", ylabel="ms per query (median)",
          title="Query latency, 2-core CPU")
    a.legend(fontsize=8)
    b.plot(n, [r["exact_bytes_per_query"] / 1e9 for r in curve], "o-", label="exact: matrices read per query")
    b.plot(n, [r["fast_resident_bytes"] / 1e9 for r in curve], "s-", label="fast: arrays held in RAM")
    b.plot(n, [r["fast_bytes_scanned_per_query"] / 1e9 for r in curve], "d--", label="fast: bytes scanned per query")
    b.plot(n, [r["peak_rss_bytes"] / 1e9 for r in curve], "k:", label="process peak RSS (cumulative)")
    b.set(xscale="log", yscale="log", xlabel="images in the archive", ylabel="GB", title="Memory")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
