"""Product kernels (``Q @ Xᵀ`` in float32) and the per-machine choice between them.

Exact search is a read of the index matrices, so its speed is the speed of one matrix-vector
product over a matrix far larger than the caches. Which BLAS does that at the machine's read
bandwidth depends on the CPU: torch's (MKL on x86) or numpy's (OpenBLAS) each won on one
processor and lost on another. So the choice is measured, not assumed: :func:`calibrate` times
both on a matrix larger than the last-level cache, once per machine, and caches the result
(``~/.cache/dermsearch/kernels.json``, or ``$DERMSEARCH_CACHE``), keyed by CPU model, core count
and library versions. ``DERMSEARCH_KERNEL=numpy|torch`` overrides it.

A process keeps checking the choice (:class:`KernelChooser`): on a shared host the faster kernel
changed within hours (docs/performance.md), so every few dozen single-query products over a
matrix larger than the cache run on the other kernel, and the kernel whose recent products read
faster serves; a switch is written back to the cache.

Small matrices (below ``SMALL_PRODUCT`` values) always use numpy: there the read costs nothing
and importing torch (~1 s) would cost a small index's search far more than the search itself.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..io import write_json

__all__ = ["KERNELS", "SMALL_PRODUCT", "numpy_products", "torch_products", "kernel_for", "products", "calibrate",
           "calibration", "cpu_model", "measure", "last_level_cache_bytes", "row_parallel_products",
           "blas_single_threaded", "KernelChooser", "chooser", "tuned_products", "code_products",
           "power_of_two_scale"]

SMALL_PRODUCT = 8_000_000        # values below which a matrix is "small" (numpy, one thread is enough)
CALIBRATION_FORMAT = 1


def numpy_products(Q: np.ndarray, X: np.ndarray) -> np.ndarray:
    """``Q @ Xᵀ`` in float32 with numpy's BLAS, X not copied. A small X: one matrix-vector product
    per query (a query's products then do not depend on the batch it came in, and X stays in
    cache between them); a large X with several queries: one matrix-matrix product (one pass)."""
    Q = np.atleast_2d(np.asarray(Q, dtype=np.float32))
    X = np.asarray(X)
    if Q.shape[0] > 1 and X.size >= SMALL_PRODUCT:
        return np.asarray(Q @ X.T, dtype=np.float32)
    out = np.empty((Q.shape[0], X.shape[0]), dtype=np.float32)
    for j in range(Q.shape[0]):
        out[j] = X @ Q[j]
    return out


def torch_products(Q: np.ndarray, X: np.ndarray) -> np.ndarray:
    """``Q @ Xᵀ`` in float32 with torch's BLAS, X not copied (read-only memory maps included)."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)    # read-only arrays (memory maps) are fine: never written
        q = torch.from_numpy(np.ascontiguousarray(np.atleast_2d(Q), dtype=np.float32))
        x = torch.from_numpy(np.asarray(X))
    with torch.inference_mode():
        out = torch.mv(x, q[0])[None, :] if q.shape[0] == 1 else q @ x.T
    return out.numpy()


KERNELS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {"numpy": numpy_products,
                                                                      "torch": torch_products}


# ------------------------------------------------------------------------------- calibration
def cpu_model() -> str:
    """The processor's model name (``/proc/cpuinfo``; else what the platform says)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "cpu model", "hardware")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _machine_key() -> dict:
    import importlib.metadata as md

    def version(name: str) -> str | None:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None
    return {"cpu": cpu_model(), "cores": _cores(), "numpy": np.__version__, "torch": version("torch"),
            "format": CALIBRATION_FORMAT}


def _cache_path() -> Path:
    root = os.environ.get("DERMSEARCH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "dermsearch")
    return Path(root) / "kernels.json"


def _available() -> list[str]:
    import importlib.util

    return [k for k in KERNELS if k != "torch" or importlib.util.find_spec("torch") is not None]


def last_level_cache_bytes() -> int:
    """The largest CPU cache of this machine, from sysfs (0 when unknown)."""
    sizes = []
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        try:
            text = f.read_text().strip().upper()
            sizes.append(int(text[:-1]) * {"K": 2**10, "M": 2**20, "G": 2**30}[text[-1]] if text[-1] in "KMG"
                         else int(text))
        except (OSError, ValueError):
            pass
    return max(sizes, default=0)


def measure(megabytes: int | None = None, repeat: int = 5, batch: int = 16) -> dict:
    """GB/s of each available kernel's products over a float32 matrix of ``megabytes`` (default:
    twice the last-level cache, 512 MB to 2 GB, so that it is read from memory), for one query and
    for a batch of ``batch``. The kernels take turns in every round, so that a machine whose speed
    drifts (a shared host) favours neither; the median round counts."""
    if megabytes is None:
        megabytes = min(2048, max(512, 2 * last_level_cache_bytes() // 2**20))
    width = 65_536
    X = np.random.default_rng(0).random((max(megabytes * 2**20 // (4 * width), 2), width), dtype=np.float32)
    Q = np.random.default_rng(1).random((batch, width), dtype=np.float32)
    names = _available()
    one = {n: [] for n in names}
    many = {n: [] for n in names}
    for n in names:                          # warm-up: imports, first-touch page faults
        KERNELS[n](Q, X)
    for r in range(repeat):
        for n in names if r % 2 == 0 else names[::-1]:
            t = time.perf_counter()
            KERNELS[n](Q[:1], X)
            one[n].append(time.perf_counter() - t)
            if r < 3:
                t = time.perf_counter()
                KERNELS[n](Q, X)
                many[n].append(time.perf_counter() - t)
    out = {n: {"one_query_gb_s": round(X.nbytes / statistics.median(one[n]) / 1e9, 2),
               f"batch_{batch}_gb_s_per_query": round(X.nbytes * batch / statistics.median(many[n]) / 1e9, 2)}
           for n in names}
    return {"matrix_bytes": int(X.nbytes), "kernels": out}


def calibrate(force: bool = False, megabytes: int | None = None) -> dict:
    """This machine's kernel for large matrices: measured (:func:`measure`) unless a measurement
    for this machine is cached (``force``: measure again). The record says what was measured,
    the choice (the fastest single query: what a search mostly is) and where it is cached."""
    path, key = _cache_path(), _machine_key()
    if not force:
        cached = _read(path)
        if cached is not None and cached.get("machine") == key and cached.get("choice") in KERNELS:
            return {**cached, "cached": True, "path": str(path)}
    m = measure(megabytes)
    choice = max(m["kernels"], key=lambda k: m["kernels"][k]["one_query_gb_s"])
    record = {"machine": key, "choice": choice, "measured": m,
              "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, record, indent=1)   # atomic: a reader sees the old record or the new one
    except OSError as e:                     # a read-only home: use the choice, say it was not kept
        record["not_cached"] = str(e)
    return {**record, "cached": False, "path": str(path)}


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


_CHOICE: str | None = None
_CHOICE_LOCK = threading.Lock()


def calibration() -> str:
    """The kernel for large matrices on this machine: ``$DERMSEARCH_KERNEL``, else the
    calibrated choice (measured on first use when none is cached, then kept for the process)."""
    global _CHOICE
    forced = os.environ.get("DERMSEARCH_KERNEL")
    if forced:
        if forced not in KERNELS:
            raise ConfigError(f"DERMSEARCH_KERNEL={forced!r}: valid kernels are {', '.join(KERNELS)}")
        return forced
    with _CHOICE_LOCK:
        if _CHOICE is None:
            _CHOICE = calibrate()["choice"]
        return _CHOICE


def kernel_for(rows: int, width: int) -> str:
    """The product kernel for a ``rows`` x ``width`` matrix: numpy below ``SMALL_PRODUCT``
    values, else this machine's calibrated kernel (what a sharded engine gives all its shards;
    a local :class:`~dermsearch.search.engine.ExactEngine` uses :func:`tuned_products`, which
    starts from the same choice and may switch in use)."""
    return "numpy" if rows * width < SMALL_PRODUCT else calibration()


def products(Q: np.ndarray, X: np.ndarray) -> np.ndarray:
    """``Q @ Xᵀ`` in float32 with the kernel for X's size (:func:`kernel_for`)."""
    return KERNELS[kernel_for(*np.shape(X))](Q, X)


# ------------------------------------------------------------------- the choice, kept honest
class KernelChooser:
    """Which kernel serves the large products of this process, checked while it runs.

    It starts from ``first`` (the calibrated choice). Every ``explore_every``-th :meth:`pick`
    returns the other kernel; :meth:`record` keeps each kernel's read rate (bytes/s) over its last
    ``window`` products, and once both have ``min_samples``, the other kernel takes over when its
    median is faster by more than ``margin``. Only comparable products are recorded (one query,
    a matrix larger than the cache: what an exact search mostly is)."""

    def __init__(self, first: str, names: list[str] | None = None, explore_every: int = 24, window: int = 5,
                 min_samples: int = 3, margin: float = 0.05, on_switch: Callable[[str, dict], None] | None = None):
        from collections import deque

        self.current, self.names = first, list(names or _available())
        self.explore_every, self.min_samples, self.margin = explore_every, min_samples, margin
        self.on_switch = on_switch
        self.rates = {n: deque(maxlen=window) for n in self.names}
        self.calls, self.switches = 0, 0
        self._lock = threading.Lock()

    def pick(self) -> str:
        with self._lock:
            self.calls += 1
            if len(self.names) > 1 and self.calls % self.explore_every == 0:
                return next(n for n in self.names if n != self.current)
            return self.current

    def record(self, name: str, nbytes: int, seconds: float) -> None:
        switched = None
        with self._lock:
            self.rates[name].append(nbytes / max(seconds, 1e-9))
            ready = {n: statistics.median(r) for n, r in self.rates.items() if len(r) >= self.min_samples}
            best = max(ready, key=ready.get) if ready else self.current
            if best != self.current and self.current in ready and ready[best] > ready[self.current] * (1 + self.margin):
                self.current, self.switches = best, self.switches + 1
                switched = {n: round(v / 1e9, 2) for n, v in ready.items()}
        if switched is not None and self.on_switch is not None:
            self.on_switch(best, switched)


_CHOOSER: KernelChooser | None = None


def _remember_switch(choice: str, gb_s: dict) -> None:
    """Write a switch made in use into the calibration cache (so the next process starts with it)."""
    path = _cache_path()
    record = _read(path)
    if record is None or record.get("machine") != _machine_key():
        return
    record.update(choice=choice, switched_in_use={"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                                  "median_gb_s": gb_s})
    try:
        write_json(path, record, indent=1)
    except OSError:
        pass


def chooser() -> KernelChooser:
    """This process's :class:`KernelChooser`, started from :func:`calibration`."""
    global _CHOOSER
    first = calibration()
    with _CHOICE_LOCK:
        if _CHOOSER is None:
            _CHOOSER = KernelChooser(first, on_switch=_remember_switch)
        return _CHOOSER


def tuned_products(Q: np.ndarray, X: np.ndarray) -> np.ndarray:
    """``Q @ Xᵀ`` in float32 for a large X with the kernel :func:`chooser` picks (or the one
    ``$DERMSEARCH_KERNEL`` forces); one-query products over a matrix larger than the cache are
    timed for it. Both kernels agree to float32 rounding (tested)."""
    forced = os.environ.get("DERMSEARCH_KERNEL")
    if forced:
        return KERNELS[calibration()](Q, X)
    c = chooser()
    X = np.asarray(X) if not hasattr(X, "nbytes") else X
    timed = np.ndim(Q) == 1 or np.shape(Q)[0] == 1
    timed = timed and X.nbytes > max(64 << 20, last_level_cache_bytes())
    name = c.pick() if timed else c.current
    t = time.perf_counter()
    out = KERNELS[name](Q, X)
    if timed:
        c.record(name, X.nbytes, time.perf_counter() - t)
    return out


# ------------------------------------------------------------ fast mode's row-parallel products
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()
_BLAS = None


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="dermsearch-products")
        return _POOL


@contextmanager
def blas_single_threaded():
    """numpy's BLAS on one thread while it lasts (for :func:`row_parallel_products`)."""
    global _BLAS
    if _BLAS is None:
        from threadpoolctl import ThreadpoolController
        _BLAS = ThreadpoolController()
    with _BLAS.limit(limits=1, user_api="blas"):
        yield


ROW_BLOCK = 16      # rows of X computed together by BLAS in row_parallel_products


def _blocked_products(Q: np.ndarray, X: np.ndarray) -> np.ndarray:
    """``Q @ Xᵀ`` with every row of X inside a full block of ``ROW_BLOCK`` rows. BLAS computes the
    rows left over at the end of a product (past the last multiple of its 4 columns at a time)
    with another kernel whose last bits differ, so a row's value would depend on how many rows
    were in the call; here it does not (a shard of the rows gets the whole's values:
    :mod:`dermsearch.search.fast_sharded`). The left-over rows are computed in the block of the
    last ``ROW_BLOCK`` rows (or, fewer in all, beside zero rows)."""
    n = X.shape[0]
    full = n - n % ROW_BLOCK
    out = np.empty((Q.shape[0], n), dtype=np.float32)
    if full:
        out[:, :full] = Q @ np.asarray(X[:full]).T
    if full < n:
        if n >= ROW_BLOCK:
            out[:, full:] = (Q @ np.asarray(X[n - ROW_BLOCK:]).T)[:, ROW_BLOCK - (n - full):]
        else:
            pad = np.zeros((ROW_BLOCK, *X.shape[1:]), dtype=X.dtype)
            pad[:n] = X
            out[:] = (Q @ pad.T)[:, :n]
    return out


def row_parallel_products(Q: np.ndarray, X: np.ndarray) -> np.ndarray:
    """``Q @ Xᵀ`` in float32 with numpy, X's rows split over one thread per core, each product
    single-threaded (run inside :func:`blas_single_threaded`). For fast mode's many mid-sized
    products between bits of Python, where torch's own threads stall on their wake-ups (the
    measurements are in docs/performance.md). A row's value does not depend on the other rows of
    X (:func:`_blocked_products`; the threads' parts start at multiples of ``ROW_BLOCK``)."""
    Q = np.ascontiguousarray(Q, dtype=np.float32)
    n = X.shape[0]
    if n * X.shape[1] * Q.shape[0] < SMALL_PRODUCT // 2 or n < 2 * ROW_BLOCK:
        return _blocked_products(Q, X)
    pool = _pool()
    cuts = np.linspace(0, n // ROW_BLOCK, pool._max_workers + 1).astype(int) * ROW_BLOCK
    cuts[-1] = n
    out = np.empty((Q.shape[0], n), dtype=np.float32)

    def part(a: int, b: int) -> None:
        out[:, a:b] = _blocked_products(Q, X[a:b])

    list(pool.map(part, cuts[:-1], cuts[1:]))
    return out


def power_of_two_scale(top: float) -> float:
    """The power of two that brings a largest magnitude ``top`` into (0.5, 1] (1 for 0 or not finite):
    multiplying by it is exact in binary floating point, and keeps float16 values and products in range."""
    if not np.isfinite(top) or top <= 0:
        return 1.0
    return float(2.0 ** -np.ceil(np.log2(top)))


def code_products(q: np.ndarray, X: np.ndarray, x_scale: float = 1.0) -> np.ndarray:
    """``X @ q / x_scale`` in float32 [N] for one query vector ``q`` [m] and fast mode's scanned codes
    ``X`` [N, m] stored multiplied by ``x_scale`` (a power of two). float16 codes
    (``FastConfig.code_precision``; by default from 100,000 rows): torch's half-precision
    matrix-vector product (float32 accumulation), 2.9x faster than numpy's float32 product of
    float32 codes at a million rows on the 2-core AMD EPYC (docs/performance.md); the query is first
    scaled by a power of two to a largest magnitude in (0.5, 1], and each value is rounded to
    float16 (relative error ~5e-4: these codes only choose candidates). A value beyond float16's
    range is computed again in float32. A row's value does not depend on the other rows in the call,
    fallbacks included (tested), so a shard of the rows gets the whole's values. Other codes:
    :func:`row_parallel_products`."""
    q32 = np.asarray(q, dtype=np.float32)
    if X.dtype != np.float16 or X.shape[0] == 0 or not np.isfinite(q32).all():
        out = row_parallel_products(q32[None], X if X.dtype == np.float32 else np.asarray(X, np.float32))[0]
        return out / np.float32(x_scale) if x_scale != 1.0 else out
    import torch

    q_scale = power_of_two_scale(float(np.abs(q32).max(initial=0.0)))
    qs = q32 * np.float32(q_scale)
    if X.flags.writeable:
        rows = torch.from_numpy(X)
    else:                       # a read-only memory map: torch warns, and only reads it
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            rows = torch.from_numpy(X)
    out = torch.mv(rows, torch.from_numpy(qs.astype(np.float16))).numpy().astype(np.float32)
    bad = np.flatnonzero(~np.isfinite(out))
    if bad.size:                # row_parallel_products: a row's value whatever rows share the call
        out[bad] = row_parallel_products(qs[None], np.asarray(X[bad], dtype=np.float32))[0]
    return out / np.float32(q_scale * x_scale)
