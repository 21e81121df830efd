"""Fast mode's storage (search/fast_rows.py): the style rows stored once (the index's table, a tier
location, or the fast-mode directory), re-rank precisions float32 / fp16 / int8 against the exact
engine, clear errors for a missing or corrupted tier, atomic re-optimisation, old-format files."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from dermsearch.cli.main import main
from dermsearch.index import Index
from dermsearch.index.build import build_index
from dermsearch.search import MEASURES, Searcher
from dermsearch.search.engine import Query, maxima, normalise, rank_rows
from dermsearch.search.fast import FastConfig, FastIndex, FastModeMissing, fast_dir
from dermsearch.search.fast_build import FastIndexWriter, optimize
from dermsearch.search.fast_rows import (
    AUTO_COMPACT_ROWS,
    FullRowsError,
    default_full_rows,
    resolve_precision,
    storage_facts,
)
from dermsearch.search.measures import measure_scores

from .conftest import lesion_image

SMALL = dict(style_dims=4, feature_dims=4, mask_grid=4, candidates=16, normaliser_candidates=2)


@pytest.fixture(scope="module")
def indexed(tiny_extractor, tmp_path_factory):
    root = tmp_path_factory.mktemp("faststore")
    (root / "images").mkdir()
    for i in range(14):
        lesion_image(i).save(root / "images" / f"x{i:02d}.png")
    build_index(root / "images", root / "ix", extractor=tiny_extractor)
    return root, tiny_extractor


def _results(searcher, ids=("x00", "x05", "x11"), reference=None):
    ref = reference or searcher
    out = {}
    for image_id in ids:
        r = searcher.search(ref.query_for_id(image_id), k=5, exclude_ids=[image_id])
        out[image_id] = ({m: [h.id for h in r.results[m]] for m in MEASURES},
                         {m: [h.score for h in r.results[m]] for m in MEASURES}, r.messages)
    return out


def test_auto_precision_by_size():
    assert resolve_precision("auto", AUTO_COMPACT_ROWS - 1) == "float32"
    assert resolve_precision("auto", AUTO_COMPACT_ROWS) == "int8"
    assert resolve_precision("fp16", 10) == "fp16"
    # the full rows: a float32 copy beside float32 re-rank rows of a small archive (as before), else the table
    assert default_full_rows("auto", AUTO_COMPACT_ROWS - 1) == "here"
    assert default_full_rows("auto", AUTO_COMPACT_ROWS) == default_full_rows("fp16", 10) == "index"
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("int4", 10)
    assert resolve_precision("int6", AUTO_COMPACT_ROWS) == "int6"


@pytest.mark.parametrize("precision,full_rows,kind", [("float32", "", "here"), ("float32", "index", "index"),
                                                       ("fp16", "", "index"), ("int8", "", "index"),
                                                       ("int6", "", "index")])
def test_each_precision_gives_the_exact_answers(indexed, precision, full_rows, kind):
    root, extractor = indexed
    exact = Searcher(root / "ix", extractor=extractor)
    want = _results(exact)
    fast = optimize(Index.open(root / "ix"), FastConfig(**SMALL, precision=precision, full_rows=full_rows))
    # by default a small archive keeps its float32 copy (nothing changes); compact rows keep none
    assert fast.precision == precision and fast.info["full_rows"] == {"kind": kind, "location": None}
    names = {f.name for f in fast.directory.iterdir()}
    assert ("styles.npy" in names) == (kind == "here")                # else the style rows are stored once
    rows = Index.open(root / "ix").snapshot()
    np.testing.assert_array_equal(fast.exact.styles, rows.styles)     # exact mode's rows, read from where they live
    np.testing.assert_array_equal(fast.take([9, 2]).styles, rows.styles[[9, 2]])
    assert ("style_fp16.npy" in names) == (precision == "fp16")
    assert ("certified_codes.npy" in names) == (precision == "int8")   # int8: certified mode's own copy
    got = _results(Searcher(root / "ix", extractor=extractor, mode="fast"), reference=exact)
    for image_id, (ids, scores, messages) in got.items():
        assert ids == want[image_id][0], (precision, image_id)
        for m in MEASURES:     # the returned scores are the exact float32 ones, from the table's rows
            np.testing.assert_allclose(scores[m], want[image_id][1][m], atol=1e-5, err_msg=f"{precision} {m}")
        assert (precision == "float32") != any("scores exact: the returned rows' style losses" in x for x in messages)


def test_float32_from_the_table_is_identical_to_float32_rows_in_the_fast_directory(indexed, tmp_path):
    root, extractor = indexed
    index = Index.open(root / "ix")
    stored = optimize(index, FastConfig(**SMALL, precision="float32", full_rows="index"))
    s = index.snapshot()
    m = index.manifest
    w = FastIndexWriter(tmp_path / "here", len(s), m["feature_dim"], m["style_dim"], m["mask_bytes"], m["mask_size"],
                        FastConfig(**SMALL, precision="float32"), s.version, style_layout=m.get("style_layers"))
    w.write(0, s.ids, s.features, s.styles, s.masks, s.mask_areas)
    here = w.finish()                           # the layout of FAST_FORMAT 2: a float32 copy of the rows
    assert here.info["full_rows"]["kind"] == "here" and (here.directory / "styles.npy").is_file()
    valid = np.ones(len(s), bool)
    for i in (0, 6, 13):
        valid[:] = True
        valid[i] = False
        q = Query.from_row(s.vectors, i)
        a, b = stored.search(q, 5, MEASURES, valid), here.search(q, 5, MEASURES, valid)
        for measure in MEASURES:
            np.testing.assert_array_equal(a.rows[measure], b.rows[measure])
            np.testing.assert_array_equal(a.scores[measure], b.scores[measure])
        np.testing.assert_array_equal(stored.take([i]).styles, s.styles[i:i + 1])


def _synthetic(tmp_path, precision, full_rows, n=400, d=24, s=600, side=16):
    rng = np.random.default_rng(0)
    z = rng.normal(size=(n, 5))
    F = (z @ rng.normal(size=(5, d)) + 0.05 * rng.normal(size=(n, d)) + 3).astype(np.float32)
    S = (z @ rng.normal(size=(5, s)) + 0.3 * rng.normal(size=(n, s)) + 2).astype(np.float32) * 1e-3
    yy, xx = np.mgrid[:side, :side]
    cy, cx, r = rng.uniform(4, 12, n), rng.uniform(4, 12, n), rng.uniform(2, 7, n)
    masks = (((yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2) <= r[:, None, None] ** 2
             ).reshape(n, -1)
    config = FastConfig(style_dims=6, feature_dims=6, mask_grid=4, candidates=20, normaliser_candidates=8,
                        precision=precision)
    layout = [{"offset": 0, "size": 200}, {"offset": 200, "size": 400}]     # two "Grams": one scale each
    name = f"{precision}-{full_rows.replace('/', '_')}"
    w = FastIndexWriter(tmp_path / name, n, d, s, np.packbits(masks, axis=1).shape[1], side, config,
                        style_layout=layout, full_rows=full_rows)
    w.write(0, [f"r{i}" for i in range(n)], F, S, np.packbits(masks, axis=1), masks.sum(1).astype(np.int32))
    return w.finish(), F, S, np.packbits(masks, axis=1), masks.sum(1).astype(np.int32)


@pytest.mark.parametrize("precision,max_diff", [("fp16", 2e-3), ("int8", 2e-2), ("int6", 5e-2)])
def test_compact_rows_alone_rank_close_to_exact_and_say_so(tmp_path, precision, max_diff):
    ref, *_ = _synthetic(tmp_path, "float32", "here")
    fast, F, S, P, A = _synthetic(tmp_path, precision, "none")
    assert fast.full_rows is None and not (fast.directory / "styles.npy").exists()
    with pytest.raises(ValueError, match="no full style rows"):
        _ = fast.exact
    hits, worst = {m: 0 for m in MEASURES}, 0.0
    for i in range(0, 400, 20):
        q = Query(F[i], S[i], P[i], int(A[i]))
        valid = np.ones((1, 400), bool)
        valid[0, i] = False
        raw = ref.exact.raw(Query.batch([q]))
        want = rank_rows(raw, valid, MEASURES, 5)[0]
        scores = measure_scores(normalise(raw, maxima(raw, valid)), MEASURES)
        got = fast.search(q, 5, MEASURES, valid[0])
        for m in MEASURES:
            hits[m] += len(set(want.measures[m].rows) & set(got.rows[m]))
            worst = max(worst, float(np.abs(got.scores[m] - scores[m][0, got.rows[m]]).max()))
        notes = fast.rank(vectors_of(F, S, P, A, i), valid, MEASURES, 5)[0].notes
        assert any(f"computed from the {precision} rows" in n for n in notes)
    for m in MEASURES:
        assert hits[m] / 100 >= 0.9, (precision, m, hits[m])
    assert 0 < worst <= max_diff, (precision, worst)      # approximate, and within what the precision allows


def vectors_of(F, S, P, A, i):
    from dermsearch.extract.vectors import Vectors

    return Vectors(F[i:i + 1], S[i:i + 1], P[i:i + 1], A[i:i + 1])


@pytest.mark.parametrize("precision", ["fp16", "int8", "int6"])
def test_compact_rows_with_a_tier_return_exact_scores(tmp_path, precision):
    ref, F, S, P, A = _synthetic(tmp_path, "float32", "here")
    fast, *_ = _synthetic(tmp_path, precision, str(tmp_path / "tier"))
    assert fast.info["full_rows"]["kind"] == "tier" and fast.full_rows is not None
    checked = 0
    for i in range(0, 400, 40):
        q = Query(F[i], S[i], P[i], int(A[i]))
        valid = np.ones((1, 400), bool)
        valid[0, i] = False
        raw = ref.exact.raw(Query.batch([q]))
        scores = measure_scores(normalise(raw, maxima(raw, valid)), MEASURES)
        got = fast.search(q, 5, MEASURES, valid[0])
        if all(got.certified.values()):
            checked += 1
            for m in MEASURES:
                np.testing.assert_allclose(got.scores[m], scores[m][0, got.rows[m]], atol=1e-6, err_msg=m)
    assert checked >= 5, checked


def test_tier_on_an_fsspec_url_and_a_missing_or_corrupted_tier(indexed, tmp_path):
    root, extractor = indexed
    exact = Searcher(root / "ix", extractor=extractor)
    want = _results(exact)
    url = f"memory://dermsearch-tier-{tmp_path.name}"
    optimize(Index.open(root / "ix"), FastConfig(**SMALL, precision="int8", full_rows=url))
    fast = Searcher(root / "ix", extractor=extractor, mode="fast")
    assert fast.fast.info["full_rows"]["location"].startswith(url + "/styles-")
    assert {k: v[0] for k, v in _results(fast, reference=exact).items()} == {k: v[0] for k, v in want.items()}

    tier = tmp_path / "tier"
    written = optimize(Index.open(root / "ix"), FastConfig(**SMALL, precision="fp16", full_rows=str(tier)))
    path = written.info["full_rows"]["location"]
    assert [p.name for p in tier.iterdir()] == [path.rsplit("/", 1)[1]]
    import fsspec

    assert not fsspec.filesystem("memory").ls(url.removeprefix("memory://"))    # the replaced tier file went
    good = (tier / path.rsplit("/", 1)[1]).read_bytes()
    (tier / path.rsplit("/", 1)[1]).write_bytes(good[:200])                      # corrupted: cut short
    with pytest.raises(FullRowsError, match=path.rsplit("/", 1)[1]):
        FastIndex.open(written.directory)
    shutil.rmtree(tier)                                                           # missing
    with pytest.raises(FullRowsError, match=str(tier)) as e:
        Searcher(root / "ix", extractor=extractor, mode="fast")
    assert "optimize" in str(e.value)
    assert Searcher(root / "ix", extractor=extractor).fast is None      # exact mode reads the index's own rows
    assert main(["search", str(root / "ix"), str(root / "images" / "x01.png"), "--mode", "fast"]) == 2


def test_optimize_again_with_another_precision_is_atomic(indexed, monkeypatch):
    root, extractor = indexed
    optimize(Index.open(root / "ix"), FastConfig(**SMALL, precision="fp16"))
    before = Searcher(root / "ix", extractor=extractor, mode="fast")
    want = _results(before)
    import dermsearch.search.fast_build as fb

    def crash(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(fb, "write_compact_rows", crash)
    with pytest.raises(OSError, match="disk full"):
        optimize(Index.open(root / "ix"), FastConfig(**SMALL, precision="int8"))
    monkeypatch.undo()
    # the old files serve, untouched; no half-written set is visible
    assert json.loads((fast_dir(root / "ix", before.snapshot.version) / "fast.json").read_text())["precision"] == "fp16"
    assert _results(Searcher(root / "ix", extractor=extractor, mode="fast"))[
        "x05"][0] == want["x05"][0]
    optimize(Index.open(root / "ix"), FastConfig(**SMALL, precision="int8"))
    assert _results(before)["x05"][0] == want["x05"][0]         # a searcher opened before still answers
    after = Searcher(root / "ix", extractor=extractor, mode="fast")
    assert after.fast.precision == "int8" and _results(after)["x05"][0] == want["x05"][0]


def test_old_format_files_ask_for_optimize_and_info_says_the_storage(indexed, capsys, tmp_path):
    root, extractor = indexed
    bare = storage_facts(root / "ix", tmp_path / "absent", 14)        # no fast-mode files: the table alone
    assert bare["fast_mode"] is None and bare["bytes_per_image"] == bare["table_bytes_per_image"] > 300_000
    fast = optimize(Index.open(root / "ix"), FastConfig(**SMALL, precision="int8"))
    assert main(["info", str(root / "ix")]) == 0
    storage = json.loads(capsys.readouterr().out)["storage"]
    assert storage["fast_mode"]["precision"] == "int8" and storage["auto_precision"] == "float32"
    assert storage["fast_mode"]["full_rows"]["kind"] == "index"
    assert storage["fast_mode"]["code_precision"] == "float32"          # auto below 100,000 images
    assert storage["bytes_per_image"] == storage["table_bytes_per_image"] + storage["fast_mode"]["bytes_per_image"]
    info = json.loads((fast.directory / "fast.json").read_text())
    (fast.directory / "fast.json").write_text(json.dumps({**info, "format": 2}))
    with pytest.raises(FastModeMissing, match="format 2 is not 4.*dermsearch optimize"):
        Searcher(root / "ix", extractor=extractor, mode="fast")
    assert main(["optimize", str(root / "ix"), "--style-dims", "4", "--feature-dims", "4", "--mask-grid", "4",
                 "--precision", "fp16"]) == 0
    assert "fp16 re-rank rows" in capsys.readouterr().err
    assert Searcher(root / "ix", extractor=extractor, mode="fast").fast.precision == "fp16"
