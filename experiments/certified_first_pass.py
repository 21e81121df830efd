"""Issue #21, certified mode: could a cheaper first pass than bfloat16 reach 0.6x the float32 bound?

Two questions, measured in one run on one index (`dermsearch optimize IX --certified` first):

1. kernel rates: how fast this CPU multiplies one query by a matrix stored in float32, bfloat16
   (torch), int8 (torch ``_int_mm``, exact int32 sums) and int8 through ONNX Runtime's
   ``MatMulInteger`` (weights pre-packed), all on the index's own row count and style width;
2. bound tightness: how many rows a query must check exactly when the first pass is the engine's own
   (int8, one scale per row and Gram layer, since 2026-12-01; bfloat16 before), int8 with one scale
   per row, int8 per layer computed here in float64 (the probe that led to the engine's pass), or
   the fast-mode PCA projection (the rest bounded by Cauchy-Schwarz on the residuals) - the
   certified engine's own procedure with only ``_first_pass`` swapped; -1 = more than half the rows
   open (falls back to exact search).

    python experiments/certified_first_pass.py /tmp/ham-ship --queries 10 \
        > docs/results/issue21_certified_first_pass.json

Probe code: the int8/PCA passes are computed in float64 here (to count rows), not at kernel speed.
"""

from __future__ import annotations

import argparse
import json
import re
import time

import numpy as np


def median_ms(f, rounds: int = 7) -> float:
    f()
    ts = []
    for _ in range(rounds):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts) * 1e3)


def kernel_rates(n: int, width: int) -> dict:
    import onnxruntime as ort
    import torch
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    out = {}
    f32 = torch.randn(n, width)
    q = torch.randn(width)
    out["float32_ms"] = median_ms(lambda: f32 @ q)
    bf = f32.to(torch.bfloat16)
    f32 = None  # free it before the next matrix
    qb = q.to(torch.bfloat16)[None]
    out["bfloat16_torch_ms"] = median_ms(lambda: bf @ qb.T)
    bf = None  # free it before the next matrix
    i8 = torch.randint(-127, 128, (n, width), dtype=torch.int8)
    a8 = torch.randint(-127, 128, (1, width), dtype=torch.int8)
    out["int8_torch_int_mm_ms"] = median_ms(lambda: torch._int_mm(a8, i8.T))
    bt = np.ascontiguousarray(i8.numpy().T)
    i8 = None  # free it before the next matrix
    graph = helper.make_graph([helper.make_node("MatMulInteger", ["A", "B", "azp"], ["Y"])], "g",
                              [helper.make_tensor_value_info("A", TensorProto.UINT8, [1, width])],
                              [helper.make_tensor_value_info("Y", TensorProto.INT32, [1, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 10)])
    model.ir_version = 8
    model.graph.initializer.append(helper.make_tensor("B", TensorProto.INT8, [width, n], vals=bt.tobytes(), raw=True))
    model.graph.initializer.append(helper.make_tensor("azp", TensorProto.UINT8, [], vals=[128]))
    del bt
    so = ort.SessionOptions()
    so.intra_op_num_threads = torch.get_num_threads()
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    del model
    a = rng.integers(0, 256, (1, width), dtype=np.uint8)
    out["int8_ort_matmulinteger_ms"] = median_ms(lambda: sess.run(None, {"A": a}))
    values = n * width
    out["rates_gb_per_s_of_stored_bytes"] = {
        "float32": 4 * values / out["float32_ms"] / 1e6, "bfloat16": 2 * values / out["bfloat16_torch_ms"] / 1e6,
        "int8_torch": values / out["int8_torch_int_mm_ms"] / 1e6,
        "int8_ort": values / out["int8_ort_matmulinteger_ms"] / 1e6}
    out["first_pass_vs_float32"] = {k: out[k] / out["float32_ms"] for k in
                                    ("bfloat16_torch_ms", "int8_torch_int_mm_ms", "int8_ort_matmulinteger_ms")}
    return out


def rows_checked(index: str, n_queries: int, pca_dims: list[int]) -> dict:
    from dermsearch.runtime import Runtime
    from dermsearch.search.certified import CertifiedEngine
    from dermsearch.search.engine import ExactEngine
    from dermsearch.search.measures import MEASURES
    from dermsearch.search.searcher import Searcher

    s = Searcher(index, mode="certified", runtime=Runtime(backend="torch"))
    assert isinstance(s.engine, CertifiedEngine)
    # every style column, as when this probe was first run (before zero-weight Grams were skipped)
    x = s.engine.exact
    eng = CertifiedEngine(ExactEngine(x.features, x.styles, x.masks, x.mask_areas, x.feature_sqnorms, x.style_sqnorms),
                          layout=s.index.manifest.get("style_layers"))
    n = len(eng)
    measures = list(MEASURES)
    qrows = np.random.default_rng(1).choice(n, n_queries, replace=False)
    batch = eng.take(qrows)
    valid = np.ones((n_queries, n), bool)
    valid[np.arange(n_queries), qrows] = False

    def checked(rankings) -> list[int]:
        return [int(m.group(1)) if (m := re.search(r"(\d+) rows checked", " ".join(r.notes))) else -1
                for r in rankings]

    ref = eng.rank(batch, valid, measures, 5)
    rel = np.sqrt((eng.err ** 2).sum(axis=1)) / np.sqrt(eng.c_sq)
    out = {"queries": n_queries, "rows": n, "engine_int8_per_layer": {"checked": checked(ref),
           "relative_error_median": float(np.median(rel))}}
    mu = eng.mu.astype(np.float64)
    styles = eng.exact.styles
    eng.max_checked = 0.5

    def same(rankings) -> bool:
        return all(np.array_equal(o.measures[m].rows, r.measures[m].rows)
                   for o, r in zip(rankings, ref) for m in measures)

    # int8, one scale per row (max |x - mu| / 127), residual norm per row
    q8 = np.empty(styles.shape, np.float32)
    scale, rnorm = np.empty(n), np.empty(n)
    for a in range(0, n, 256):
        c = np.asarray(styles[a:a + 256], np.float64) - mu
        sc = np.abs(c).max(axis=1) / 127.0
        sc[sc == 0] = 1.0
        qq = np.clip(np.rint(c / sc[:, None]), -127, 127)
        q8[a:a + 256], scale[a:a + 256] = qq, sc
        rnorm[a:a + 256] = np.linalg.norm(c - qq * sc[:, None], axis=1)

    def int8_pass(st):
        qc = np.asarray(st, np.float64) - mu
        p = (q8 @ qc.astype(np.float32).T).astype(np.float64).T * scale
        qn = np.linalg.norm(qc, axis=1)
        return list(p), [qn[j] * rnorm * 1.001 + 1e-3 * np.abs(p[j]) + 1e-9 for j in range(len(qc))]

    eng._first_pass = int8_pass
    r = eng.rank(batch, valid, measures, 5)
    out["int8_per_row"] = {"checked": checked(r), "same_top5": same(r),
                           "relative_error_median": float(np.median(rnorm / np.sqrt(eng.c_sq)))}
    q8 = None  # free it before the next matrix

    # int8 with one scale per row and Gram layer, the query quantised the same way (one int8
    # vector): |q·x - p| <= sum_l ||q_l||·||e_l|| + ||q_l - t_l b_l||·||x̂_l|| (the int products exact)
    layers = [(e["offset"], e["offset"] + e["size"]) for e in s.index.manifest["style_layers"] if e["beta"] > 0]
    L = len(layers)
    codes = [np.empty((n, b - a), np.float32) for a, b in layers]
    lscale, lerr, lnorm = np.empty((n, L)), np.empty((n, L)), np.empty((n, L))
    for a0 in range(0, n, 256):
        c = np.asarray(styles[a0:a0 + 256], np.float64) - mu
        for li, (a, b) in enumerate(layers):
            blk = c[:, a:b]
            sc = np.abs(blk).max(axis=1) / 127.0
            sc[sc == 0] = 1.0
            qq = np.clip(np.rint(blk / sc[:, None]), -127, 127)
            codes[li][a0:a0 + 256], lscale[a0:a0 + 256, li] = qq, sc
            lerr[a0:a0 + 256, li] = np.linalg.norm(blk - qq * sc[:, None], axis=1)
            lnorm[a0:a0 + 256, li] = np.linalg.norm(qq * sc[:, None], axis=1)

    def int8_layer_pass(st):
        qc = np.asarray(st, np.float64) - mu
        ps, bs = [], []
        for j in range(len(qc)):
            p, bnd = np.zeros(n), np.zeros(n)
            for li, (a, b) in enumerate(layers):
                ql = qc[j, a:b]
                t = max(np.abs(ql).max() / 127.0, 1e-300)
                bq = np.clip(np.rint(ql / t), -127, 127)
                p += t * lscale[:, li] * (codes[li] @ bq.astype(np.float32)).astype(np.float64)
                bnd += np.linalg.norm(ql) * lerr[:, li] + np.linalg.norm(ql - t * bq) * lnorm[:, li]
            ps.append(p)
            bs.append(bnd * (1 + 1e-9) + 1e-12 * np.abs(p) + 1e-30)
        return ps, bs

    eng._first_pass = int8_layer_pass
    r = eng.rank(batch, valid, measures, 5)
    out["int8_per_layer_query_int8"] = {"checked": checked(r), "same_top5": same(r),
                                        "relative_error_median": float(np.median(
                                            np.sqrt((lerr ** 2).sum(1)) / np.sqrt(eng.c_sq)))}
    codes = None  # free it before the next matrix
    fast = s.fast
    if fast is not None:
        a = fast.arrays
        fmu, csq = a["style_mean"].astype(np.float64), np.asarray(a["style_csq"], np.float64)
        for d in pca_dims:
            basis, proj = np.asarray(a["style_basis"][:d], np.float64), np.asarray(a["style_proj"][:, :d], np.float64)
            resid = np.sqrt(np.maximum(csq - np.einsum("ij,ij->i", proj, proj), 0.0))

            def pca_pass(st, basis=basis, proj=proj, resid=resid):
                qc = np.asarray(st, np.float64) - fmu
                pq = qc @ basis.T
                qr = np.sqrt(np.maximum(np.einsum("ij,ij->i", qc, qc) - np.einsum("ij,ij->i", pq, pq), 0.0))
                p = pq @ proj.T
                return list(p), [qr[j] * resid * (1 + 1e-6) + 1e-9 for j in range(len(qc))]

            eng.mu, eng.c_sq, eng._first_pass = fmu.astype(np.float32), csq, pca_pass
            r = eng.rank(batch, valid, measures, 5)
            out[f"pca_{d}"] = {"checked": checked(r), "same_top5": same(r),
                               "explained_variance": float(1 - (resid ** 2).sum() / csq.sum())}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("index")
    ap.add_argument("--queries", type=int, default=10)
    ap.add_argument("--pca-dims", default="128,512")
    ap.add_argument("--no-kernels", action="store_true", help="only count the rows checked")
    args = ap.parse_args()
    import torch

    from dermsearch.index import Index
    from dermsearch.search.kernels import cpu_model

    m = Index.open(args.index).manifest
    rows = len(Index.open(args.index).snapshot(vectors=False).ids)
    result = {"cpu": cpu_model(), "threads": torch.get_num_threads(),
              "kernels": None if args.no_kernels else kernel_rates(rows, m["style_dim"]),
              "rows_checked": rows_checked(args.index, args.queries, [int(d) for d in args.pca_dims.split(",")])}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
