"""The one engine contract: every engine (exact with either product kernel, fast mode with every row
as a candidate, sharded on a Dask LocalCluster) ranks a batch of queries through ``Engine.rank``
exactly as a float64 per-image reference written from the SPEC's equations does: same rows in the
same order (ties by row number), same scores, for all ten measures, with per-query exclusions and
a candidate filter."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest

from dermsearch.extract.vectors import Vectors
from dermsearch.runtime import Runtime
from dermsearch.search import MEASURES
from dermsearch.search.config import FastConfig
from dermsearch.search.engine import Engine, ExactEngine, Query, merge_rankings, rank_rows
from dermsearch.search.fast_build import FastIndexWriter

N, SIDE, K = 90, 16, 7


def _data(seed: int = 0) -> Vectors:
    rng = np.random.default_rng(seed)
    F = rng.normal(size=(N, 12)).astype(np.float32) + 1
    S = rng.gamma(2.0, size=(N, 40)).astype(np.float32)
    yy, xx = np.mgrid[:SIDE, :SIDE]
    cy, cx, r = rng.uniform(3, 13, N), rng.uniform(3, 13, N), rng.uniform(1, 7, N)
    bits = (((yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2) <= r[:, None, None] ** 2
            ).reshape(N, -1)
    bits[5] = False                       # an empty mask (Dice with another empty one is 1)
    F[40], S[40], bits[40] = F[12], S[12], bits[12]      # an exact duplicate: ties go by row number
    return Vectors(F, S, np.packbits(bits, axis=1), bits.sum(1).astype(np.int32))


def _hm(*c):
    return 0.0 if min(c) <= 0 else len(c) / sum(1.0 / x for x in c)


def reference(V: Vectors, q: int, valid: np.ndarray, k: int) -> dict[str, tuple[list[int], list[float]]]:
    """Equations 1-14 of SPEC section 2, one image at a time, in float64."""
    F, S = V.features.astype(np.float64), V.styles.astype(np.float64)
    bits = np.unpackbits(V.masks, axis=1).astype(bool)
    ed = np.array([np.sqrt(((F[i] - F[q]) ** 2).sum()) for i in range(N)])
    cs = np.array([F[i] @ F[q] / (np.linalg.norm(F[i]) * np.linalg.norm(F[q])) for i in range(N)])
    ls = np.array([((S[i] - S[q]) ** 2).sum() for i in range(N)])
    dc = np.array([1.0 if not bits[i].any() and not bits[q].any()
                   else 2 * (bits[i] & bits[q]).sum() / (bits[i].sum() + bits[q].sum()) for i in range(N)])
    es, ss, csn = 1 - ed / ed[valid].max(), 1 - ls / ls[valid].max(), (cs + 1) / 2
    comp = {"euclidean": es, "cosine": csn, "style": ss, "dice": dc}
    parts = {"euclidean": ("euclidean",), "cosine": ("cosine",), "style": ("style",), "dice": ("dice",),
             "i1_ed": ("euclidean", "dice"), "i1_cd": ("cosine", "dice"), "i1_ecd": ("euclidean", "cosine", "dice"),
             "i1_se": ("style", "euclidean"), "i1_sc": ("style", "cosine"), "i1_sd": ("style", "dice")}
    out = {}
    for m in MEASURES:
        score = {i: _hm(*(comp[c][i] for c in parts[m])) for i in np.flatnonzero(valid)}
        order = sorted(score, key=lambda i: (-score[i], i))[:k]
        out[m] = ([int(i) for i in order], [score[i] for i in order])
    return out


def _queries_and_valid(V: Vectors):
    rows = [0, 5, 12, 33, 61, 89]
    keep = np.random.default_rng(1).random(N) < 0.8          # a filter on the candidates
    keep[[12, 40]] = True
    valid = np.tile(keep, (len(rows), 1))
    valid[np.arange(len(rows)), rows] = False                # each query excludes itself
    valid[3, [7, 8, 9]] = False                              # and one query a few more ids
    return Query.batch([Query.from_row(V, i) for i in rows]), rows, valid


def check_engine(engine: Engine, V: Vectors, k: int = K) -> None:
    assert isinstance(engine, Engine)
    batch, rows, valid = _queries_and_valid(V)
    got = engine.rank(batch, valid, MEASURES, k)
    assert len(got) == len(rows)
    for j, q in enumerate(rows):
        ref = reference(V, q, valid[j], k)
        for m in MEASURES:
            r = got[j].measures[m]
            assert r.rows.tolist() == ref[m][0], (type(engine).__name__, q, m)
            np.testing.assert_allclose(r.scores, ref[m][1], rtol=0, atol=1e-6)
            assert set(r.components) == {"euclidean", "cosine", "style", "dice"} and set(r.raw) == set(r.components)
    # the duplicate pair ties on every measure when both are candidates: the lower row comes first
    r = got[rows.index(0)].measures["euclidean"]
    both = [x for x in r.rows.tolist() if x in (12, 40)]
    assert both in ([], [12], [12, 40])
    np.testing.assert_array_equal(engine.take([3, 1]).features, V.features[[3, 1]])


@pytest.mark.parametrize("kernel", ["numpy", "torch"])
def test_exact_engine_matches_the_reference(kernel):
    V = _data()
    check_engine(ExactEngine.of(V, kernel=kernel), V)


def test_ranking_all_candidates_and_an_empty_candidate_set():
    V = _data()
    e = ExactEngine.of(V)
    batch = Query.batch([Query.from_row(V, 0)])
    valid = np.ones((1, N), bool)
    full = e.rank(batch, valid, ["style"], 0)[0].measures["style"]
    assert sorted(full.rows.tolist()) == list(range(N)) and np.all(np.diff(full.scores) <= 0)
    none = e.rank(batch, np.zeros((1, N), bool), MEASURES, 5)[0]
    assert all(r.rows.size == 0 for r in none.measures.values())


def test_merged_shard_rankings_equal_one_ranking():
    V = _data()
    e = ExactEngine.of(V)
    batch, _, valid = _queries_and_valid(V)
    whole = rank_rows(e.raw(batch), valid, MEASURES, K)
    cut = 37
    raw = e.raw(batch)
    tops = {c: np.where(valid, raw[c], -np.inf).max(axis=1) for c in ("euclidean", "style")}
    parts = [rank_rows({c: v[:, a:b] for c, v in raw.items()}, valid[:, a:b], MEASURES, K, tops, np.arange(a, b))
             for a, b in ((0, cut), (cut, N))]
    for j in range(len(whole)):
        merged = merge_rankings([parts[0][j], parts[1][j]], K)
        for m in MEASURES:
            assert merged.measures[m].rows.tolist() == whole[j].measures[m].rows.tolist()
            np.testing.assert_array_equal(merged.measures[m].scores, whole[j].measures[m].scores)


def _fast(tmp_path, V: Vectors):
    cfg = FastConfig(style_dims=4, feature_dims=4, mask_grid=4, candidates=N, wide_candidates=N,
                     normaliser_candidates=N)
    w = FastIndexWriter(tmp_path / "fast", N, V.features.shape[1], V.styles.shape[1], V.masks.shape[1], SIDE, cfg)
    w.write(0, [f"r{i}" for i in range(N)], *V.arrays())
    return w.finish()


def test_fast_engine_with_every_row_a_candidate_matches_the_reference(tmp_path):
    V = _data()
    fast = _fast(tmp_path, V)
    check_engine(fast, V)
    batch, _, valid = _queries_and_valid(V)
    notes = fast.rank(batch, valid, ["style"], 3)[0].notes
    assert "style normaliser certified exact" in notes


@pytest.mark.slow
def test_sharded_engine_matches_the_reference(tmp_path):
    distributed = pytest.importorskip("distributed")
    from dermsearch.search.sharded import ShardedEngine

    V = _data()
    fast = _fast(tmp_path, V)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                                  silence_logs=logging.ERROR) as cluster, distributed.Client(cluster) as client:
        engine = ShardedEngine(client, None, 0, N, fast_path=fast.directory, kernel="numpy")
        assert len(engine.shards) == 2 and len(engine) == N
        check_engine(engine, V)
        np.testing.assert_array_equal(engine.take([80, 2, 50]).styles, V.styles[[80, 2, 50]])


def test_certified_engine_matches_the_reference_and_checks_few_rows():
    from dermsearch.search.certified import CertifiedEngine

    V = _data()
    engine = CertifiedEngine(ExactEngine.of(V))
    check_engine(engine, V)
    batch, _, valid = _queries_and_valid(V)
    for r in engine.rank(batch, valid, MEASURES, K):
        assert len(r.notes) == 1 and "rows checked exactly" in r.notes[0], r.notes
        assert int(r.notes[0].split(", ")[1].split()[0]) < N // 2      # the bound rules most rows out


def test_the_int8_bound_holds_and_is_near_tight():
    """Heavy-tailed rows whose groups differ in scale by orders: the true error of the int8
    estimate never exceeds the bound, and the bound is not vacuous."""
    import torch

    from dermsearch.search.certified import int8_bound, quantise

    rng = np.random.default_rng(3)
    groups = ((0, 700), (700, 1000), (1000, 3000))
    for scale in (1e-3, 1.0, 1e4):
        X = rng.lognormal(0, 2, size=(200, 3000)) * rng.choice([-1, 1], size=(200, 3000)) * scale
        X[:, 700:1000] *= 1e-4                                    # a group far smaller than the others
        q = X[0] * 0.7 + X[1] * 0.3 + rng.normal(size=3000) * scale
        codes, s, e, xn = quantise(X, groups)
        qc, t, f, _ = quantise(q[None], groups)
        p = np.zeros(len(X))
        p_abs = np.zeros(len(X))
        for g, (a, b) in enumerate(groups):
            ints = torch._int_mm(torch.from_numpy(np.ascontiguousarray(qc[:, a:b])),
                                 torch.from_numpy(codes[:, a:b]).T).numpy()[0]
            assert np.array_equal(ints, qc[0, a:b].astype(np.int64) @ codes[:, a:b].T.astype(np.int64))
            p += t[0, g] * s[:, g] * ints
            p_abs += np.abs(t[0, g] * s[:, g] * ints)
        qn = np.array([np.linalg.norm(q[a:b]) for a, b in groups])
        bound = int8_bound(qn, f[0], e, xn, p_abs, np.linalg.norm(q) * np.linalg.norm(X, axis=1))
        truth = np.abs(p - X @ q)
        assert np.all(truth <= bound), scale
        # and it says something: a small share of what Cauchy-Schwarz alone allows
        assert np.median(bound / (np.linalg.norm(q) * np.linalg.norm(X, axis=1))) < 0.2, scale


def _adversarial() -> Vectors:
    """Styles built to defeat the int8 pass: around the query, rows at distances that differ
    by 1e-4 (far below int8's resolution) at rank k, and two near-equal farthest rows."""
    V = _data(1)
    S = V.styles.astype(np.float64)
    rng = np.random.default_rng(2)
    q = S[0]
    direction = rng.normal(size=S.shape[1])
    direction /= np.linalg.norm(direction)
    for n, row in enumerate(range(1, 12)):              # near-ties around rank K = 7
        S[row] = q + direction * (3.0 + 1e-4 * n) * np.where(rng.random(S.shape[1]) < 0.5, 1, -1)
    far = S[np.argmax(((S - q) ** 2).sum(1))]
    S[70] = far + 1e-5                                  # a near-duplicate of the farthest row
    return dataclasses.replace(V, styles=S.astype(np.float32))


@pytest.mark.parametrize("max_checked", [1.0, 0.0])
def test_certification_on_data_built_to_defeat_it(max_checked):
    """With room to check, the near-ties and the near-duplicate max are checked exactly and the
    answer is the reference's; with none (max_checked 0) the query falls back to exact search and
    says so. Both agree with the float64 reference."""
    from dermsearch.search.certified import CertifiedEngine

    V = _adversarial()
    engine = CertifiedEngine(ExactEngine.of(V), max_checked=max_checked)
    batch = Query.batch([Query.from_row(V, 0)])
    valid = np.ones((1, N), bool)
    valid[0, 0] = False
    got = engine.rank(batch, valid, MEASURES, K)[0]
    ref = reference(V, 0, valid[0], K)
    for m in MEASURES:
        assert got.measures[m].rows.tolist() == ref[m][0], m
        np.testing.assert_allclose(got.measures[m].scores, ref[m][1], rtol=0, atol=1e-6)
    if max_checked == 0.0:
        assert any("searched exactly" in n for n in got.notes)
    else:
        checked = int(got.notes[0].split(", ")[1].split()[0])
        assert checked >= 11 + 1                      # every near-tie and the near-duplicate max


def test_certified_mode_through_the_searcher_and_the_cli(tmp_path, image_folder, tiny_extractor, capsys):
    import json

    from dermsearch.cli.main import main
    from dermsearch.index.build import build_index
    from dermsearch.search import Searcher

    build_index(image_folder, tmp_path / "ix", extractor=tiny_extractor, runtime=Runtime(backend="torch"))
    exact = Searcher(tmp_path / "ix", extractor=tiny_extractor)
    certified = Searcher(tmp_path / "ix", extractor=tiny_extractor, mode="certified")
    assert type(certified.engine).__name__ == "CertifiedEngine"
    for image_id in exact.snapshot.ids:
        q = exact.query_for_id(image_id)
        a, b = exact.search(q, k=3, exclude_ids=[image_id]), certified.search(q, k=3, exclude_ids=[image_id])
        for m in MEASURES:
            assert [h.id for h in a.results[m]] == [h.id for h in b.results[m]], m
            # certified style losses are float64; the exact engine's float32 products are within ~1e-5
            np.testing.assert_allclose([h.score for h in a.results[m]], [h.score for h in b.results[m]], atol=2e-5)
            for x, y in zip(a.results[m], b.results[m]):
                assert y.raw["ls"] == pytest.approx(x.raw["ls"], rel=1e-5)
        assert any("int8 style pass" in n for n in b.messages)
    assert main(["search", str(tmp_path / "ix"), str(image_folder / "img03.png"), "--mode", "certified",
                 "--json", "-k", "2", "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["results"]["style"][0]["id"] == "img03"
    # the int8 copy written by 'optimize --certified' is read, not rebuilt, and is the same copy
    assert not certified.engine.stored
    assert main(["optimize", str(tmp_path / "ix"), "--certified", "--style-dims", "2", "--feature-dims", "2",
                 "--mask-grid", "4", "--candidates", "4", "--sketch-dims", "8"]) == 0
    stored = Searcher(tmp_path / "ix", extractor=tiny_extractor, mode="certified")
    assert stored.engine.stored
    np.testing.assert_array_equal(stored.engine.codes.numpy(), certified.engine.codes.numpy())
    np.testing.assert_array_equal(stored.engine.err, certified.engine.err)
    for image_id in exact.snapshot.ids[:3]:
        q = exact.query_for_id(image_id)
        a, b = certified.search(q, k=3, exclude_ids=[image_id]), stored.search(q, k=3, exclude_ids=[image_id])
        for m in MEASURES:
            assert [(h.id, h.score) for h in a.results[m]] == [(h.id, h.score) for h in b.results[m]], m


def test_device_engine_on_the_cpu_matches_the_reference():
    """The torch-tensor engine (what runs on a GPU) checked on the CPU device."""
    import torch

    from dermsearch.search.device import DeviceEngine

    V = _data()
    check_engine(DeviceEngine(V, device="cpu"), V)
    on_device = DeviceEngine.from_tensors(*(torch.as_tensor(a) for a in V.arrays()))    # no host copy
    check_engine(on_device, V)


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="no CUDA GPU here")
def test_device_engine_on_cuda_matches_the_reference():
    from dermsearch.search.device import DeviceEngine

    V = _data()
    check_engine(DeviceEngine(V, device="cuda"), V)


def test_a_cuda_searcher_without_a_gpu_says_so(tmp_path, image_folder, tiny_extractor):
    import torch

    from dermsearch.errors import ConfigError
    from dermsearch.index.build import build_index
    from dermsearch.search import Searcher

    build_index(image_folder, tmp_path / "ix", extractor=tiny_extractor, runtime=Runtime(backend="torch"))
    if torch.cuda.is_available():
        s = Searcher(tmp_path / "ix", extractor=tiny_extractor, runtime=Runtime(device="cuda"))
        assert type(s.engine).__name__ == "DeviceEngine"
    else:
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            Searcher(tmp_path / "ix", extractor=tiny_extractor, runtime=Runtime(device="cuda"))
    on_cpu = Searcher(tmp_path / "ix", extractor=tiny_extractor, runtime=Runtime(device="cpu"))
    assert type(on_cpu.engine).__name__ == "ExactEngine"


# --------------------------------------------------------- style columns that are 0 in every row
DEAD = (10, 25)          # the columns of a Gram whose weight β is 0
LAYOUT = [{"stage": 1, "region": "lesion", "channels": 0, "beta": 0.5, "offset": 0, "size": 10},
          {"stage": 2, "region": "lesion", "channels": 0, "beta": 0.0, "offset": 10, "size": 9},
          {"stage": 3, "region": "lesion", "channels": 0, "beta": 0.0, "offset": 19, "size": 6},
          {"stage": 4, "region": "lesion", "channels": 0, "beta": 1.0, "offset": 25, "size": 15}]


def _data_dead(seed: int = 0) -> Vectors:
    V = _data(seed)
    S = V.styles.copy()
    S[:, DEAD[0]:DEAD[1]] = 0.0
    return dataclasses.replace(V, styles=S)


def test_zero_weight_grams_give_the_skipped_columns_only_when_every_row_is_zero_there():
    from dermsearch.search.engine import checked_style_blocks, dead_style_ranges, live_style_blocks

    assert dead_style_ranges(LAYOUT) == [DEAD]                   # adjacent zero-β Grams merged
    assert live_style_blocks(40, [DEAD]) == ((0, 10), (25, 40))
    assert live_style_blocks(40, []) is None and live_style_blocks(40, [(0, 5)]) == ((5, 40),)
    V = _data_dead()
    assert checked_style_blocks(V.styles, LAYOUT) == ((0, 10), (25, 40))
    assert checked_style_blocks(V.styles, [dict(e, beta=1.0) for e in LAYOUT]) is None
    S = V.styles.copy()
    S[77, 12] = 1e-30                                            # one row not zero there: read everything
    assert checked_style_blocks(S, LAYOUT) is None
    with pytest.raises(ValueError):
        ExactEngine.of(V, style_blocks=[(25, 40), (0, 10)])      # not ordered


@pytest.mark.parametrize("kernel", ["numpy", "torch"])
def test_exact_engine_skipping_zero_columns_matches_the_reference(kernel):
    V = _data_dead()
    e = ExactEngine.of(V, kernel=kernel, style_blocks=[(0, 10), (25, 40)])
    assert e.bytes_per_query == e.stored_bytes_per_query - N * 15 * 4
    check_engine(e, V)
    # a query with values in the skipped columns: its LS still counts them (the rows are 0 there)
    q = V.styles[3].astype(np.float64) + np.where(np.arange(40) == 17, 2.5, 0.0)
    got = e.raw(Vectors(V.features[3:4], q[None].astype(np.float32)), ["style"])["style"][0]
    ref = ((V.styles.astype(np.float64) - q.astype(np.float32).astype(np.float64)) ** 2).sum(1)
    np.testing.assert_allclose(got, ref, rtol=1e-5)


def test_device_engine_skipping_zero_columns_matches_the_reference():
    from dermsearch.search.device import DeviceEngine

    V = _data_dead()
    e = DeviceEngine(V, device="cpu", style_blocks=[(0, 10), (25, 40)])
    assert tuple(e.styles.shape) == (N, 25)                  # only the live columns on the device
    check_engine(e, V)
    np.testing.assert_array_equal(e.take([4, 2]).styles, V.styles[[4, 2]])
    q = V.styles[3].astype(np.float64) + np.where(np.arange(40) == 17, 2.5, 0.0)
    got = e.raw(Vectors(V.features[3:4], q[None].astype(np.float32)), ["style"])["style"][0]
    ref = ((V.styles.astype(np.float64) - q.astype(np.float32).astype(np.float64)) ** 2).sum(1)
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    # a stored row as the query: its own distance is recomputed exactly (0), skipped columns and all
    own = e.raw(Vectors(V.features[7:8], V.styles[7:8]), ["style"])["style"][0]
    assert own[7] == 0.0
    near = V.styles[7:8].copy()
    near[0, 17] = 1e-3                                        # a near-duplicate differing only where rows are 0
    assert e.raw(Vectors(V.features[7:8], near), ["style"])["style"][0][7] == pytest.approx(1e-6, rel=1e-6)


def test_certified_engine_over_the_live_blocks_matches_the_reference(tmp_path):
    from dermsearch.search.certified import CertifiedEngine, write_certified

    V = _data_dead()
    exact = ExactEngine.of(V, style_blocks=[(0, 10), (25, 40)])
    engine = CertifiedEngine(exact, layout=LAYOUT)
    assert engine.codes.shape == (N, 25) and engine.groups == ((0, 10), (25, 40))
    assert engine.bytes_per_query < exact.bytes_per_query
    check_engine(engine, V)
    _assert_certified_not_fallen_back(engine, V)
    # a query with values in the skipped columns is still exact
    q = V.styles[3].copy()
    q[12] = 3.0
    batch = Vectors(V.features[3:4], q[None], V.masks[3:4], V.mask_areas[3:4])
    valid = np.ones((1, N), bool)
    a, b = exact.rank(batch, valid, MEASURES, K)[0], engine.rank(batch, valid, MEASURES, K)[0]
    assert "rows checked exactly" in b.notes[0]
    for m in MEASURES:
        assert a.measures[m].rows.tolist() == b.measures[m].rows.tolist(), m
        np.testing.assert_allclose(a.measures[m].scores, b.measures[m].scores, atol=1e-6)
    # the stored copy is read only for the same blocks
    write_certified(tmp_path, V.styles, engine.groups)
    assert CertifiedEngine(exact, files=tmp_path, layout=LAYOUT).stored
    assert not CertifiedEngine(ExactEngine.of(V), files=tmp_path, layout=LAYOUT).stored


def _assert_certified_not_fallen_back(engine, V: Vectors) -> None:
    """Every query was answered by the int8 pass and its checks (not by the exact fallback)."""
    batch, _, valid = _queries_and_valid(V)
    for r in engine.rank(batch, valid, MEASURES, K):
        assert len(r.notes) == 1 and "int8 style pass" in r.notes[0], r.notes
        assert int(r.notes[0].split(", ")[1].split()[0]) < N // 2


def test_every_column_is_read_when_every_gram_has_weight_zero_and_groups_cut_wide_grams():
    from dermsearch.search.certified import GROUP_WIDTH, CertifiedEngine, certified_groups
    from dermsearch.search.engine import checked_style_blocks, live_style_blocks

    assert live_style_blocks(40, [(0, 40)]) is None                       # nothing left: read everything
    V = _data()
    zero = dataclasses.replace(V, styles=np.zeros_like(V.styles))
    dead = [dict(e, beta=0.0) for e in LAYOUT]
    assert checked_style_blocks(zero.styles, dead) is None
    check_engine(ExactEngine.of(V, style_blocks=checked_style_blocks(V.styles, dead)), V)
    w = 2 * GROUP_WIDTH + 100
    assert certified_groups(w) == ((0, GROUP_WIDTH), (GROUP_WIDTH, 2 * GROUP_WIDTH), (2 * GROUP_WIDTH, w))
    assert certified_groups(40, LAYOUT, ((0, 10), (25, 40))) == ((0, 10), (25, 40))
    assert certified_groups(40, LAYOUT) == ((0, 10), (10, 19), (19, 25), (25, 40))   # every Gram, none skipped
    assert certified_groups(40, LAYOUT[:2]) == ((0, 40),)                 # a layout that does not tile: one span
    # float64 query styles are searched as the float32 they are stored as
    engine = CertifiedEngine(ExactEngine.of(V), layout=LAYOUT)
    batch, _, valid = _queries_and_valid(V)
    as64 = Vectors(batch.features, batch.styles.astype(np.float64), batch.masks, batch.mask_areas)
    for a, b in zip(engine.rank(batch, valid, MEASURES, K), engine.rank(as64, valid, MEASURES, K)):
        for m in MEASURES:
            assert a.measures[m].rows.tolist() == b.measures[m].rows.tolist()
            np.testing.assert_array_equal(a.measures[m].scores, b.measures[m].scores)


def test_fast_files_record_the_live_blocks_only_when_the_rows_are_zero_there(tmp_path):
    V = _data_dead()
    cfg = FastConfig(style_dims=4, feature_dims=4, mask_grid=4, candidates=N, wide_candidates=N,
                     normaliser_candidates=N)

    def write(name, V):
        w = FastIndexWriter(tmp_path / name, N, 12, 40, V.masks.shape[1], SIDE, cfg, certified=True,
                            style_layout=LAYOUT)
        w.write(0, [f"r{i}" for i in range(N // 2)], *V.take(slice(0, N // 2)).arrays())
        w.write(N // 2, [f"r{i}" for i in range(N // 2, N)], *V.take(slice(N // 2, N)).arrays())
        return w.finish()

    fast = write("a", V)
    assert fast.info["style_blocks"] == [[0, 10], [25, 40]] and fast.exact.style_blocks == ((0, 10), (25, 40))
    check_engine(fast.exact, V)
    check_engine(fast, V)
    from dermsearch.search.certified import CertifiedEngine
    cert = CertifiedEngine(fast.exact, files=fast.directory, layout=LAYOUT)
    assert cert.stored and cert.codes.shape == (N, 25)
    check_engine(cert, V)
    _assert_certified_not_fallen_back(cert, V)
    S = V.styles.copy()
    S[N - 1, 20] = 0.5                                 # a row in the second write is not zero there
    other = write("b", dataclasses.replace(V, styles=S))
    assert "style_blocks" not in other.info and other.exact.style_blocks is None


def _snapshot(V: Vectors):
    from dermsearch.index.store import Snapshot

    ids = np.array([f"r{i}" for i in range(N)], dtype=object)
    none = np.array([None] * N, dtype=object)
    return Snapshot(3, ids, ids, none, np.full(N, np.nan), none, np.array(["{}"] * N, dtype=object), *V.arrays())


def test_open_engine_chooses_by_the_spec_and_says_when_certified_has_no_style():
    from dermsearch.search.engine import RawEngine
    from dermsearch.search.engines import CERTIFIED_WITHOUT_STYLE, EngineSpec, open_engine

    V = _data()
    exact = open_engine(_snapshot(V), EngineSpec())
    assert type(exact).__name__ == "ExactEngine" and isinstance(exact, RawEngine)
    check_engine(exact, V)
    assert type(open_engine(_snapshot(V), EngineSpec(mode="certified"))).__name__ == "CertifiedEngine"
    # no style vectors: no int8 style pass, so the exact engine ranks, and every ranking says so
    plain = Vectors(V.features, None, V.masks, V.mask_areas)
    certified = open_engine(_snapshot(plain), EngineSpec(mode="certified"))
    batch, _, valid = _queries_and_valid(V)
    batch = Vectors(batch.features, None, batch.masks, batch.mask_areas)
    got = certified.rank(batch, valid, ["euclidean", "i1_ecd"], K)
    want = ExactEngine.of(plain).rank(batch, valid, ["euclidean", "i1_ecd"], K)
    assert certified.components == ("euclidean", "cosine", "dice") and len(certified) == N
    for g, w in zip(got, want):
        assert g.notes == [CERTIFIED_WITHOUT_STYLE]
        for m in ("euclidean", "i1_ecd"):
            np.testing.assert_array_equal(g.measures[m].rows, w.measures[m].rows)
            np.testing.assert_array_equal(g.measures[m].scores, w.measures[m].scores)
    with pytest.raises(ValueError, match="opens an index"):
        open_engine(_snapshot(V), EngineSpec(mode="fast"))
    with pytest.raises(ValueError, match="mode must be one of"):
        EngineSpec(mode="approximate")
    with pytest.raises(ValueError, match="sharded"):
        EngineSpec(mode="certified", dask=object())
    assert EngineSpec(mode="fast", dask=object()).mode == "fast"      # sharded fast mode (tests/test_dask_fast.py)


def test_a_cluster_without_workers_is_a_message_not_a_traceback():
    from dermsearch.errors import DermsearchError
    from dermsearch.search.sharded import ClusterError, ShardedEngine

    class NoWorkers:
        class scheduler:
            address = "tcp://10.0.0.5:8786"

        def scheduler_info(self):
            return {"workers": {}}

    with pytest.raises(ClusterError, match="tcp://10.0.0.5:8786 has no workers: start some") as e:
        ShardedEngine(NoWorkers(), None, 0, N)
    assert isinstance(e.value, DermsearchError) and isinstance(e.value, RuntimeError)
