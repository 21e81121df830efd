"""Start-up cost of the command line: `dermsearch --help` and a cold `dermsearch search` (a new
process each time), on an index of the bundled sample (48 images, the packaged model).

    python benchmarks/bench_startup.py [--rounds 5] [--index DIR] [--baseline-src OLD/src]

Variants of the cold search, interleaved round by round (the machine's drift hits them alike):
- ``search``: as a user runs it on a fresh index (the query encoded from the ONNX export that
  indexing cached; the rows read through LanceDB);
- ``search_optimized``: after ``dermsearch optimize`` (rows and labels memory-mapped from the
  fast-mode files: LanceDB is not imported);
- ``search_torch``: the networks built in torch (``DERMSEARCH_NO_CACHED_ENCODER=1``), as every
  search did before the cached encoder.
``--baseline-src``: also time another checkout's ``src`` (e.g. a ``git worktree`` of an older
commit) for ``--help`` and ``search``, in the same rounds. Prints one JSON object (seconds:
median, min, max over the rounds).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "examples" / "isic-sample" / "labels.csv"
QUERY = REPO / "examples" / "queries" / "ISIC_0000022.jpg"


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def run(argv: list[str], env: dict | None = None, src: Path | None = None) -> float:
    env = {**os.environ, **(env or {})}
    if src is not None:
        env["PYTHONPATH"] = str(src)
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", "import sys; from dermsearch.cli.main import main; "
                          "sys.exit(main(sys.argv[1:]))", *argv], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr[-2000:]}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--index", type=Path, help="an index of the bundled sample to reuse (default: built here)")
    ap.add_argument("--baseline-src", type=Path, help="another checkout's src/ to time alongside")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    try:
        plain = args.index or tmp / "ix"
        if args.index is None:
            run(["index", str(SAMPLE), "--index", str(plain), "--quiet"])
        optimized = tmp / "ix-optimized"
        shutil.copytree(plain, optimized)
        run(["optimize", str(optimized)])
        search = ["search", "", str(QUERY), "-k", "5", "--json"]

        def s(ix):
            return [search[0], str(ix), *search[2:]]

        variants = {
            "help": lambda: run(["--help"]),
            "search": lambda: run(s(plain)),
            "search_optimized": lambda: run(s(optimized)),
            "search_torch": lambda: run(s(plain), {"DERMSEARCH_NO_CACHED_ENCODER": "1"}),
        }
        if args.baseline_src:
            variants["baseline_help"] = lambda: run(["--help"], src=args.baseline_src)
            variants["baseline_search"] = lambda: run(s(plain), src=args.baseline_src)
        for f in variants.values():      # warm-up: page cache, the ONNX export
            f()
        times: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(args.rounds):
            for k, f in variants.items():
                times[k].append(f())
        out = {"benchmark": "startup", "cpu": cpu_model(), "cpu_count": os.cpu_count(), "rounds": args.rounds,
               "index_images": 48,
               "seconds": {k: {"median": round(statistics.median(v), 3), "min": round(min(v), 3),
                               "max": round(max(v), 3)} for k, v in times.items()}}
        if args.baseline_src:
            out["ratio_to_baseline"] = {
                "help": round(statistics.median(times["help"]) / statistics.median(times["baseline_help"]), 3),
                "search": round(statistics.median(times["search"]) / statistics.median(times["baseline_search"]), 3)}
        print(json.dumps(out, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
