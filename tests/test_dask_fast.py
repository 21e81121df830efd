"""Fast mode sharded on Dask (a LocalCluster of 2 worker processes, 1 thread each) gives local fast
mode's rows and scores, bit for bit, for every measure: on synthetic fast-mode files where the
candidates are a small part of the archive (duplicate rows tie at the cuts, normalisers certified
and not), and through a Searcher and the CLI on an indexed archive."""

from __future__ import annotations

import json
import logging
import shutil
import time

import numpy as np
import pytest

from dermsearch.cli.main import main
from dermsearch.errors import ConfigError
from dermsearch.index.build import build_index
from dermsearch.search import MEASURES, Filters, Searcher
from dermsearch.search.engine import Query
from dermsearch.search.fast import FastConfig, FastModeMissing
from dermsearch.search.fast_build import FastIndexWriter, optimize

from .conftest import lesion_image

distributed = pytest.importorskip("distributed")

pytestmark = pytest.mark.slow   # a Dask cluster of worker processes per module


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                                  silence_logs=logging.ERROR) as cluster, distributed.Client(cluster) as c:
        yield c


def _archive(directory, n=1500, d=24, s=60, side=16, dups=40, code_precision="auto"):
    """Low-rank rows with noise, lesion-like disc masks; the last ``dups`` rows copy earlier ones
    (exact ties in every estimate and score)."""
    rng = np.random.default_rng(7)
    z = rng.normal(size=(n, 5))
    F = (z @ rng.normal(size=(5, d)) + 0.05 * rng.normal(size=(n, d)) + 3).astype(np.float32)
    S = (z @ rng.normal(size=(5, s)) + 0.05 * rng.normal(size=(n, s)) + 2).astype(np.float32)
    yy, xx = np.mgrid[:side, :side]
    cy, cx, r = rng.uniform(4, 12, n), rng.uniform(4, 12, n), rng.uniform(2, 7, n)
    masks = (((yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2) <= r[:, None, None] ** 2
             ).reshape(n, -1)
    source = rng.choice(n - dups, dups, replace=False)
    F[n - dups:], S[n - dups:], masks[n - dups:] = F[source], S[source], masks[source]
    packed = np.packbits(masks, axis=1)
    config = FastConfig(style_dims=2, feature_dims=2, mask_grid=4, sketch_dims=16, candidates=6,
                        wide_candidates=8, wide_rows=30, normaliser_candidates=1,   # few rows: choices matter
                        code_precision=code_precision)
    w = FastIndexWriter(directory, n, d, s, packed.shape[1], side, config)
    w.write(0, [f"r{i}" for i in range(n)], F, S, packed, masks.sum(1).astype(np.int32))
    return w.finish(), source


def _same(a, b, measures):
    for m in measures:
        x, y = a.measures[m], b.measures[m]
        np.testing.assert_array_equal(y.rows, x.rows, err_msg=m)
        np.testing.assert_array_equal(y.scores, x.scores, err_msg=m)
        for c in x.components:
            np.testing.assert_array_equal(y.components[c], x.components[c], err_msg=f"{m} {c}")
            np.testing.assert_array_equal(y.raw[c], x.raw[c], err_msg=f"{m} {c}")
    assert b.notes[:-1] == a.notes and b.notes[-1] == "sharded on Dask: 2 shards"


@pytest.mark.parametrize("code_precision", ["auto", "fp16"])     # auto: float32 codes at 1,500 rows
def test_sharded_fast_mode_equals_local_fast_mode(client, tmp_path, code_precision):
    from dermsearch.search.fast_sharded import ShardedFastEngine

    fast, source = _archive(tmp_path / "fast", code_precision=code_precision)
    want = np.float16 if code_precision == "fp16" else np.float32
    assert fast.arrays["style_sketch"].dtype == want and fast.arrays["mask_cells"].dtype == want
    n = len(fast)
    engine = ShardedFastEngine(client, fast.directory, 0, n, fast.exact.components)
    assert [(sh.start, sh.stop) for sh in engine.shards] == [(0, n // 2), (n // 2, n)]
    assert len({sh.worker for sh in engine.shards}) == 2
    engine.wire = {}
    rows = [0, 3, 700, 751, 1499, *source[:3].tolist(), *(n - 40 + np.arange(3)).tolist()]
    e = fast.exact
    batch = Query.batch([Query(np.array(e.features[i]), np.array(e.styles[i]), np.array(e.masks[i]),
                               int(e.mask_areas[i])) for i in rows])
    rng = np.random.default_rng(1)
    valid = rng.random((len(rows), n)) < 0.8            # a filter, and each query's own row left out
    valid[np.arange(len(rows)), rows] = False
    certified, tied = {True: 0, False: 0}, 0
    for measures, k in ((MEASURES, 5), (("euclidean", "style"), 3), (("i1_sd", "dice"), 40)):
        local = fast.rank(batch, valid, measures, k)
        sharded = engine.rank(batch, valid, measures, k)
        for a, b in zip(local, sharded):
            _same(a, b, measures)
            certified[True] += sum("certified exact" in x for x in a.notes)
            certified[False] += sum("not certified" in x for x in a.notes)
            tied += sum(np.unique(r.scores).size < r.scores.size for r in a.measures.values())
    assert certified[True] and certified[False]        # both ways of ending the normaliser rounds ran
    assert tied                                        # duplicate rows tie in some returned lists
    # nothing big crosses the wire: a query's bytes are a small part of one shard's compact codes
    per_query = (engine.wire["sent"] + engine.wire["received"]) / engine.wire["queries"]
    assert per_query < 0.1 * fast.resident_bytes / 2, (per_query, fast.resident_bytes)
    np.testing.assert_array_equal(engine.take([5, 1000]).features, e.features[[5, 1000]])
    with pytest.raises(ConfigError, match="top k"):
        engine.rank(batch, valid, MEASURES, 0)
    nothing = engine.rank(batch, np.zeros_like(valid), ("euclidean",), 5)
    assert all(r.measures["euclidean"].rows.size == 0 for r in nothing)
    # the workers let go of every batch's estimates once it is answered, and of the shards when closed
    for _ in range(50):
        held = client.run(_held)
        if not any(states for states, _ in held.values()):
            break
        time.sleep(0.1)
    assert all(states == 0 and shards == 1 for states, shards in held.values()), held
    engine.close()
    assert all(shards == 0 for _, shards in client.run(_held).values())


def _held() -> tuple[int, int]:
    """On a worker: the batches kept between rounds, and the fast-mode shards held."""
    from dermsearch.search import fast_sharded

    return len(fast_sharded._STATE), sum(isinstance(v, fast_sharded._FastShard) for v in fast_sharded._SHARDS.values())


@pytest.fixture(scope="module")
def optimized(tiny_extractor, tmp_path_factory):
    root = tmp_path_factory.mktemp("dask-fast")
    (root / "images").mkdir()
    for i in range(24):
        lesion_image(100 + i).save(root / "images" / f"y{i:02d}.png")
    build_index(root / "images", root / "ix", extractor=tiny_extractor)
    from dermsearch.index import Index

    optimize(Index.open(root / "ix"), FastConfig(style_dims=4, feature_dims=4, mask_grid=4, sketch_dims=8,
                                                 candidates=2, wide_candidates=3, wide_rows=6,
                                                 normaliser_candidates=1))
    return root


def test_searcher_and_cli_in_fast_mode_on_dask_equal_local(tiny_extractor, optimized, client, capsys, tmp_path):
    root = optimized
    local = Searcher(root / "ix", extractor=tiny_extractor, mode="fast")
    sharded = Searcher(root / "ix", extractor=tiny_extractor, mode="fast", dask=client)
    assert sharded.sharded.mode == "fast" and len(sharded.sharded.shards) == 2
    for image_id in ("y00", "y11", "y23"):
        q = local.query_for_id(image_id)
        for kw in ({"k": 3, "exclude_ids": [image_id]}, {"k": 5, "filters": Filters({"image_id": ("y01", "y02",
                                                                                                 "y03", "y12",
                                                                                                 "y13", "y20")})}):
            a = local.search(q, explain=True, **kw)
            b = sharded.search(q, explain=True, **kw)
            assert a.candidates == b.candidates
            assert b.to_json()["results"] == a.to_json()["results"]            # ids, scores, components, explain
            assert b.messages[:-1] == a.messages and any(m.startswith("fast mode") for m in b.messages)
    with pytest.raises(ConfigError, match="serve fast search"):
        sharded.search(local.query_for_id("y01"), k=3, mode="exact")
    with pytest.raises(ConfigError, match="exact or fast"):
        Searcher(root / "ix", extractor=tiny_extractor, mode="certified", dask=client)
    sharded.close()

    query = root / "images" / "y05.png"
    args = ["search", str(root / "ix"), str(query), "--mode", "fast", "--json", "-k", "2", "--no-explain"]
    assert main(args) == 0
    want = json.loads(capsys.readouterr().out)
    assert main([*args, "--dask", client.scheduler.address]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["results"] == want["results"] and got["results"]["style"][0]["id"] == "y05"

    bare = tmp_path / "ix"
    shutil.copytree(root / "ix", bare)
    shutil.rmtree(bare / "fast")
    with pytest.raises(FastModeMissing, match="dermsearch optimize"):
        Searcher(bare, extractor=tiny_extractor, mode="fast", dask=client)


def test_a_lost_worker_costs_a_reload_not_the_answer(tiny_extractor, optimized, client):
    import os

    local = Searcher(optimized / "ix", extractor=tiny_extractor, mode="fast")
    sharded = Searcher(optimized / "ix", extractor=tiny_extractor, mode="fast", dask=client)
    engine = sharded.sharded
    victim = engine.shards[1].worker
    with pytest.raises(Exception):            # noqa: B017 - the connection drops as the process exits
        client.run(os._exit, 1, workers=[victim])
    q = local.query_for_id("y07")
    a, b = local.search(q, k=4), sharded.search(q, k=4)
    assert engine.reloads >= 1 and all(sh.worker != victim for sh in engine.shards)
    assert b.to_json()["results"] == a.to_json()["results"]
    sharded.close()
    client.wait_for_workers(2, timeout=60)


@pytest.mark.slow
def test_sharded_fast_mode_refuses_compact_rows_and_reads_full_rows_at_the_shards_place(
        tiny_extractor, optimized, client, tmp_path):
    """Compact (int8, fp16) re-rank rows are local fast mode's: on Dask a clear refusal. Float32
    rows kept in the index's table (stored once) are read at the shard's own rows of the whole."""
    from dermsearch.index import Index

    ix = tmp_path / "ix"
    shutil.copytree(optimized / "ix", ix)
    small = dict(style_dims=4, feature_dims=4, mask_grid=4, sketch_dims=8, candidates=2, wide_candidates=3,
                 wide_rows=6, normaliser_candidates=1)
    optimize(Index.open(ix), FastConfig(**small, precision="int8", full_rows="index"))
    with pytest.raises(ConfigError, match="--precision float32"):
        Searcher(ix, extractor=tiny_extractor, mode="fast", dask=client)
    optimize(Index.open(ix), FastConfig(**small, precision="float32", full_rows="index"))
    local = Searcher(ix, extractor=tiny_extractor, mode="fast")
    sharded = Searcher(ix, extractor=tiny_extractor, mode="fast", dask=client)
    assert local.fast.info["full_rows"]["kind"] == "index"
    for image_id in ("y02", "y13", "y22"):          # rows in both shards
        q = local.query_for_id(image_id)
        a, b = local.search(q, k=4), sharded.search(q, k=4)
        assert b.to_json()["results"] == a.to_json()["results"]
        assert b.to_json()["results"]["style"][0]["id"] == image_id     # its own row, read at its place
    sharded.close()
