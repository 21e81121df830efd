"""`dermsearch compact`: small data files merged into one version with the same rows, old versions
deleted only when no reader holds them, fast-mode files carried over, reader leases."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

from dermsearch.cli.main import main
from dermsearch.index import Index
from dermsearch.index.build import build_index
from dermsearch.index.leases import READERS, Lease, held_versions
from dermsearch.index.store import cleanup_cutoff
from dermsearch.runtime import Runtime
from dermsearch.search import MEASURES, Searcher
from dermsearch.search.fast import FastConfig
from dermsearch.search.fast_build import optimize

from .conftest import lesion_image

SMALL_BATCHES = Runtime(backend="torch", batch_size=4)   # with commit_every=4: many small commits


def _add_images(folder, seeds) -> None:
    for i in seeds:
        lesion_image(i).save(folder / f"img{i:02d}.png")


def _results(searcher: Searcher) -> dict:
    out = {}
    for image_id in searcher.snapshot.ids[:4]:
        r = searcher.search(searcher.query_for_id(image_id), k=5, exclude_ids=[image_id])
        out[image_id] = {m: [(h.id, round(h.score, 9)) for h in hits] for m, hits in r.results.items()}
    return out


def _can_read(directory, version: int) -> bool:
    index = Index.open(directory)
    try:
        index._table.checkout(version)
        index._table.to_arrow()
        return True
    except Exception:     # noqa: BLE001 - any failure to read it means the version is gone
        return False


def test_compaction_merges_fragments_and_keeps_what_readers_hold(tmp_path, tiny_extractor, monkeypatch):
    """Deterministic: the clock is injected and the age handed to LanceDB's cleanup is checked
    (LanceDB deletes by age against its own clock, so which versions go depends on when they were
    committed; :func:`test_the_versions_a_cleanup_keeps` checks that choice on given versions)."""
    folder, ix = tmp_path / "images", tmp_path / "ix"
    folder.mkdir()
    _add_images(folder, range(16))
    build_index(folder, ix, extractor=tiny_extractor, runtime=SMALL_BATCHES, commit_every=4)      # 4 commits of 4 rows
    reader = Searcher(ix, extractor=tiny_extractor)                               # holds this version
    held = reader.snapshot.version
    before = _results(reader)
    assert held_versions(ix) == [held]
    _add_images(folder, range(16, 24))
    build_index(folder, ix, extractor=tiny_extractor, runtime=SMALL_BATCHES, commit_every=4)      # 2 more commits
    index = Index.open(ix)
    ages = _record_cleanup_ages(index, monkeypatch)
    stamps = {v["version"]: v["timestamp"] for v in index._table.list_versions()}
    now = stamps[held].timestamp() + 30.0             # the injected clock: 30 s after the reader's version
    first = index.compact(margin_s=5.0, clock=lambda: now)
    assert first.fragments_before >= 6 and first.fragments_after == 1
    assert first.version_after > first.version_before and first.held == [held] and first.kept_from == held
    assert ages == [timedelta(days=365 * 100), timedelta(seconds=35.0)]    # compaction only, then held's age + 5 s
    assert first.fast_mode_files is None                                  # the index has none
    assert _can_read(ix, held)                        # the reader's version survived
    assert _results(reader) == before                 # and the reader goes on
    # the compacted version holds the same rows in the same order, and searches alike
    index = Index.open(ix)
    assert len(index) == 24 and not index.check()
    fresh = Searcher(ix, extractor=tiny_extractor)
    reader.refresh()
    assert list(fresh.snapshot.ids) == list(reader.snapshot.ids)
    assert _results(fresh) == _results(reader)
    # once the readers let go, every version but the newest goes (age 0: no clock involved)
    reader.close()
    fresh.close()
    assert held_versions(ix) == []
    second = index.compact()
    assert second.versions_after == 1 and second.held == [] and not _can_read(ix, held)
    assert not _can_read(ix, held - 2) and second.bytes_after <= first.bytes_after


def _record_cleanup_ages(index: Index, monkeypatch) -> list:
    """The ``cleanup_older_than`` of every LanceDB optimize the index runs (which then runs)."""
    table, ages = index._table, []
    optimize = table.optimize

    def recording(**kwargs):
        ages.append(kwargs.get("cleanup_older_than"))
        return optimize(**kwargs)
    monkeypatch.setattr(table, "optimize", recording)
    return ages


def test_the_versions_a_cleanup_keeps():
    """From the oldest version a reader holds (its age plus the margin), else the newest only."""
    t0 = datetime(2026, 1, 1, 12, 0, 0)
    stamps = {v: t0 + timedelta(seconds=10 * v) for v in range(1, 8)}       # versions 1-7, 10 s apart
    now = (t0 + timedelta(seconds=100)).timestamp()
    assert cleanup_cutoff(stamps, [5, 6], 7, now, 5.0) == (5, timedelta(seconds=100 - 50 + 5))
    assert cleanup_cutoff(stamps, [3, 99], 7, now, 0.5) == (3, timedelta(seconds=70.5))   # 99: not a version
    assert cleanup_cutoff(stamps, [], 7, now, 5.0) == (7, timedelta(0))
    assert cleanup_cutoff(stamps, [7], 7, now, 5.0) == (7, timedelta(0))
    # a clock behind the commit times never gives a negative age
    assert cleanup_cutoff(stamps, [5], 7, (t0 + timedelta(seconds=40)).timestamp(), 5.0) == (5, timedelta(seconds=5))
    aware = {v: (t0 + timedelta(seconds=10 * v)).replace(tzinfo=UTC) for v in range(1, 8)}
    now_utc = (t0 + timedelta(seconds=100)).replace(tzinfo=UTC).timestamp()
    assert cleanup_cutoff(aware, [4], 7, now_utc, 5.0) == (4, timedelta(seconds=65))


def _optimized(tmp_path, extractor, images: int):
    """An index of ``images`` images in commits of 4, with fast-mode files; and its fast results."""
    folder, ix = tmp_path / "images", tmp_path / "ix"
    folder.mkdir()
    _add_images(folder, range(images))
    build_index(folder, ix, extractor=extractor, runtime=SMALL_BATCHES, commit_every=4)
    optimize(Index.open(ix), FastConfig(style_dims=4, feature_dims=4, mask_grid=4, candidates=8))
    fast = Searcher(ix, extractor=extractor, mode="fast")
    before = _results(fast)
    fast.close()
    return folder, ix, before


def test_compact_as_a_library_call_keeps_the_fast_mode_files(tmp_path, tiny_extractor):
    _, ix, before = _optimized(tmp_path, tiny_extractor, 8)
    report = Index.open(ix).compact()
    assert report.version_after > report.version_before
    assert report.fast_mode_files == str(ix / "fast" / f"v{report.version_after}")
    assert sorted(p.name for p in (ix / "fast").iterdir()) == [f"v{report.version_after}"]
    again = Searcher(ix, extractor=tiny_extractor, mode="fast")     # no 'optimize' needed
    assert again.snapshot.version == report.version_after and _results(again) == before


def test_fast_mode_files_are_carried_over(tmp_path, tiny_extractor, capsys):
    folder, ix, before = _optimized(tmp_path, tiny_extractor, 12)
    assert main(["compact", str(ix), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["fragments_before"] == 3 and out["fragments_after"] == 1 and out["fast_mode_files"]
    assert sorted(p.name for p in (ix / "fast").iterdir()) == [f"v{out['version_after']}"]
    again = Searcher(ix, extractor=tiny_extractor, mode="fast")     # no 'optimize' needed
    assert again.snapshot.version == out["version_after"] and _results(again) == before
    assert set(before[next(iter(before))]) == set(MEASURES)
    # files of an older format are not carried over (compaction succeeds; 'optimize' writes new ones)
    build_index(folder, ix, extractor=tiny_extractor, runtime=SMALL_BATCHES, commit_every=4)
    _add_images(folder, range(12, 14))
    build_index(folder, ix, extractor=tiny_extractor, runtime=SMALL_BATCHES, commit_every=4)
    optimize(Index.open(ix), FastConfig(style_dims=4, feature_dims=4, mask_grid=4, candidates=8))
    again.close()
    (info_path := next((ix / "fast").iterdir()) / "fast.json").write_text(
        json.dumps({**json.loads(info_path.read_text()), "format": 1}))
    assert main(["compact", str(ix), "--json"]) == 0
    assert not json.loads(capsys.readouterr().out)["fast_mode_files"]


def test_leases_of_dead_processes_and_other_hosts(tmp_path):
    (tmp_path / READERS).mkdir()
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(done.stdout)
    here = socket.gethostname()

    def lease(name, version, pid, host, age=0.0):
        path = tmp_path / READERS / f"{name}.json"
        path.write_text(json.dumps({"version": version, "pid": pid, "host": host}))
        os.utime(path, (time.time() - age, time.time() - age))
        return path

    gone = lease("dead", 3, dead, here)
    lease("elsewhere-fresh", 5, 1, "another-host")
    lease("elsewhere-stale", 2, 1, "another-host", age=7200)
    (tmp_path / READERS / "torn.json").write_text('{"version": ')      # a crash mid-write: not a lease
    with Lease(tmp_path, 7) as mine:
        assert mine.held and held_versions(tmp_path, stale_after=3600) == [5, 7]
        mine.move(8)
        assert held_versions(tmp_path, stale_after=3600) == [5, 8]
    assert held_versions(tmp_path, stale_after=3600) == [5]
    assert not gone.exists()                              # a dead local reader's lease is cleared


def test_a_reader_that_cannot_write_its_lease_still_searches(tmp_path, tiny_extractor, monkeypatch):
    """A read-only index directory (a shared archive): no lease is written and search works."""
    from dermsearch.index import leases

    folder, ix = tmp_path / "images", tmp_path / "ix"
    folder.mkdir()
    _add_images(folder, range(6))
    build_index(folder, ix, extractor=tiny_extractor, runtime=SMALL_BATCHES, commit_every=4)

    def read_only(path, record):
        raise PermissionError(13, "Read-only file system", str(path))
    monkeypatch.setattr(leases, "_write", read_only)
    s = Searcher(ix, extractor=tiny_extractor)
    assert not s._lease.held and held_versions(ix) == []
    assert s.search(s.query_for_id("img00"), k=2).results["style"][0].id == "img00"
