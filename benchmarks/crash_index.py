"""Crash safety: SIGKILL `dermsearch index` at random moments, then check and resume.

    python benchmarks/crash_index.py [--runs 50] [--seed 0] [--source CSV] [--commit-every 8]

Each run starts from an empty index directory, kills the indexer after a random delay (a run
that finished first is redone with an earlier kill, up to 5 times), then
checks that the index opens and passes `dermsearch index --check` (no duplicate or half-written
rows, vector counts match the row count), reruns the same command to completion, and compares
every row with a reference index built without interruption. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import REPO, machine

from dermsearch.index import Index

CMD = [sys.executable, "-m", "dermsearch.cli.main", "index"]


def run_index(source: Path, index: Path, commit_every: int, kill_after: float | None) -> tuple[bool, float]:
    args = [*CMD, str(source), "--index", str(index), "--quiet", "--commit-every", str(commit_every)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    if kill_after is None:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"indexing failed: {err.decode()[-500:]}")
        return False, time.perf_counter() - t0
    try:
        proc.wait(kill_after)
        return False, time.perf_counter() - t0  # finished before the kill
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return True, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--source", type=Path, default=REPO / "examples" / "isic-sample" / "labels.csv")
    ap.add_argument("--commit-every", type=int, default=8)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="crash-"))
    try:
        _, full_time = run_index(args.source, tmp / "reference", args.commit_every, None)
        ref = Index.open(tmp / "reference").snapshot()
        ref_rows = {i: n for n, i in enumerate(ref.ids)}
        n_total = len(ref_rows)
        results = []
        for run in range(args.runs):
            d = tmp / f"run{run}"
            upper, tries = full_time, 0
            while True:  # a run that finished before its kill is redone with an earlier kill
                delay = rng.uniform(0.3, upper)
                killed, _ = run_index(args.source, d, args.commit_every, delay)
                tries += 1
                if killed or tries == 5:
                    break
                shutil.rmtree(d, ignore_errors=True)
                upper = max(0.5, delay * 0.8)
            rec = {"run": run, "kill_after_s": round(delay, 2), "killed": killed}
            if (d / "dermsearch.json").exists():
                index = Index.open(d)
                problems = index.check()
                rec.update(rows_after_kill=len(index), check_after_kill=problems or "OK")
            else:
                rec.update(rows_after_kill=0, check_after_kill="no index yet (killed before creation)")
            run_index(args.source, d, args.commit_every, None)  # resume
            index = Index.open(d)
            snap = index.snapshot()
            same = all(np.array_equal(snap.features[k], ref.features[ref_rows[i]]) and
                       np.array_equal(snap.masks[k], ref.masks[ref_rows[i]]) for k, i in enumerate(snap.ids))
            rec.update(rows_after_resume=len(snap), check_after_resume=index.check() or "OK",
                       identical_to_reference=same)
            results.append(rec)
            shutil.rmtree(d)
            print(json.dumps(rec), file=sys.stderr)
        killed = [r for r in results if r["killed"]]
        fine_after_kill = ("OK", "no index yet (killed before creation)")
        ok = [r for r in results if r["check_after_resume"] == "OK" and r["rows_after_resume"] == n_total
              and r["identical_to_reference"] and r["check_after_kill"] in fine_after_kill]
        print(json.dumps({
            "benchmark": "crash_index", "source": str(args.source), "images": n_total, "runs": args.runs,
            "seed": args.seed, "commit_every": args.commit_every, "uninterrupted_seconds": round(full_time, 1),
            "killed_mid_run": len(killed),
            "killed_with_partial_index": sum(1 for r in killed if 0 < r["rows_after_kill"] < n_total),
            "survived": len(ok), "failures": [r for r in results if r not in ok], "machine": machine(),
        }, indent=1))
        sys.exit(0 if len(ok) == len(results) else 1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
