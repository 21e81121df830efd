"""The optional metadata melanoma head: reading metadata, scoring, files, fitting, evaluate and CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from dermsearch.errors import ConfigError
from dermsearch.models.metadata_head import COLUMNS, SITES, MetadataHead, design_matrix, read_metadata


def test_metadata_read_whatever_the_archive_calls_it():
    assert read_metadata({"age": "45.0", "sex": "male", "localization": "lower extremity"}) == \
        (45.0, "male", "lower extremity")                                       # HAM10000
    assert read_metadata({"age_approx": "70", "sex": "female", "anatom_site_general": "posterior torso"}) == \
        (70.0, "female", "torso")                                               # ISIC Archive
    assert read_metadata({"age": "", "age_approx": "30", "sex": "F", "localization": "acral"}) == \
        (30.0, "female", "palms/soles")
    assert read_metadata({"age": "unknown", "age_approx": "45", "anatom_site_general": "unknown",
                          "localization": "scalp", "sex": "MALE"}) == (45.0, "male", "head/neck")   # next column read
    for bad in (None, {}, {"age": "n/a", "sex": "unknown", "localization": "unknown"},
                {"age": "-3", "sex": "", "site": "elbow?"}, {"age": "nan"}, {"age": "400"}):
        assert read_metadata(bad) == (None, None, None)


def _head(seed=0, n=300):
    """A head fitted by scikit-learn on random inputs, and that model."""
    rng = np.random.default_rng(seed)
    metas = []
    for _ in range(n):
        m = {}
        if rng.random() < 0.8:
            m["age"] = str(rng.integers(5, 90))
        if rng.random() < 0.8:
            m["sex"] = rng.choice(["male", "female"])
        if rng.random() < 0.7:
            m["localization"] = rng.choice(["back", "face", "lower extremity", "acral", "hand", "genital"])
        metas.append(m)
    p = rng.uniform(0.02, 0.98, n)
    x = design_matrix(p, metas, 50.0, 15.0)
    y = (rng.random(n) < 1 / (1 + np.exp(-(x[:, 0] + 0.5 * x[:, 1])))).astype(int)
    model = LogisticRegression(C=1.0, max_iter=2000).fit(x, y)
    head = MetadataHead("f" * 16, tuple(model.coef_[0]), float(model.intercept_[0]), 50.0, 15.0, 1.0, {})
    return head, model, p, metas


def test_rows_with_metadata_score_as_the_fitted_model_says():
    head, model, p, metas = _head()
    expected = model.predict_proba(design_matrix(p, metas, 50.0, 15.0))[:, 1]
    np.testing.assert_allclose(head.probability(p, metas), expected, rtol=0, atol=1e-12)
    # and by hand, for one row with everything
    meta = {"age": "65", "sex": "female", "localization": "back"}
    z = (head.coef[0] * math.log(0.3 / 0.7) + head.coef[1] * (65 - 50) / 15 + head.coef[4]
         + head.coef[5 + SITES.index("torso")] + head.intercept)
    assert head.probability([0.3], [meta])[0] == pytest.approx(1 / (1 + math.exp(-z)), abs=1e-12)


def test_missing_metadata_never_fails_a_query():
    head, _, _, _ = _head()
    image_only = 1 / (1 + math.exp(-(head.coef[0] * math.log(0.4 / 0.6) + head.coef[2] + head.intercept)))
    for meta in (None, {}, {"age": "?", "sex": "other", "localization": "unknown"}, {"unrelated": "x"}):
        got = head.probability([0.4], [meta])
        assert np.isfinite(got).all()
        assert got[0] == pytest.approx(image_only, abs=1e-12)        # scored from the image alone
    assert np.isfinite(head.probability([0.0, 1.0], [None, None])).all()   # saturated image heads too


def test_file_round_trip_fingerprint_and_refusals(tmp_path):
    head, _, p, metas = _head()
    path = tmp_path / "head.json"
    head.save(path)
    back = MetadataHead.load(path)
    assert back.fingerprint == head.fingerprint
    np.testing.assert_array_equal(back.probability(p, metas), head.probability(p, metas))
    d = json.loads(path.read_text())
    assert d["columns"] == list(COLUMNS) and d["fingerprint"] == head.fingerprint
    d["coef"][1] += 0.5                                                  # edited by hand
    path.write_text(json.dumps(d))
    with pytest.raises(ConfigError, match="fingerprint"):
        MetadataHead.load(path)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not a readable metadata head"):
        MetadataHead.load(path)
    path.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ConfigError, match="not a metadata head file"):
        MetadataHead.load(path)
    with pytest.raises(ConfigError, match="fitted for model ffff"):
        head.check_model("0123456789abcdef", "head.json")


@pytest.fixture(scope="module")
def packaged_index(tmp_path_factory):
    """24 synthetic images indexed with the packaged model (it has a melanoma head), half of them
    melanomas, with age/sex/site on most rows, in train/val/test."""
    from dermsearch.extract import Extractor, ExtractorConfig
    from dermsearch.runtime import Runtime

    from .conftest import indexed_archive

    root = tmp_path_factory.mktemp("metahead")
    rows = []
    for i in range(24):
        mel = i % 2
        row = {"image_id": f"im{i:02d}", "lesion_id": f"L{i:02d}", "diagnosis": "mel" if mel else "nv",
               "melanoma": str(mel), "age": str(30 + 2 * i) if i % 5 else "", "sex": ("male", "female")[i % 3 % 2],
               "localization": ("back", "face", "lower extremity")[i % 3] if i % 4 else ""}
        rows.append(row)
    ix = indexed_archive(root, rows, Extractor(ExtractorConfig(), Runtime(backend="torch")))
    split = root / "split.csv"
    split.write_text("image_id,split\n" + "".join(f"im{i:02d},{('train', 'val', 'test')[i % 3]}\n" for i in range(24)))
    return root, ix, split


@pytest.mark.slow
def test_fit_then_evaluate_through_the_cli(packaged_index, tmp_path, capsys):
    from dermsearch.cli.main import main

    root, ix, split = packaged_index
    out = tmp_path / "head.json"
    assert main(["fit-metadata-head", str(ix), "--split", str(split), "--out", str(out)]) == 0
    said = capsys.readouterr().out
    head = MetadataHead.load(out)
    assert f"metadata head {head.fingerprint} written" in said and "kept C=" in said
    index_fp = json.loads((ix / "dermsearch.json").read_text())["fingerprint"]
    assert head.model_fingerprint == index_fp and head.fitted["fit"] == 8
    assert main(["evaluate", str(ix), "--split", str(split), "--query-split", "test", "--candidate-split", "train",
                 "val", "--metadata-head", str(out), "--json", "--bootstrap", "20", "-q"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["head"]) >= {"melanoma_auc_head", "melanoma_auc_head_metadata", "metadata_head"}
    assert report["head"]["metadata_head"]["fingerprint"] == head.fingerprint
    assert report["head"]["metadata_head"]["queries_with_metadata"] == 8
    # external queries, two rows with no metadata at all: scored, never an error
    import csv

    with open(root / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows[:2]:
        r.update(age="", sex="", localization="")
    queries = root / "queries.csv"
    with open(queries, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    assert main(["evaluate", str(ix), "--queries", str(queries), "--metadata-head", str(out), "--json",
                 "--bootstrap", "10", "-q"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert np.isfinite(report["head"]["melanoma_auc_head_metadata"]["value"])
    assert report["head"]["metadata_head"]["queries_with_metadata"] == 22
    # a head fitted for another model is refused with one line
    d = json.loads(out.read_text())
    other = MetadataHead(**{**{k: d[k] for k in ("coef", "intercept", "age_mean", "age_std", "C", "fitted")},
                            "model_fingerprint": "0" * 16})
    other.save(tmp_path / "other.json")
    assert main(["evaluate", str(ix), "--metadata-head", str(tmp_path / "other.json"), "-q"]) == 2
    assert "fitted for model 0000000000000000" in capsys.readouterr().err
