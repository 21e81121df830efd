"""Exact search with the matrices in GPU memory (``search/device.py``): all ten measures at 100k rows.

    python benchmarks/bench_gpu.py [--rows 100000] [--device cuda] [--queries 20]

Synthetic rows of the real dimensions (1024-d features, 80,712-d style vectors, 128x128 masks;
100k rows = 33 GB, which fits an H200's 141 GB), built on the device. In the same run: the
device's read bandwidth (a sum over the style matrix), one query and a batch of 64 through
``DeviceEngine.rank``, and agreement with the CPU engine on a 2,000-row slice. Without CUDA it
prints why and exits 0; ``--device cpu`` runs the same code on the CPU (small ``--rows`` only).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import torch
from _common import emit, machine

from dermsearch.extract.vectors import Vectors
from dermsearch.search.device import DeviceEngine, popcount_table
from dermsearch.search.engine import ExactEngine, Query
from dermsearch.search.measures import MEASURES


def synthetic(rows: int, device: str, seed: int = 0) -> Vectors:
    g = torch.Generator(device=device).manual_seed(seed)
    F = torch.rand((rows, 1024), generator=g, device=device)
    S = torch.rand((rows, 80_712), generator=g, device=device)
    M = torch.randint(0, 256, (rows, 2048), generator=g, device=device, dtype=torch.uint8)
    return F, S, M


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--queries", type=int, default=20)
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        emit({"benchmark": "gpu", "skipped": "torch sees no CUDA GPU here", "machine": machine()})
        return
    F, S, M = synthetic(args.rows, args.device)
    popcount = popcount_table(args.device)
    lut_areas = popcount[M.long()].sum(1).double()
    engine = DeviceEngine.from_tensors(F, S, M, lut_areas)        # the tensors are already on the device
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def timed(fn, repeat):
        fn()
        sync()
        out = []
        for _ in range(repeat):
            t = time.perf_counter()
            fn()
            sync()
            out.append(time.perf_counter() - t)
        return statistics.median(out)

    nbytes = F.numel() * 4 + S.numel() * 4 + M.numel() + 8 * 3 * args.rows
    read = timed(lambda: (S.sum(), F.sum(), M.sum()), 5)
    qrows = np.random.default_rng(1).choice(args.rows, max(64, args.queries), replace=False)

    def batch(rows) -> Vectors:
        idx = torch.as_tensor(rows, device=args.device)
        return Vectors(F[idx].cpu().numpy(), S[idx].cpu().numpy(), M[idx].cpu().numpy(),
                       lut_areas[idx].cpu().numpy().astype(np.int64))
    one = [batch([int(i)]) for i in qrows[: args.queries]]
    valid1 = np.ones((1, args.rows), bool)
    lat = []
    engine.rank(one[0], valid1, MEASURES, 5)
    for b in one:
        sync()
        t = time.perf_counter()
        engine.rank(b, valid1, MEASURES, 5)
        sync()
        lat.append(time.perf_counter() - t)
    b64 = batch([int(i) for i in qrows[:64]])
    batch_s = timed(lambda: engine.rank(b64, np.ones((64, args.rows), bool), MEASURES, 5), 3)
    # agreement with the CPU engine on a slice
    n = min(2000, args.rows)
    host = Vectors(F[:n].cpu().numpy(), S[:n].cpu().numpy(), M[:n].cpu().numpy(),
                   lut_areas[:n].cpu().numpy().astype(np.int64))
    cpu, dev = ExactEngine.of(host), DeviceEngine(host, args.device)
    q = Query.batch([Query.from_row(host, 7)])
    v = np.ones((1, n), bool)
    a, b = cpu.rank(q, v, MEASURES, 5)[0], dev.rank(q, v, MEASURES, 5)[0]
    same = all(a.measures[m].rows.tolist() == b.measures[m].rows.tolist() for m in MEASURES)
    diff = max(float(np.abs(a.measures[m].scores - b.measures[m].scores).max()) for m in MEASURES)
    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else None
    emit({"benchmark": "gpu", "device": args.device, "gpu": gpu, "rows": args.rows, "bytes_per_query": nbytes,
          "read_bandwidth_gb_s": round(nbytes / read / 1e9, 1), "bound_ms": round(read * 1000, 2),
          "query_ms_all_ten_measures": round(statistics.median(lat) * 1000, 2),
          "ratio_to_bound": round(statistics.median(lat) / read, 2),
          "batch_64_ms_per_query": round(batch_s / 64 * 1000, 2),
          "same_top5_as_cpu_engine_2000_rows": same, "max_abs_score_diff_vs_cpu": diff, "machine": machine()})


if __name__ == "__main__":
    sys.exit(main())
