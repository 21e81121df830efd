"""Load test of the web API: N concurrent clients uploading real query images for T seconds.

    python benchmarks/bench_web.py INDEX_DIR [--clients 20] [--seconds 60]

Needs the ``[web]`` extra (the server) and ``[bench]`` (httpx, the clients): pip install -e '.[web,bench]'.

The server (``dermsearch serve``) runs in its own process on 127.0.0.1; the clients upload
HAM10000 `test` images (or the bundled queries when ../shared/data is absent) and, when the
server answers 429, wait as its Retry-After asks. Meanwhile a prober requests ``/api/index`` and a
thumbnail every 0.25 s (their latency under load is what a user of the page feels). Baseline in
the same run: the same searches called directly on the Python API, one at a time.
"""

from __future__ import annotations

import argparse
import csv
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote

import httpx
import numpy as np
from _common import DATA, REPO, emit, machine


def query_images(limit: int = 200) -> list[bytes]:
    labels, split = DATA / "ham10000" / "labels.csv", DATA / "ham10000" / "split.csv"
    if labels.is_file():
        with open(split) as f:
            test = {r["image_id"] for r in csv.DictReader(f) if r["split"] == "test"}
        with open(labels) as f:
            paths = [labels.parent / r["image_path"] for r in csv.DictReader(f) if r["image_id"] in test][:limit]
    else:
        paths = sorted((REPO / "examples" / "queries").glob("*.jpg"))
    return [p.read_bytes() for p in paths]


def _first_id(base: str, image: bytes, headers: dict) -> str:
    r = httpx.post(base + "/api/search", files={"file": ("q.jpg", image, "image/jpeg")}, data={"k": "1"}, timeout=120,
                   headers=headers)
    return next(iter(r.json()["results"].values()))[0]["id"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("index", type=Path)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--no-rate-limit", action="store_true", help="serve with --rate-limit 0 (dermsearch versions "
                    "with a per-client limit)")
    args = ap.parse_args()
    images = query_images()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "dermsearch.cli.main", "serve", str(args.index), "--port", str(port)]
    if args.no_rate_limit:            # all clients share 127.0.0.1: the per-client limit would be the figure
        cmd += ["--rate-limit", "0"]
    server = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    said: list[str] = []            # the server's stderr, drained (the access log must not fill the pipe)
    threading.Thread(target=lambda: said.extend(server.stderr), daemon=True).start()
    base = f"http://127.0.0.1:{port}"
    t_start = time.perf_counter()
    while True:
        try:
            if httpx.get(base + "/api/index", timeout=1).status_code in (200, 401):
                break
        except httpx.HTTPError:
            pass
        if server.poll() is not None or time.perf_counter() - t_start > 300:
            raise SystemExit(f"server did not start: {''.join(said)}")
        time.sleep(0.5)
    startup = time.perf_counter() - t_start
    # a server that signs in (the default since issue #41) printed an admin token's link at start
    link = next((line for line in said if "#token=" in line), None)
    auth = {"Authorization": "Bearer " + link.split("#token=")[1].strip()} if link else {}

    lat: list[float] = []
    errors: list[str] = []
    busy = [0]
    lock = threading.Lock()
    deadline = time.perf_counter() + args.seconds
    probes: dict[str, list[float]] = {"index": [], "thumbnail": []}
    first_id = quote(_first_id(base, images[0], auth), safe="")

    def prober() -> None:
        """While the searches run: the page's small requests, as a user would make them."""
        with httpx.Client(base_url=base, timeout=120, headers=auth) as c:
            while time.perf_counter() < deadline:
                for name, url in (("index", "/api/index"), ("thumbnail", f"/api/images/{first_id}")):
                    t = time.perf_counter()
                    r = c.get(url)
                    if r.status_code == 200:
                        probes[name].append(time.perf_counter() - t)
                time.sleep(0.25)

    def client(seed: int) -> None:
        rng = np.random.default_rng(seed)
        with httpx.Client(base_url=base, timeout=120, headers=auth) as c:
            while time.perf_counter() < deadline:
                img = images[int(rng.integers(len(images)))]
                t = time.perf_counter()
                try:
                    r = c.post("/api/search", files={"file": ("q.jpg", img, "image/jpeg")}, data={"k": "5"})
                    if r.status_code == 429:          # the server's queue is full: wait as it asks
                        with lock:
                            busy[0] += 1
                        time.sleep(float(r.headers.get("Retry-After", "1")))
                        continue
                    ok = r.status_code == 200 and len(r.json()["results"]) == 10
                    err = None if ok else f"HTTP {r.status_code}"
                except httpx.HTTPError as e:
                    err = type(e).__name__
                with lock:
                    (errors.append(err) if err else lat.append(time.perf_counter() - t))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    threads.append(threading.Thread(target=prober))
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    server.terminate()
    server.wait(10)

    # baseline: the Python API, sequential, same kind of query
    from dermsearch.search import Searcher
    s = Searcher(args.index)
    seq = []
    for img in images[:10]:
        t = time.perf_counter()
        s.search(img, k=5)
        seq.append(time.perf_counter() - t)

    emit({
        "benchmark": "web", "index": str(args.index), "images_in_index": len(s.snapshot),
        "clients": args.clients, "seconds": round(wall, 1), "requests_ok": len(lat), "errors": len(errors),
        "error_kinds": sorted(set(errors)),
        "latency_ms": {"p50": round(1000 * statistics.median(lat), 1) if lat else None,
                       "p95": round(1000 * float(np.percentile(lat, 95)), 1) if lat else None},
        "throughput_rps": round(len(lat) / wall, 2), "busy_429": busy[0],
        "during_load_ms": {name: {"n": len(v), "p50": round(1000 * statistics.median(v), 1) if v else None,
                                  "p95": round(1000 * float(np.percentile(v, 95)), 1) if v else None}
                           for name, v in probes.items()},
        "baseline_api_sequential_ms_median": round(1000 * statistics.median(seq), 1),
        "baseline_api_sequential_rps": round(1 / statistics.median(seq), 2),
        "server_startup_seconds": round(startup, 1), "signed_in": bool(auth),
        "machine": machine(),
    })


if __name__ == "__main__":
    main()
