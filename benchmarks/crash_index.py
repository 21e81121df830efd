"""Crash safety: SIGKILL `dermsearch index` at moments chosen from its observed progress, then check and resume.

    python benchmarks/crash_index.py [--runs 50] [--seed 0] [--source CSV] [--commit-every 8]

An uninterrupted reference run is watched first: the benchmark polls the index's committed table
versions (``lance/images.lance/_versions``) and records when each commit landed. Each run then
starts from an empty index directory and picks a target: "before the first commit" or "after
commit c" for c = 1 .. the reference's commit count, uniformly. It waits until the live run has
made that many commits (watched the same way), then SIGKILLs the indexer's process group after a
random part of the reference's gap to the next commit (or to the end). So most kills land with
one or more commits written, spread over the whole run, whatever the machine's speed (a run that
finished first is redone with half the delay, up to 5 times). Then it checks that the index
opens and passes `dermsearch index --check` (no duplicate or half-written rows, vector counts
match the row count), reruns the same command to completion, and compares every row with the
reference index. Prints JSON (one line per run on stderr).
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
POLL_S = 0.02


def commits(index: Path) -> int:
    """Table versions committed so far, less the one that created the (empty) table; 0 before."""
    versions = index / "lance" / "images.lance" / "_versions"
    try:
        return max(0, sum(1 for f in versions.iterdir() if f.suffix == ".manifest") - 1)
    except OSError:
        return 0


def start(source: Path, index: Path, commit_every: int) -> subprocess.Popen:
    args = [*CMD, str(source), "--index", str(index), "--quiet", "--commit-every", str(commit_every)]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def run_reference(source: Path, index: Path, commit_every: int) -> tuple[float, list[float]]:
    """Run to completion, watching progress: (total seconds, seconds at which each commit landed)."""
    t0, seen, times = time.perf_counter(), 0, []
    proc = start(source, index, commit_every)
    while proc.poll() is None:
        now = commits(index)
        times += [time.perf_counter() - t0] * (now - seen)
        seen = now
        time.sleep(POLL_S)
    total = time.perf_counter() - t0
    times += [total] * (commits(index) - seen)
    if proc.returncode != 0:
        raise RuntimeError(f"indexing failed: {proc.stderr.read().decode()[-500:]}")
    return total, times


def run_to_end(source: Path, index: Path, commit_every: int) -> None:
    proc = start(source, index, commit_every)
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"indexing failed: {err.decode()[-500:]}")


def run_killed(source: Path, index: Path, commit_every: int, target: int, delay: float) -> dict:
    """Start, wait until ``target`` commits are on disk, then SIGKILL after ``delay`` more seconds.
    Returns what happened (killed or finished first, when, commits seen at the kill)."""
    t0 = time.perf_counter()
    proc = start(source, index, commit_every)
    while commits(index) < target and proc.poll() is None:
        time.sleep(POLL_S)
    try:
        proc.wait(delay)
        return {"killed": False, "kill_after_s": None}
    except subprocess.TimeoutExpired:
        seen = commits(index)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return {"killed": True, "kill_after_s": round(time.perf_counter() - t0, 2), "commits_at_kill": seen}


def kill_plan(rng: random.Random, total: float, times: list[float]) -> tuple[int, float]:
    """A target commit count (0 = before the first) and the delay after reaching it, drawn from
    the reference's timeline: uniform over the targets, uniform within the gap that follows."""
    target = rng.randint(0, len(times))
    if target == 0:
        return 0, rng.uniform(0.3, times[0] if times else total)
    gap = (times[target] if target < len(times) else total) - times[target - 1]
    return target, rng.uniform(0.0, max(gap, POLL_S))


def one_run(args, d: Path, rng: random.Random, ref_timeline: tuple[float, list[float]], ref) -> dict:
    """Kill (redone with half the delay if the run finished first, up to 5 tries), check, resume, compare."""
    target, delay = kill_plan(rng, *ref_timeline)
    for _ in range(5):
        out = run_killed(args.source, d, args.commit_every, target, delay)
        if out["killed"]:
            break
        shutil.rmtree(d, ignore_errors=True)
        delay /= 2
    rec = {"target_commits": target, **out}
    if (d / "dermsearch.json").exists():
        index = Index.open(d)
        rec.update(rows_after_kill=len(index), check_after_kill=index.check() or "OK")
    else:
        rec.update(rows_after_kill=0, check_after_kill="no index yet (killed before creation)")
    run_to_end(args.source, d, args.commit_every)  # resume
    index = Index.open(d)
    snap = index.snapshot()
    ref_rows = {i: n for n, i in enumerate(ref.ids)}
    same = all(np.array_equal(snap.features[k], ref.features[ref_rows[i]]) and
               np.array_equal(snap.masks[k], ref.masks[ref_rows[i]]) for k, i in enumerate(snap.ids))
    rec.update(rows_after_resume=len(snap), check_after_resume=index.check() or "OK", identical_to_reference=same)
    return rec


def summary(args, results: list[dict], n_total: int, total: float, times: list[float]) -> dict:
    killed = [r for r in results if r["killed"]]
    fine_after_kill = ("OK", "no index yet (killed before creation)")
    ok = [r for r in results if r["check_after_resume"] == "OK" and r["rows_after_resume"] == n_total
          and r["identical_to_reference"] and r["check_after_kill"] in fine_after_kill]
    return {
        "benchmark": "crash_index", "source": str(args.source), "images": n_total, "runs": args.runs,
        "seed": args.seed, "commit_every": args.commit_every, "uninterrupted_seconds": round(total, 1),
        "reference_commit_times_s": [round(t, 2) for t in times],
        "killed_mid_run": len(killed),
        "killed_before_index_created": sum(1 for r in killed if r["check_after_kill"] == fine_after_kill[1]),
        "killed_with_empty_index": sum(1 for r in killed if r["rows_after_kill"] == 0 and
                                       r["check_after_kill"] == "OK"),
        "killed_with_partial_index": sum(1 for r in killed if 0 < r["rows_after_kill"] < n_total),
        "killed_with_all_rows": sum(1 for r in killed if r["rows_after_kill"] == n_total),
        "rows_after_kill": sorted(r["rows_after_kill"] for r in killed),
        "survived": len(ok), "failures": [r for r in results if r not in ok], "machine": machine(),
    }


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
        total, times = run_reference(args.source, tmp / "reference", args.commit_every)
        ref = Index.open(tmp / "reference").snapshot()
        results = []
        for run in range(args.runs):
            d = tmp / f"run{run}"
            rec = {"run": run, **one_run(args, d, rng, (total, times), ref)}
            results.append(rec)
            shutil.rmtree(d)
            print(json.dumps(rec), file=sys.stderr)
        out = summary(args, results, len(ref.ids), total, times)
        print(json.dumps(out, indent=1))
        sys.exit(0 if out["survived"] == len(results) else 1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
