"""Each archive format indexed and evaluated end to end (tiny model, a few images each, one index
per format for the module); patients excluded from their own queries; licences listed by `info`;
external queries restricted to one split."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from dermsearch.cli.main import main
from dermsearch.evaluate import EvaluationConfig, Evaluator
from dermsearch.index.build import build_index
from dermsearch.index.readers import ReadOptions, parse_columns
from dermsearch.index.sources import Source
from dermsearch.search import Searcher

from .conftest import labelled_archive, lesion_image, require_data
from .readers_fixtures import HAM_META, challenge_one_hot, dicom_folder, ham_subset, isic_archive, write_csv


@pytest.fixture(scope="module")
def archives(tiny_extractor, tmp_path_factory):
    """format -> (index directory, what was indexed); built once for the module."""
    root = tmp_path_factory.mktemp("formats")
    sources = {"isic-archive": Source(isic_archive(root / "isic")),
               "isic-challenge": Source(challenge_one_hot(root / "challenge"))}
    if HAM_META.exists():
        sources["ham10000"] = Source(ham_subset(root / "ham"), ReadOptions(license="CC BY-NC 4.0",
                                                                            attribution="Tschandl et al. 2018"))
    try:
        import pydicom  # noqa: F401

        folder = dicom_folder(root / "dicom")
        sources["dicom"] = Source(folder, ReadOptions(format="dicom"))
        files = sorted(folder.glob("*.dcm"))
        sources["dicom+labels"] = Source(write_csv(root / "dicom-labels.csv", ["image_id", "image_path", "diagnosis"], [
            {"image_id": f.stem, "image_path": f"dicom/{f.name}", "diagnosis": ("nv", "mel")[i % 2]}
            for i, f in enumerate(files)]))
    except ImportError:
        pass
    (root / "clinic").mkdir()
    rows = []
    for i, level in enumerate(["Melanoma in situ", "Nevus", "Nevus", "Melanoma Invasive", "Nevus"]):
        lesion_image(300 + i).save(root / "clinic" / f"c{i}.png")
        rows.append({"name": f"c{i}", "file": f"clinic/c{i}.png", "level3": level, "person": f"p{i // 2}"})
    sources["columns"] = Source(write_csv(root / "clinic.csv", list(rows[0]), rows), ReadOptions(
        columns=parse_columns("image_id=name,image_path=file,diagnosis=level3,patient_id=person")))
    out = {}
    for name, source in sources.items():
        report = build_index(source, root / f"ix-{name}", extractor=tiny_extractor)
        assert not report.problems, report.problems
        out[name] = (root / f"ix-{name}", report)
    return out


def _info(ix, capsys) -> dict:
    assert main(["info", str(ix)]) == 0
    return json.loads(capsys.readouterr().out)


def _evaluate(ix, capsys, *more) -> dict:
    assert main(["evaluate", str(ix), "-k", "2", "--vote-k", "3", "--bootstrap", "10", "--quiet", "--json",
                 *more]) == 0
    return json.loads(capsys.readouterr().out)


def test_isic_archive_end_to_end(archives, capsys):
    ix, report = archives["isic-archive"]
    assert report.added == 8
    info = _info(ix, capsys)
    assert info["licenses"] == {"CC-0": 2, "CC-BY": 3, "CC-BY-NC": 3}
    assert info["patients"] == 3 and info["lesions"] == 6
    assert info["diagnoses"] == {"Basal cell carcinoma": 1, "Melanoma Invasive": 3, "Nevus": 4}
    assert info["melanoma"] == {"melanoma": 3, "not melanoma": 5, "unknown": 0}
    r = _evaluate(ix, capsys)
    assert r["queries"] == 8 and r["config"]["exclude_same"] == "patient"
    assert any("every image of its patient (the strictest the data allows; 8 of 8" in n for n in r["notes"])
    lesion = _evaluate(ix, capsys, "--exclude-same", "lesion", "--label-column", "diagnosis_1")
    assert lesion["config"]["exclude_same"] == "lesion" and lesion["config"]["label_column"] == "diagnosis_1"
    assert set(lesion["measures"]["cosine"]["per_diagnosis_p@2"]) == {"Benign", "Malignant"}
    assert main(["evaluate", str(ix), "-k", "2", "--vote-k", "3", "--bootstrap", "1", "--quiet"]) == 0
    assert "images of the same lesion or patient are never candidates" in capsys.readouterr().out


def test_ham10000_metadata_end_to_end(archives, capsys):
    require_data(HAM_META)
    ix, report = archives["ham10000"]
    info = _info(ix, capsys)
    assert info["images"] == 6 and info["licenses"] == {"CC BY-NC 4.0": 6} and info["patients"] == 0
    with open(HAM_META, newline="") as f:
        first = [r for _, r in zip(range(6), csv.DictReader(f))]
    expected: dict[str, int] = {}
    for r in first:
        expected[r["dx"]] = expected.get(r["dx"], 0) + 1
    assert info["diagnoses"] == expected and info["lesions"] == len({r["lesion_id"] for r in first})
    r = _evaluate(ix, capsys)
    assert r["queries"] == 6 and r["config"]["exclude_same"] == "lesion"      # no patients: the lesion
    assert any("its lesion's other images (the strictest the data allows)" in n for n in r["notes"])


def test_challenge_ground_truth_end_to_end(archives, capsys):
    ix, _ = archives["isic-challenge"]
    info = _info(ix, capsys)
    assert info["diagnoses"] == {"BCC": 1, "MEL": 2, "NV": 3} and info["licenses"] == {"(none)": 6}
    assert info["melanoma"] == {"melanoma": 2, "not melanoma": 4, "unknown": 0}
    snap = Searcher(ix).snapshot
    assert snap.melanoma.tolist() == [1.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    assert _evaluate(ix, capsys)["queries"] == 6


def test_dicom_folder_end_to_end(archives, capsys):
    if "dicom" not in archives:
        pytest.skip("pydicom not installed (the dicom extra)")
    ix, report = archives["dicom"]
    assert report.added == 6
    info = _info(ix, capsys)
    assert info["patients"] == 3 and info["diagnoses"] == {"(none)": 6}
    assert info["melanoma"] == {"melanoma": 0, "not melanoma": 0, "unknown": 6}
    meta = [json.loads(m) for m in Searcher(ix).snapshot.meta_json]
    assert {m["body_site"] for m in meta} == {"TORSO", "ARM", "HEAD"} and all(m["sex"] in "MF" for m in meta)
    assert main(["evaluate", str(ix), "--quiet"]) == 2          # unlabelled: said, not a traceback
    assert "evaluation needs labelled images" in capsys.readouterr().err
    labelled, _ = archives["dicom+labels"]                       # the labels in a CSV, the patients in DICOM
    assert _info(labelled, capsys)["patients"] == 3
    r = _evaluate(labelled, capsys)
    assert r["queries"] == 6 and r["config"]["exclude_same"] == "patient"


def test_column_mapping_end_to_end(archives, capsys):
    ix, _ = archives["columns"]
    info = _info(ix, capsys)
    assert info["patients"] == 3 and info["diagnoses"] == {"Melanoma Invasive": 1, "Melanoma in situ": 1,
                                                           "Nevus": 3}
    assert Searcher(ix).snapshot.melanoma.tolist() == [1.0, 0.0, 0.0, 1.0, 0.0]
    assert _evaluate(ix, capsys)["queries"] == 5


def test_cli_index_with_a_mapping_names_a_missing_column(tmp_path, capsys):
    csv_path = labelled_archive(tmp_path, [{"image_id": "a", "diagnosis": "nv"}])
    rc = main(["index", str(csv_path), "--index", str(tmp_path / "ix"), "--columns", "diagnosis=diagnosis_3",
               "--quiet"])
    assert rc == 2 and "diagnosis=diagnosis_3" in capsys.readouterr().err
    assert not (tmp_path / "ix").exists()


def test_same_patient_exclusion_on_a_hand_built_archive(archives):
    """P1 holds lesions L1 (images 0, 1) and L2 (image 2): excluding the patient leaves image 0 none
    of 0, 1, 2 as candidates; excluding the lesion still offers image 2."""
    ix, _ = archives["isic-archive"]
    ev = Evaluator(Searcher(ix))
    q = ev.queries_from_index()
    assert q.patient_id.tolist() == ["IP_P1"] * 3 + ["IP_P2"] * 2 + ["IP_P3"] * 3
    ids = ev.searcher.snapshot.ids
    by_patient, _ = ev.rank(q, config=EvaluationConfig(k=2, vote_k=16, exclude_same="patient"))
    by_lesion, _ = ev.rank(q, config=EvaluationConfig(k=2, vote_k=16, exclude_same="lesion"))
    default, _ = ev.rank(q, config=EvaluationConfig(k=2, vote_k=16))
    for m in by_patient:
        got = {i: set(ids[r[r >= 0]]) for i, r in zip(ids, by_patient[m])}
        assert got["ISIC_9900000"] == {f"ISIC_99{i:05d}" for i in range(3, 8)}
        assert got["ISIC_9900003"] == {f"ISIC_99{i:05d}" for i in (0, 1, 2, 5, 6, 7)}
        lesion = {i: set(ids[r[r >= 0]]) for i, r in zip(ids, by_lesion[m])}
        assert lesion["ISIC_9900000"] == {f"ISIC_99{i:05d}" for i in range(2, 8)}
        assert np.array_equal(default[m], by_patient[m])            # the strictest the data allows
    with pytest.raises(ValueError, match="exclude_same"):
        ev.rank(q, config=EvaluationConfig(exclude_same="family"))


def test_external_queries_restricted_to_one_split(archives, tmp_path, capsys):
    """--query-split-csv: rows outside the chosen split are never queries (a broken xtest row is not
    even read), and an 'unknown' diagnosis stays out of the melanoma metrics."""
    ix, _ = archives["columns"]
    q_csv = labelled_archive(tmp_path, [
        {"image_id": "q0", "diagnosis": "Nevus", "melanoma": "0"},
        {"image_id": "q1", "diagnosis": "Melanoma in situ", "melanoma": "1"},
        {"image_id": "q2", "diagnosis": "unknown", "melanoma": "0"},
        {"image_id": "q3", "diagnosis": "Nevus", "melanoma": "0"}])
    (tmp_path / "images" / "q3.png").write_bytes(b"not an image")            # in xtest: never touched
    split = write_csv(tmp_path / "split.csv", ["image_id", "split"],
                      [{"image_id": i, "split": s} for i, s in (("q0", "xval"), ("q1", "xval"), ("q2", "xval"),
                                                                ("q3", "xtest"))])
    r = _evaluate(ix, capsys, "--queries", str(q_csv), "--query-split-csv", str(split), "--query-split", "xval")
    assert r["queries"] == 3 and any("1 queries without a diagnosis" in n for n in r["notes"])
    ev = Evaluator(Searcher(ix))
    q = ev.queries_from_csv(q_csv, only_ids={"q0", "q1", "q2"})
    assert q.ids.tolist() == ["q0", "q1", "q2"] and np.isnan(q.melanoma[2]) and q.melanoma[:2].tolist() == [0, 1]
    outcomes = ev.outcomes(q, *ev.rank(q, config=EvaluationConfig(k=2, vote_k=3)), EvaluationConfig(k=2, vote_k=3))
    assert all(o.melanoma.tolist() == [0.0, 1.0] for o in outcomes.values())
    assert main(["evaluate", str(ix), "--queries", str(q_csv), "--query-split", "xval", "--quiet"]) == 2
    assert "--query-split-csv" in capsys.readouterr().err


def test_fit_gram_weights_excludes_the_query_patient_like_evaluate(archives, tmp_path, monkeypatch):
    """fit-gram-weights follows evaluate's rule: same patient excluded by default when the index has
    patients (folds grouped by patient), same lesion only when asked."""
    import dermsearch.evaluate.gram_weights as gw
    from dermsearch.index import Index

    ix, _ = archives["isic-archive"]
    index = Index.open(ix)
    ids = sorted(Searcher(ix).snapshot.ids)
    split = {i: "val" if n in (0, 3, 5) else "train" for n, i in enumerate(ids)}     # one query per patient
    seen = []
    real = gw.fit_gram_weights
    monkeypatch.setattr(gw, "fit_gram_weights", lambda stack, valid, *a, **kw: (seen.append(valid.copy()),
                                                                               real(stack, valid, *a, **kw))[1])
    fit = gw.fit_index_gram_weights(index, split, k=2)
    assert fit.info["fitted_on"]["exclude_same"] == "patient"
    # queries ISIC_..0 (P1), ..3 (P2), ..5 (P3) against the 5 train rows 1,2 (P1), 4 (P2), 6,7 (P3)
    assert seen[0].tolist() == [[False, False, True, True, True], [True, True, False, True, True],
                                [True, True, True, False, False]]
    lesion = gw.fit_index_gram_weights(index, split, k=2, exclude_same="lesion")
    assert lesion.info["fitted_on"]["exclude_same"] == "lesion"
    # by lesion: ..0 (L1) loses ..1 only; ..3 (L3) nothing; ..5 (L5) nothing
    assert seen[-3].tolist() == [[False, True, True, True, True], [True] * 5, [True] * 5]
