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
  numpy's product (no int8 BLAS is needed), the rows split over one thread per core as
  ``row_parallel_products`` splits them;
- the yardstick: ``_common.read_bandwidth`` over the float32 matrix (a read of every byte, one
  thread per core), as a time for its bytes.
Every candidate uses one thread per core (torch's for the half-precision ones); the JSON says how many.
Each line gives the median and best of ``--repeat`` runs and the largest relative error of the
products against float32. Nothing of dermsearch's search changes: this measures a design choice.
"""

from __future__ import annotations

import argparse
import os
import statistics
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from _common import emit, machine, read_bandwidth, timed

from dermsearch.search.kernels import blas_single_threaded, row_parallel_products


def timed_ms(fn, repeat: int) -> dict:
    ts = timed(fn, repeat)
    return {"ms_median": round(statistics.median(ts) * 1000, 2), "ms_best": round(min(ts) * 1000, 2)}


def int8_products(codes: np.ndarray, scales: np.ndarray, q: np.ndarray, pool: ThreadPoolExecutor,
                  block: int = 8192) -> np.ndarray:
    """The products of int8 rows (one scale each) with ``q``: each thread converts its part of the
    rows to float32 a cached block at a time (numpy releases the GIL)."""
    out = np.empty(codes.shape[0], dtype=np.float32)
    cuts = np.linspace(0, codes.shape[0], pool._max_workers + 1).astype(int)

    def part(a: int, b: int) -> None:
        for s in range(a, b, block):
            e = min(b, s + block)
            out[s:e] = codes[s:e].astype(np.float32) @ q

    list(pool.map(part, cuts[:-1], cuts[1:]))
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

    threads = os.cpu_count() or 1
    read_s = x.nbytes / read_bandwidth([x], threads, args.repeat)
    out = {"float32_read": {"ms_best": round(read_s * 1000, 2), "threads": threads}}
    pool = ThreadPoolExecutor(threads)
    with blas_single_threaded():
        f32 = row_parallel_products(q[None], x)[0]
        out["float32"] = {**timed_ms(lambda: row_parallel_products(q[None], x), args.repeat),
                          "bytes_per_row": 4 * args.dims, "threads": threads, "max_relative_error": err(f32)}
        scales = (np.abs(x).max(axis=1) / 127).astype(np.float32)
        codes = np.round(x / scales[:, None]).astype(np.int8)
        out["int8"] = {**timed_ms(lambda: int8_products(codes, scales, q, pool), args.repeat),
                       "bytes_per_row": args.dims + 4, "threads": threads,
                       "max_relative_error": err(int8_products(codes, scales, q, pool))}
    tx = torch.from_numpy(x)
    for name, dtype in (("float16", torch.float16), ("bfloat16", torch.bfloat16)):
        h, hq = tx.to(dtype), torch.from_numpy(q).to(dtype)
        out[name] = {**timed_ms(lambda h=h, hq=hq: h @ hq, args.repeat), "bytes_per_row": 2 * args.dims,
                     "threads": torch.get_num_threads(),
                     "max_relative_error": err((h @ hq).float().numpy())}
    base = out["float32"]["ms_median"]
    for name in ("float16", "bfloat16", "int8"):
        out[name]["speedup_vs_float32"] = round(base / out[name]["ms_median"], 2)
    gb = x.nbytes / 1e9
    out["float32"]["gb_s"] = round(gb / base * 1000, 2)
    out["float32"]["ratio_to_read"] = round(out["float32"]["ms_best"] / out["float32_read"]["ms_best"], 2)
    emit({"benchmark": "code_scan", "rows": args.rows, "dims": args.dims, "float32_gb": round(gb, 3),
          "results": out, "machine": machine()})


if __name__ == "__main__":
    main()
