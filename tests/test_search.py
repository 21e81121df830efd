"""Searcher API on a small index: exactness against the measures, exclusions, filters, k=0."""

from __future__ import annotations

import numpy as np
import pytest

from dermsearch.extract import Extractor, ExtractorConfig
from dermsearch.index.build import build_index
from dermsearch.search import MEASURES, Filters, Searcher

from .conftest import TORCH, indexed_archive
from .one_query import max_normalised, top_k


@pytest.fixture(scope="module")
def labelled_index(tiny_extractor, tmp_path_factory):
    root = tmp_path_factory.mktemp("labelled")
    rows = [{"image_id": f"x{i}", "diagnosis": "mel" if i % 3 == 0 else "nv", "lesion_id": f"L{i // 2}",
             "sex": "female" if i % 2 else "male", "age": str(20 + 5 * i)} for i in range(12)]
    return root, Searcher(indexed_archive(root, rows, tiny_extractor), extractor=tiny_extractor)


def test_self_query_ranks_itself_first(labelled_index):
    _, s = labelled_index
    q = s.query_for_id("x4")
    res = s.search(q, k=3)
    assert set(res.results) == set(MEASURES)
    for m in ("euclidean", "cosine", "style", "dice", "i1_ecd"):
        assert res.results[m][0].id == "x4"
        assert res.results[m][0].score == pytest.approx(1.0)
    assert res.results["euclidean"][0].raw["ed"] == 0.0


def test_scores_are_exact_over_candidate_set(labelled_index):
    _, s = labelled_index
    q = s.query_for_id("x1")
    res = s.search(q, k=0, exclude_ids=["x1"])
    assert res.candidates == 11 and all(len(h) == 11 for h in res.results.values())
    snap = s.snapshot
    keep = snap.ids != "x1"
    # float64 references, no BLAS: the engine's float32 products differ by rounding only
    f64, s64 = snap.features[keep].astype(np.float64), snap.styles[keep].astype(np.float64)
    es = max_normalised(np.sqrt(((f64 - q.feature) ** 2).sum(1)))
    ss = max_normalised(((s64 - q.style) ** 2).sum(1))
    by_id = dict(zip(snap.ids[keep], es))
    ss_by_id = dict(zip(snap.ids[keep], ss))
    for h in res.results["euclidean"]:
        assert h.score == pytest.approx(by_id[h.id], abs=1e-5)  # float32 products: see docs/performance.md
        assert h.components["style"] == pytest.approx(ss_by_id[h.id], abs=1e-5)
    scores = [h.score for h in res.results["i1_sc"]]
    assert scores == sorted(scores, reverse=True)
    # the farthest candidate has ES exactly 0
    assert res.results["euclidean"][-1].score == 0.0


def test_filters_restrict_candidates_and_normalisation(labelled_index):
    _, s = labelled_index
    q = s.query_for_id("x0")
    full = s.search(q, k=0, measures=["euclidean"])
    mel = s.search(q, k=0, measures=["euclidean"], filters=Filters({"diagnosis": ("MEL",)}))
    assert mel.candidates == 4 and {h.diagnosis for h in mel.results["euclidean"]} == {"mel"}
    # max-normalisation is over the filtered set: its farthest member scores 0
    assert mel.results["euclidean"][-1].score == 0.0
    eds = {h.id: h.raw["ed"] for h in full.results["euclidean"]}
    top = max(eds[h.id] for h in mel.results["euclidean"])
    for h in mel.results["euclidean"]:
        assert h.score == pytest.approx(1 - eds[h.id] / top, abs=1e-12)
    aged = s.search(q, k=0, measures=["style"], filters=Filters(ranges={"age": (30, 45)}))
    assert {h.id for h in aged.results["style"]} == {"x2", "x3", "x4", "x5"}
    both = s.search(q, k=0, measures=["dice"], filters=Filters({"sex": ("female",)}, {"age": (None, 40)}))
    assert {h.id for h in both.results["dice"]} == {"x1", "x3"}


def test_k_limits_and_json_shape(labelled_index):
    root, s = labelled_index
    res = s.search(root / "images" / "x7.png", k=2, measures=["style", "i1_sd"])
    js = res.to_json()
    assert list(js) == ["query", "k", "candidates", "results"]
    assert set(js["results"]) == {"style", "i1_sd"}
    hit = js["results"]["style"][0]
    assert set(hit) == {"rank", "id", "score", "path", "diagnosis", "components", "raw"}
    assert set(hit["components"]) == {"euclidean", "cosine", "style", "dice"}
    assert set(hit["raw"]) == {"ed", "cs", "ls", "dice"}
    assert [h["rank"] for h in js["results"]["style"]] == [1, 2]
    with pytest.raises(KeyError, match="valid"):
        s.search(s.query_for_id("x1"), measures=["manhattan"])


def test_index_without_masks_or_style(tmp_path, image_folder):
    ex = Extractor(ExtractorConfig(weights="random", feature="pooled", members=1, image_size=64, masks=False,
                                   style=False), TORCH)
    build_index(image_folder, tmp_path / "ix", extractor=ex)
    s = Searcher(tmp_path / "ix", extractor=ex)
    res = s.search(s.query_for_id("img01"), k=3)
    assert set(res.results) == {"euclidean", "cosine"}
    assert res.messages and "lesion masks" in res.messages[0] and "style" in res.messages[0]
    h = res.to_json()["results"]["cosine"][0]
    assert h["components"]["dice"] is None and h["raw"]["ls"] is None
    with pytest.raises(ValueError, match="unavailable"):
        s.search(s.query_for_id("img01"), measures=["i1_cd"])


def test_all_candidates_excluded(labelled_index):
    _, s = labelled_index
    res = s.search(s.query_for_id("x0"), k=5, filters=Filters({"diagnosis": ("bcc",)}))
    assert res.candidates == 0 and all(h == [] for h in res.results.values())


def test_deterministic_tie_order():
    scores = np.array([0.5, 0.9, 0.5, 0.9, 0.1])
    assert top_k(scores, 3).tolist() == [1, 3, 0]
    assert top_k(scores, 0).tolist() == [1, 3, 0, 2, 4]
