"""The bad-input corpus (tests/badinputs.py) through index, search and the REST API.

Every usable file is indexed; every broken one is skipped with its reason, and nothing else is
lost; memory stays bounded (bombs are refused from their header)."""

from __future__ import annotations

import resource

import pytest
from fastapi.testclient import TestClient

from dermsearch.cli.main import main
from dermsearch.extract import ImageError, load_image
from dermsearch.index import Index
from dermsearch.index.build import build_index
from dermsearch.web.app import WebConfig, create_app

from .badinputs import _lesion, _save, csv_cases, image_cases

CASES = image_cases()


def test_corpus_has_at_least_30_kinds():
    assert len(CASES) + len(csv_cases()) >= 30
    assert len({k for k, *_ in CASES}) == len(CASES)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    (root / "images").mkdir()
    for _, name, data, _ in CASES:
        (root / "images" / name).write_bytes(data)
    (root / "images" / "ok.jpg").write_bytes(_save(_lesion(seed=9), "JPEG"))
    return root


@pytest.fixture(scope="module")
def built(tiny_extractor, corpus):
    extractor = tiny_extractor
    problems = []
    report = build_index(corpus / "images", corpus / "ix", extractor=extractor, on_problem=problems.append)
    return extractor, report, {p.where.rsplit("/", 1)[-1]: p.reason for p in problems}


@pytest.mark.parametrize("kind, name, data, expected", CASES, ids=[c[0] for c in CASES])
def test_decode(kind, name, data, expected, corpus):
    path = corpus / "images" / name
    if expected == "ok":
        img = load_image(path)
        assert img.mode == "RGB" and min(img.size) >= 1
    else:
        with pytest.raises(ImageError, match=expected):
            load_image(path)


def test_index_takes_every_usable_file_and_names_every_bad_one(built, corpus):
    _, report, problems = built
    good = {n for _, n, _, e in CASES if e == "ok"} | {"ok.jpg"}
    bad = {n: e for _, n, _, e in CASES if e != "ok"}
    assert set(problems) == set(bad)
    for name, expected in bad.items():
        assert expected in problems[name], (name, problems[name])
    index = Index.open(corpus / "ix")
    assert report.added == len(good) == len(index) and index.check() == []
    assert "läsion_ü_日本" in index.ids()


def test_memory_stays_bounded_on_bombs(corpus):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for name in ("bomb.png", "huge.png"):
        with pytest.raises(ImageError):
            load_image(corpus / "images" / name)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 100


@pytest.mark.parametrize("kind, name, data, expected", CASES, ids=[c[0] for c in CASES])
def test_search_cli_and_api(kind, name, data, expected, corpus, built, capsys):
    extractor, _, _ = built
    rc = main(["search", str(corpus / "ix"), str(corpus / "images" / name), "-k", "2", "--json",
               "--measure", "euclidean"])
    out = capsys.readouterr()
    client = _client(corpus, extractor)
    r = client.post("/api/search", files={"file": (name, data, "application/octet-stream")}, data={"k": "2"})
    if expected == "ok":
        assert rc == 0 and '"euclidean"' in out.out
        assert r.status_code == 200 and len(r.json()["results"]["euclidean"]) == 2
    else:
        assert rc == 2 and expected in out.err
        assert r.status_code in (413, 415) and "detail" in r.json() and "Traceback" not in r.text


_CLIENTS = {}


def _client(corpus, extractor):
    if "c" not in _CLIENTS:
        from dermsearch.search import Searcher
        # one client posts every case (30+): the rate limit is another test's business
        _CLIENTS["c"] = TestClient(create_app(corpus / "ix", WebConfig(auth="off", rate_limit=0),
                                              searcher=Searcher(corpus / "ix", extractor=extractor)),
                                   base_url="http://localhost")
    return _CLIENTS["c"]


@pytest.mark.slow
@pytest.mark.parametrize("kind, text, expected", csv_cases(), ids=[c[0] for c in csv_cases()])
def test_labels_csv_cases(kind, text, expected, corpus, tmp_path, capsys):
    csv_path = corpus / f"case_{abs(hash(kind))}.csv"
    csv_path.write_text(text, encoding="utf-8")
    rc = main(["index", str(csv_path), "--index", str(tmp_path / "ix"), "--quiet", "--weights", "random",
               "--image-size", "64", "--mask-size", "32"])
    out = capsys.readouterr()
    if expected.startswith("ok:"):
        assert rc == 0 and f"added {expected[3:]}," in out.out
    elif "missing column" in expected:
        assert rc == 2 and expected in out.err
    else:
        assert rc == 0 and expected in out.err  # the entry is skipped with its reason; the run goes on
