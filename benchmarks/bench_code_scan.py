"""What fast mode's first pass could gain from smaller codes: one query's product with a matrix of
codes (rows x dims), stored as float32 (today's), float16, bfloat16 or int8, against the
read-bandwidth yardstick of the float32 matrix measured in the same run.

    python benchmarks/bench_code_scan.py [--rows 1000000] [--dims 256] [--repeat 5]

Fast mode scans about 3.2 KB of float32 codes per image (PCA projections 2 x 128, residual sketch
256, mask cells 256: docs/performance.md); at a million images that first pass dominates a query.
The candidates timed, all on the same random matrix:
- ``float32``: ``kernels.row_parallel_products`` (what fast mode runs, one thread per core);
- ``float16`` / ``bfloat16``: torch's matrix-vector product on a half-precision copy;
- ``int8``: one scale per row, the rows converted to float32 in blocks that stay in cache, then
  numpy's product (no int8 BLAS is needed);
- ``float32 read``: numpy's row sums of the float32 matrix (a read of every byte: the yardstick).
Each line gives the median and best of ``--repeat`` runs and the largest relative error of the
products against float32. Nothing of dermsearch's search changes: this measures a design choice.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from _common import emit, machine

from dermsearch.search.kernels import blas_single_threaded, row_parallel_products


def timed(fn, repeat: int) -> dict:
    fn()
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return {"ms_median": round(statistics.median(ts) * 1000, 2), "ms_best": round(min(ts) * 1000, 2)}


def int8_products(codes: np.ndarray, scales: np.ndarray, q: np.ndarray, block: int = 8192) -> np.ndarray:
    out = np.empty(codes.shape[0], dtype=np.float32)
    for s in range(0, codes.shape[0], block):
        out[s:s + block] = codes[s:s + block].astype(np.float32) @ q
    return out * scales


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dims", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.rows, args.dims)).astype(np.float32)
    q = rng.normal(size=args.dims).astype(np.float32)
    exact = x @ q
    scale = np.abs(exact).max()

    def err(got) -> float:
        return float(np.abs(np.asarray(got, np.float32) - exact).max() / scale)

    out = {}
    with blas_single_threaded():
        out["float32_read"] = timed(lambda: x.sum(axis=1), args.repeat)
        f32 = row_parallel_products(q[None], x)[0]
        out["float32"] = {**timed(lambda: row_parallel_products(q[None], x), args.repeat),
                          "bytes_per_row": 4 * args.dims, "max_relative_error": err(f32)}
        scales = (np.abs(x).max(axis=1) / 127).astype(np.float32)
        codes = np.round(x / scales[:, None]).astype(np.int8)
        out["int8"] = {**timed(lambda: int8_products(codes, scales, q), args.repeat), "bytes_per_row": args.dims + 4,
                       "max_relative_error": err(int8_products(codes, scales, q))}
    tx = torch.from_numpy(x)
    for name, dtype in (("float16", torch.float16), ("bfloat16", torch.bfloat16)):
        h, hq = tx.to(dtype), torch.from_numpy(q).to(dtype)
        out[name] = {**timed(lambda h=h, hq=hq: h @ hq, args.repeat), "bytes_per_row": 2 * args.dims,
                     "max_relative_error": err((h @ hq).float().numpy())}
    base = out["float32"]["ms_median"]
    for name in ("float16", "bfloat16", "int8"):
        out[name]["speedup_vs_float32"] = round(base / out[name]["ms_median"], 2)
    gb = x.nbytes / 1e9
    out["float32"]["gb_s"] = round(gb / base * 1000, 2)
    out["float32"]["ratio_to_read"] = round(base / out["float32_read"]["ms_median"], 2)
    emit({"benchmark": "code_scan", "rows": args.rows, "dims": args.dims, "float32_gb": round(gb, 3),
          "results": out, "machine": machine()})


if __name__ == "__main__":
    main()
