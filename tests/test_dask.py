"""Dask scale-out on a LocalCluster with 2 worker processes: distributed extraction writes the
same index as local extraction (real images: the bundled CC0 sample), a worker killed mid-run
costs no duplicates, and sharded search gives the local ranks and scores for all ten measures."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from dermsearch.index import Index
from dermsearch.index.build import ExtractionMapper, build_index
from dermsearch.runtime import Runtime
from dermsearch.search import MEASURES, Filters, Searcher

from .conftest import TINY

distributed = pytest.importorskip("distributed")

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "isic-sample" / "labels.csv"
TORCH = Runtime(backend="torch", batch_size=8)

pytestmark = pytest.mark.slow   # a Dask cluster of worker processes per module


def _cluster(**kwargs):
    return distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                                    silence_logs=logging.ERROR, **kwargs)


@pytest.fixture(scope="module")
def client():
    with _cluster() as cluster, distributed.Client(cluster) as c:
        yield c


@pytest.fixture(scope="module")
def indexes(tiny_extractor, client, tmp_path_factory):
    from dermsearch.index.distributed import build_index_dask

    root = tmp_path_factory.mktemp("dask")
    local = build_index(SAMPLE, root / "local", extractor=tiny_extractor, runtime=TORCH, commit_every=16)
    remote = build_index_dask(SAMPLE, root / "remote", client, TINY, TORCH, commit_every=16, chunk_size=10)
    return root, local, remote


def test_distributed_index_equals_local(indexes):
    root, local, remote = indexes
    assert remote.added == local.added == 48 and not remote.problems
    a, b = Index.open(root / "local").snapshot(), Index.open(root / "remote").snapshot()
    assert Index.open(root / "remote").fingerprint == Index.open(root / "local").fingerprint
    order_a, order_b = np.argsort(a.ids), np.argsort(b.ids)
    assert list(a.ids[order_a]) == list(b.ids[order_b])
    np.testing.assert_allclose(a.features[order_a], b.features[order_b], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a.styles[order_a], b.styles[order_b], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(a.masks[order_a], b.masks[order_b])


def test_sharded_search_matches_local(tiny_extractor, indexes, client):
    root, _, _ = indexes
    local = Searcher(root / "remote", extractor=tiny_extractor)
    sharded = Searcher(root / "remote", extractor=tiny_extractor, dask=client)
    assert len(sharded.sharded.shards) == 2
    ids = list(local.snapshot.ids[:3])
    for image_id in ids:
        q = local.query_for_id(image_id)
        np.testing.assert_array_equal(sharded.query_for_id(image_id).style, q.style)
        for kw in ({"k": 0, "exclude_ids": [image_id]}, {"k": 5, "filters": Filters({"diagnosis": ("nevus",)})}):
            a, b = local.search(q, **kw), sharded.search(q, **kw)
            assert a.candidates == b.candidates
            for m in MEASURES:
                assert [h.id for h in a.results[m]] == [h.id for h in b.results[m]], m
                np.testing.assert_allclose([h.score for h in a.results[m]], [h.score for h in b.results[m]],
                                           atol=1e-6)
                for x, y in zip(a.results[m], b.results[m]):
                    assert x.components.keys() == y.components.keys()
                    for c in x.components:
                        assert y.components[c] == pytest.approx(x.components[c], abs=1e-6)
    batch = sharded.search_batch([local.query_for_id(i) for i in ids], k=3)
    assert [r.results["style"][0].id for r in batch] == ids


def test_evaluation_runs_on_the_sharded_engine(tiny_extractor, indexes, client):
    """The evaluator runs on the engine contract, so a Dask searcher evaluates like a local one."""
    from dermsearch.evaluate import EvaluationConfig, Evaluator

    root, _, _ = indexes
    local = Evaluator(Searcher(root / "remote", extractor=tiny_extractor))
    sharded = Evaluator(Searcher(root / "remote", extractor=tiny_extractor, dask=client))
    ids = list(local.searcher.snapshot.ids)
    cfg = EvaluationConfig(k=3, vote_k=5, bootstrap=20, batch_size=7)
    a = local.run(local.queries_from_index(ids[:20]), ids[20:], cfg)
    b = sharded.run(sharded.queries_from_index(ids[:20]), ids[20:], cfg)
    for m in MEASURES:
        assert a.neighbours[m].tolist() == b.neighbours[m].tolist(), m
        assert a.measures[m]["p@3"] == b.measures[m]["p@3"]


def test_concurrent_sharded_searches(tiny_extractor, indexes, client):
    """Web-server style: 24 searches from 12 threads at once on one sharded searcher."""
    from concurrent.futures import ThreadPoolExecutor

    root, _, _ = indexes
    local = Searcher(root / "remote", extractor=tiny_extractor)
    sharded = Searcher(root / "remote", extractor=tiny_extractor, dask=client)
    ids = list(local.snapshot.ids[:24])
    queries = [local.query_for_id(i) for i in ids]
    with ThreadPoolExecutor(12) as pool:
        got = list(pool.map(lambda q: sharded.search(q, k=3), queries))
    for q, b in zip(queries, got):
        a = local.search(q, k=3)
        for m in MEASURES:
            assert [h.id for h in a.results[m]] == [h.id for h in b.results[m]], m


def test_sharded_search_survives_a_lost_worker(tiny_extractor, indexes, client):
    """A worker holding a shard dies between queries: its shard is loaded again on a live worker
    and the next query still gives the local results (it does not wait forever for the dead one)."""
    import os

    root, _, _ = indexes
    local = Searcher(root / "remote", extractor=tiny_extractor)
    sharded = Searcher(root / "remote", extractor=tiny_extractor, dask=client)
    engine = sharded.sharded
    victim = engine.shards[0].worker
    with pytest.raises(Exception):            # noqa: B017 - the connection drops as the process exits
        client.run(os._exit, 1, workers=[victim])
    q = local.query_for_id(local.snapshot.ids[0])
    a, b = local.search(q, k=5), sharded.search(q, k=5)
    assert engine.reloads >= 1 and all(sh.worker != victim for sh in engine.shards)
    for m in MEASURES:
        assert [h.id for h in a.results[m]] == [h.id for h in b.results[m]], m
        np.testing.assert_allclose([h.score for h in a.results[m]], [h.score for h in b.results[m]], atol=1e-6)
    client.wait_for_workers(2, timeout=60)       # the nanny restarted the killed worker for the other tests


def test_shard_errors_travel_from_workers():
    import pickle

    from dermsearch.search.sharded import ShardLost, ShardTooLarge

    lost = pickle.loads(pickle.dumps(ShardLost(["a", "b"], "gone")))
    assert isinstance(lost, ShardLost) and lost.keys == ["a", "b"] and str(lost) == "gone"
    big = pickle.loads(pickle.dumps(ShardTooLarge("rows 0-10: too big")))
    assert isinstance(big, MemoryError) and str(big) == "rows 0-10: too big"


def test_shard_memory_guard():
    from dermsearch.search.sharded import shard_memory_problem

    gb = 10**9
    assert shard_memory_problem(5 * gb, 1 * gb, None) is None                    # no limit
    assert shard_memory_problem(5 * gb, 1 * gb, 0) is None
    assert shard_memory_problem(6 * gb, 1 * gb, 10 * gb) is None                  # 7 GB <= 0.8 x 10 GB
    why = shard_memory_problem(8 * gb, 1 * gb, 10 * gb)                            # 9 GB > 8 GB (pause)
    assert why and "8.00 GB" in why and "pauses it at 8.00 GB" in why and "--memory-limit" in why
    assert shard_memory_problem(8 * gb, 1 * gb, 10 * gb, pause=False) is None     # 9 GB <= 0.95 x 10 GB
    assert shard_memory_problem(9 * gb, 1 * gb, 10 * gb, pause=False) is not None
    assert shard_memory_problem(99 * gb, 1 * gb, 10 * gb, terminate=False, pause=False) is None


def test_worker_reports_its_memory_limit():
    from dermsearch.search.sharded import _worker_memory

    with _cluster(memory_limit="1.5GB") as cluster, distributed.Client(cluster) as c:
        for w in c.scheduler_info()["workers"]:
            rss, limit, terminate, pause = c.submit(_worker_memory, workers=[w], pure=False).result()
            assert limit == 1.5e9 and terminate == 0.95 and pause == 0.8 and 0 < rss < limit


class KillOnce(ExtractionMapper):
    """A mapper that kills its worker process (as a crash would) the first time any worker runs a
    chunk, leaving a marker file so that the retry succeeds."""

    def __init__(self, marker, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.marker = str(marker)

    def __call__(self, records):
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return super().__call__(records)
        os.close(fd)
        os._exit(1)


def test_killed_worker_during_indexing_leaves_no_duplicates(tmp_path, monkeypatch):
    import cloudpickle

    from dermsearch.index import distributed as dist
    from dermsearch.index.distributed import build_index_dask

    cloudpickle.register_pickle_by_value(sys.modules[__name__])     # workers need not import the tests
    marker = tmp_path / "killed-once"
    made = []

    def kill_once(model, runtime):                  # the fault injected where build_index_dask makes its mapper
        made.append(KillOnce(marker, model, runtime))
        return made[-1]

    monkeypatch.setattr(dist, "ExtractionMapper", kill_once)
    with _cluster() as cluster, distributed.Client(cluster) as c:
        report = build_index_dask(SAMPLE, tmp_path / "ix", c, extractor_config=TINY, runtime=TORCH, chunk_size=6)
    assert len(made) == 1
    assert marker.exists()                     # a worker process really died mid-task
    assert report.added == 48 and not report.problems
    index = Index.open(tmp_path / "ix")
    assert len(index) == 48 and index.check() == []


def test_round_one_results_are_bounded_and_a_missing_one_reruns_the_query():
    """Round-one results left by clients that died between the rounds do not pile up on a worker;
    a round two whose round one was dropped asks for the query to be run again (no shard reload)."""
    from dermsearch.search import sharded
    from dermsearch.search.engine import ExactEngine, Query

    rng = np.random.default_rng(0)
    F, S = rng.normal(size=(30, 8)).astype(np.float32), rng.normal(size=(30, 12)).astype(np.float32)
    sharded._SHARDS["t"] = ExactEngine(F, S)
    try:
        batch, valid = Query.batch([Query(F[0], S[0])]), np.ones((1, 30), bool)
        for n in range(sharded._RAW_KEPT + 5):
            maxima = sharded._round_one("t", f"t-q{n}", batch, valid)
            assert maxima["euclidean"].shape == (1,) and maxima["euclidean"][0] > 0
        assert len(sharded._RAW) == sharded._RAW_KEPT and "t-q0" not in sharded._RAW
        last = sharded._RAW_KEPT + 4
        top = sharded._round_two("t", f"t-q{last}", valid, maxima, ("euclidean",), 3, 100)
        assert top[0].measures["euclidean"].rows[0] == 100 and len(top[0].measures["euclidean"].rows) == 3  # itself
        with pytest.raises(sharded.ShardLost) as lost:
            sharded._round_two("t", "t-q0", valid, maxima, ("euclidean",), 3, 0)
        assert lost.value.keys == []
        with pytest.raises(sharded.ShardLost) as lost:
            sharded._round_one("gone", "gone-q0", batch, valid)
        assert lost.value.keys == ["gone"]
    finally:
        sharded._SHARDS.pop("t", None)
        sharded._RAW.clear()


def test_load_shard_from_fast_files_outside_a_worker(tmp_path):
    from dermsearch.search import sharded

    from .test_fast import _synthetic

    fast = _synthetic(tmp_path)
    try:
        assert sharded._load_shard("f", None, 0, 100, 250, fast_path=str(tmp_path / "fast")) == 150
        e = sharded._SHARDS["f"]
        np.testing.assert_array_equal(e.styles[0], fast.exact.styles[100])
        np.testing.assert_array_equal(e.masks[-1], fast.exact.masks[249])
    finally:
        sharded._SHARDS.pop("f", None)
