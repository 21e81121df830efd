"""Shared helpers for benchmarks: where the real data lives, JSON output, directory sizes."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

import torch

import dermsearch  # noqa: F401  (first: it sets OMP_WAIT_POLICY before torch loads)

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def require(path: Path) -> Path:
    if not path.exists():
        print(json.dumps({"skipped": f"{path} not found (see ../shared/data/README.md)"}))
        sys.exit(0)
    return path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def machine() -> dict:
    from dermsearch.search.kernels import cpu_model

    return {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__}


def ham_images(n: int) -> list:
    """The first ``n`` HAM10000 images of ``labels.csv``, decoded (exits with "skipped" without the data)."""
    import csv

    from dermsearch.extract import load_image

    labels = require(DATA / "ham10000" / "labels.csv")
    with open(labels, newline="") as f:
        rows = [r for _, r in zip(range(n), csv.DictReader(f))]
    return [load_image(labels.parent / r["image_path"]) for r in rows]


def time_extractors(extractors: dict, images: list, rounds: int) -> dict:
    """Median ms per image of each named :class:`~dermsearch.extract.Extractor` over ``images``, in
    batches of 16 (an index build) and one at a time (a query; the first 16 images), interleaved
    rounds after an untimed warm-up (which also exports the ONNX model)."""
    import statistics
    import time

    prepared = {name: [ex.prepare(im) for im in images] for name, ex in extractors.items()}
    for name, ex in extractors.items():
        ex.extract_prepared(prepared[name][:2])
    timing = {name: {"batch16": [], "batch1": []} for name in extractors}
    for _ in range(rounds):
        for name, ex in extractors.items():
            p = prepared[name]
            t0 = time.perf_counter()
            for i in range(0, len(p), 16):
                ex.extract_prepared(p[i:i + 16])
            t1 = time.perf_counter()
            for one in p[:16]:
                ex.extract_prepared([one])
            t2 = time.perf_counter()
            timing[name]["batch16"].append((t1 - t0) / len(p) * 1e3)
            timing[name]["batch1"].append((t2 - t1) / min(16, len(p)) * 1e3)
    return {name: {f"ms_per_image_{b}": round(statistics.median(v), 2) for b, v in d.items()}
            for name, d in timing.items()}


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def emit(result: dict) -> None:
    print(json.dumps(result, indent=1))


def read_bandwidth(arrays, threads: int | None = None, repeat: int = 5) -> float:
    """Bytes per second of a pure read of ``arrays`` (an integer OR-reduction over their bytes,
    split across ``threads`` threads; numpy releases the GIL), best of ``repeat``. The
    memory-bandwidth yardstick for exact search: measured on the same matrices, in the same run."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    threads = threads or os.cpu_count() or 1
    chunks = []
    for a in arrays:
        raw = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
        words = raw[: raw.size - raw.size % 8].view(np.uint64)
        chunks += [words[i * words.size // threads:(i + 1) * words.size // threads] for i in range(threads)]
    total = sum(c.nbytes for c in chunks)
    best = float("inf")
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(np.bitwise_or.reduce, chunks))
        for _ in range(repeat):
            t = time.perf_counter()
            list(pool.map(np.bitwise_or.reduce, chunks))
            best = min(best, time.perf_counter() - t)
    # a second probe, torch's own multithreaded float32 sum over the same matrices: the
    # faster of the two is the yardstick, so the bound is never flattered by a slow probe
    floats = [a for a in arrays if a.dtype == np.float32]
    rest = sum(a.nbytes for a in arrays if a.dtype != np.float32) / total
    for _ in range(repeat + 1):
        t = time.perf_counter()
        for a in floats:
            torch.from_numpy(np.ascontiguousarray(a)).sum()
        # bytes of other dtypes (masks) counted at the first probe's speed
        best = min(best, (time.perf_counter() - t) + rest * best)
    return total / best


def timed(fn, repeat: int) -> list[float]:
    """Seconds of ``repeat`` calls of ``fn`` after one warm-up call."""
    import time

    fn()
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out
