"""Readers of the archive formats (no indexing): layouts detected from the columns, the column
mapping, the one melanoma rule and split reader, and problems that name their file and line."""

from __future__ import annotations

import pytest

from dermsearch.errors import ConfigError
from dermsearch.index.readers import ReadOptions, detect_layout, parse_columns
from dermsearch.index.sources import Source, SourceError, read_labels_csv, read_source
from dermsearch.labels import LabelError, melanoma_status, read_split

from .conftest import SHARED, labelled_archive, lesion_image, require_data
from .readers_fixtures import MEL, NEV, challenge_one_hot, isic_archive, write_csv


@pytest.mark.parametrize("melanoma, levels, expected", [
    ("1", ["nv"], 1), ("0", ["mel"], 0), ("true", [], 1), ("", ["mel"], 1), (None, ["melanoma"], 1),
    (None, ["nevus"], 0), (None, ["unknown"], None), (None, [], None), (None, ["MEL".lower()], 1),
    (None, list(MEL), 1), (None, list(NEV), 0), (None, ["Malignant"], None), (None, ["Indeterminate"], None),
    (None, ["Malignant", "Malignant adnexal epithelial proliferations - Follicular"], 0),
    (None, ["Melanoma in situ"], 1), (None, ["melanocytic"], 0),
    # clinic and ISIC diagnosis_4/_5 names: the word melanoma anywhere, never its negations
    (None, ["malignant melanoma"], 1), (None, ["Superficial spreading melanoma"], 1), (None, ["Nodular melanoma"], 1),
    (None, ["Melanoma, NOS"], 1), (None, ["melanoma-in-situ"], 1), (None, ["amelanotic-melanoma"], 1),
    (None, ["Lentigo maligna"], 1),
    (None, ["Lentigo maligna melanoma"], 1), (None, ["non-melanoma skin cancer"], 0), (None, ["Nonmelanoma"], 0),
    (None, ["non melanoma"], 0), (None, ["pseudomelanoma"], 0), (None, ["Solar lentigo"], 0),
    # snake_case and plural spellings; negations spelled out
    (None, ["melanoma_in_situ"], 1), (None, ["malignant_melanoma"], 1), (None, ["superficial_spreading_melanoma"], 1),
    (None, ["Melanomas"], 1), (None, ["non_melanoma"], 0), (None, ["not melanoma"], 0), (None, ["no melanoma"], 0),
    (None, ["nevus, melanoma excluded"], 0),
    (None, ["melanocytic nevus"], 0), (None, ["Malignant", "Malignant melanocytic proliferations (Melanoma)",
                                               "Melanoma Invasive", "Superficial spreading melanoma"], 1)])
def test_one_melanoma_rule(melanoma, levels, expected):
    assert melanoma_status(melanoma, levels) == expected


def test_training_leaves_out_rows_of_unknown_melanoma_status_and_says_so(tmp_path):
    """An ``unknown`` diagnosis without a melanoma column says nothing: training leaves the row out
    with a warning naming it (before issue #43 it counted as 0, then it stopped the whole run)."""
    from dermsearch.extract.datasets import load_labelled

    csv_path = labelled_archive(tmp_path, [{"image_id": "u", "diagnosis": "unknown"},
                                           {"image_id": "m", "diagnosis": "melanoma"},
                                           {"image_id": "n", "diagnosis": "nevus"}])
    with pytest.warns(UserWarning, match=r"1 row\(s\) left out.*\bu\b"):
        data = load_labelled(csv_path, size=32, label_column="diagnosis")
    assert data.ids == ["m", "n"] and data.melanoma.tolist() == [1, 0] and len(data.images) == 2
    only_unknown = labelled_archive(tmp_path / "u", [{"image_id": "u", "diagnosis": "unknown"}])
    with pytest.warns(UserWarning), pytest.raises(ConfigError, match="no row with a known melanoma status"):
        load_labelled(only_unknown, size=32, label_column="diagnosis")


def test_malignant_is_not_melanoma_for_the_index_or_for_training(tmp_path):
    """The disagreement of issue #42: training counted melanoma="malignant" as a melanoma, the index
    reader as unknown. Now both refuse it, naming the value, and both read a diagnosis alike."""
    from dermsearch.extract.datasets import load_labelled

    csv_path = labelled_archive(tmp_path, [{"image_id": "a", "diagnosis": "bcc", "melanoma": "malignant"},
                                           {"image_id": "b", "diagnosis": "nv", "melanoma": "0"}])
    records, problems = read_labels_csv(csv_path)
    assert [r.id for r in records] == ["b"]
    assert len(problems) == 1 and problems[0].where == "labels.csv line 2" and "'malignant'" in problems[0].reason
    with pytest.raises(ConfigError, match="malignant"):
        load_labelled(csv_path, size=32, label_column="diagnosis")
    with pytest.raises(LabelError):
        melanoma_status("malignant", [])

    agree = labelled_archive(tmp_path / "b", [{"image_id": "m", "diagnosis": "Melanoma in situ"},
                                              {"image_id": "n", "diagnosis": "nevus"}])
    from_index = {r.id: r.melanoma for r in read_labels_csv(agree)[0]}
    train = load_labelled(agree, size=32, label_column="diagnosis")
    assert from_index == dict(zip(train.ids, train.melanoma.tolist())) == {"m": 1, "n": 0}


def test_one_split_reader(tmp_path):
    from dermsearch.evaluate import read_split as evaluate_read_split
    from dermsearch.extract.datasets import read_split_map

    assert evaluate_read_split is read_split
    path = write_csv(tmp_path / "split.csv", ["image_id", "split"], [{"image_id": "a", "split": "xval"}])
    assert read_split_map(path) == read_split(path) == {"a": "xval"} and read_split_map(None) is None
    bad = write_csv(tmp_path / "bad.csv", ["id", "fold"], [{"id": "a", "fold": "1"}])
    with pytest.raises(ConfigError, match="image_id and split"):
        read_split(bad)


def test_isic_archive_download_folder(tmp_path):
    root = isic_archive(tmp_path / "isic")
    records, problems = read_source(root)                 # the folder: metadata.csv is found and read
    assert not problems and len(records) == 8
    first, bcc = records[0], records[5]
    assert first.id == "ISIC_9900000" and first.diagnosis == "Melanoma Invasive" and first.melanoma == 1
    assert first.lesion_id == "IL_L1" and first.meta["patient_id"] == "IP_P1"
    assert first.meta["license"] == "CC-BY" and first.meta["attribution"] == "Hospital A"
    assert first.meta["diagnosis_1"] == "Malignant" and first.path.endswith("isic/ISIC_9900000.jpg")
    assert bcc.diagnosis == "Basal cell carcinoma" and bcc.melanoma == 0
    assert [r.melanoma for r in records] == [1, 1, 0, 0, 1, 0, 0, 0]
    assert read_source(root / "metadata.csv")[0] == records


def test_isic_archive_mapping_picks_another_level(tmp_path):
    root = isic_archive(tmp_path / "isic")
    records, _ = read_source(Source(root / "metadata.csv", ReadOptions(columns=parse_columns("diagnosis=diagnosis_1"))))
    assert [r.diagnosis for r in records][:3] == ["Malignant", "Malignant", "Benign"]
    # one melanoma rule whichever level is stored: the hierarchy's other levels still say "(Melanoma)"
    assert [r.melanoma for r in records] == [1, 1, 0, 0, 1, 0, 0, 0]
    rows = [{"isic_id": "ISIC_9900000", "diagnosis_1": MEL[0], "diagnosis_2": MEL[1], "diagnosis_3": ""},
            {"isic_id": "ISIC_9900002", "diagnosis_1": NEV[0], "diagnosis_2": NEV[1], "diagnosis_3": NEV[2]}]
    short = write_csv(root / "short.csv", list(rows[0]), rows)     # diagnosis_3 empty, as on many ISIC images
    records, _ = read_source(Source(short, ReadOptions(columns=parse_columns("diagnosis=diagnosis_3"))))
    assert [(r.diagnosis, r.melanoma) for r in records] == [(None, 1), ("Nevus", 0)]


def test_forced_format_without_its_label_columns_is_refused_by_name(tmp_path):
    lesion_image(0).save(tmp_path / "ISIC_1.png")
    plain = write_csv(tmp_path / "plain.csv", ["image_id", "label"], [{"image_id": "ISIC_1", "label": "mel"}])
    with pytest.raises(SourceError, match=r"missing column\(s\) dx for the ham10000 format"):
        read_source(Source(plain, ReadOptions(format="ham10000")))
    with pytest.raises(SourceError, match="melanoma, seborrheic_keratosis for the isic-challenge format"):
        read_source(Source(plain, ReadOptions(format="isic-challenge")))
    mapped = read_source(Source(plain, ReadOptions(format="ham10000", columns={"diagnosis": "label"})))[0][0]
    assert mapped.diagnosis == "mel" and mapped.melanoma == 1


def test_unreadable_csv_names_its_line(tmp_path):
    lesion_image(0).save(tmp_path / "a.png")
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"image_id,image_path,diagnosis\na,a.png,nv\nb,a.png,n\xe9vus\n")    # saved as cp1252
    with pytest.raises(SourceError, match=r"latin.csv line 3: not UTF-8 text.*save the CSV as UTF-8"):
        read_source(latin)
    huge = tmp_path / "huge.csv"
    huge.write_text("image_id,image_path,diagnosis\na,a.png,nv\nb,a.png," + "x" * 200_000 + "\n")
    with pytest.raises(SourceError, match=r"huge.csv line 3: malformed CSV \(field larger"):
        read_source(huge)


def test_reader_problems_name_file_and_line_and_the_rest_goes_on(tmp_path):
    root = isic_archive(tmp_path / "isic")
    (root / "ISIC_9900002.jpg").unlink()
    records, problems = read_source(root)
    assert len(records) == 7
    assert [(p.where, p.reason.split(" in ")[0]) for p in problems] == [
        ("metadata.csv line 4", "no image file for ISIC_9900002")]


@pytest.mark.slow
def test_ham10000_metadata_reads_as_the_labels_csv():
    """The real HAM10000_metadata.csv gives the same images, paths, diagnoses, melanoma flags and
    lesions, in the same order, as the project's labels.csv (the identity behind an index built
    straight from it)."""
    meta = require_data(SHARED / "ham10000" / "HAM10000_metadata.csv")
    ham, p1 = read_source(meta)
    ours, p2 = read_source(SHARED / "ham10000" / "labels.csv")
    assert not p1 and not p2 and len(ham) == 10015

    def key(r):
        return r.id, r.path, r.diagnosis, r.melanoma, r.lesion_id

    assert [key(r) for r in ham] == [key(r) for r in ours]
    assert ham[0].meta["dx_type"] and ham[0].meta["localization"]


def test_challenge_one_hot_ground_truth(tmp_path):
    gt = challenge_one_hot(tmp_path / "c")
    assert detect_layout(["image", "MEL", "NV"]) == "isic-challenge"
    records, problems = read_source(gt)
    assert not problems
    assert [r.diagnosis for r in records] == ["MEL", "NV", "NV", "MEL", "BCC", "NV"]
    assert [r.melanoma for r in records] == [1, 0, 0, 1, 0, 0]
    rows = [{"image": "ISIC_7700000", "MEL": "1.0", "NV": "1.0"}, {"image": "ISIC_7700001", "MEL": "0", "NV": "1"}]
    bad = write_csv(tmp_path / "c" / "two.csv", ["image", "MEL", "NV"], rows)
    records, problems = read_source(bad)
    assert [r.id for r in records] == ["ISIC_7700001"]
    assert problems[0].where == "two.csv line 2" and "more than one class" in problems[0].reason


def test_challenge_2017_and_2020_layouts(tmp_path):
    for i in range(3):
        lesion_image(i).save(tmp_path / f"ISIC_{i:07d}.jpg")
    y2017 = write_csv(tmp_path / "2017.csv", ["image_id", "melanoma", "seborrheic_keratosis"],
                      [{"image_id": "ISIC_0000000", "melanoma": "1.0", "seborrheic_keratosis": "0.0"},
                       {"image_id": "ISIC_0000001", "melanoma": "0.0", "seborrheic_keratosis": "1.0"},
                       {"image_id": "ISIC_0000002", "melanoma": "0.0", "seborrheic_keratosis": "0.0"}])
    records, _ = read_source(y2017)
    assert [(r.diagnosis, r.melanoma) for r in records] == [("melanoma", 1), ("seborrheic_keratosis", 0),
                                                            ("nevus", 0)]
    cols = ["image_name", "patient_id", "lesion_id", "sex", "age_approx", "anatom_site_general_challenge",
            "diagnosis", "benign_malignant", "target"]
    y2020 = write_csv(tmp_path / "train.csv", cols, [
        {"image_name": "ISIC_0000000", "patient_id": "IP_1", "lesion_id": "IL_1", "diagnosis": "unknown",
         "benign_malignant": "benign", "target": "0"},
        {"image_name": "ISIC_0000001", "patient_id": "IP_1", "lesion_id": "IL_2", "diagnosis": "melanoma",
         "benign_malignant": "malignant", "target": "1"}])
    records, _ = read_source(y2020)
    assert [(r.id, r.melanoma, r.lesion_id, r.meta["patient_id"]) for r in records] == [
        ("ISIC_0000000", 0, "IL_1", "IP_1"), ("ISIC_0000001", 1, "IL_2", "IP_1")]


def test_columns_mapping_and_its_refusals(tmp_path):
    (tmp_path / "pics").mkdir()
    for i in range(2):
        lesion_image(i).save(tmp_path / "pics" / f"x{i}.png")
    custom = write_csv(tmp_path / "clinic.csv", ["name", "file", "level3", "person", "rights"],
                       [{"name": "a", "file": "pics/x0.png", "level3": "Melanoma Invasive", "person": "p9",
                         "rights": "CC-BY"},
                        {"name": "b", "file": "pics/x1.png", "level3": "Nevus", "person": "p9", "rights": "CC-BY"}])
    with pytest.raises(SourceError, match="missing column"):
        read_source(custom)                                 # nothing recognised: the mapping is asked for
    mapping = parse_columns("image_id=name,image_path=file,diagnosis=level3,patient_id=person,license=rights")
    records, problems = read_source(Source(custom, ReadOptions(columns=mapping)))
    assert not problems and [(r.id, r.diagnosis, r.melanoma, r.meta["patient_id"], r.meta["license"])
                             for r in records] == [("a", "Melanoma Invasive", 1, "p9", "CC-BY"),
                                                   ("b", "Nevus", 0, "p9", "CC-BY")]
    with pytest.raises(SourceError, match="diagnosis=diagnosis_3"):
        read_source(Source(custom, ReadOptions(columns=parse_columns("image_id=name,diagnosis=diagnosis_3"))))
    with pytest.raises(ConfigError, match="unknown field"):
        parse_columns("image=name")
    with pytest.raises(ConfigError, match="FIELD=COLUMN"):
        parse_columns("image_id")
    with pytest.raises(ConfigError, match="unknown format"):
        ReadOptions(format="xlsx")


def test_format_forced_and_images_folder(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    lesion_image(0).save(tmp_path / "elsewhere" / "ISIC_1.png")
    both = write_csv(tmp_path / "both.csv", ["image_id", "image_path", "dx", "diagnosis"],
                     [{"image_id": "ISIC_1", "image_path": "elsewhere/ISIC_1.png", "dx": "mel", "diagnosis": "nv"}])
    assert read_source(both)[0][0].diagnosis == "nv"                       # detected: dermsearch
    forced = read_source(Source(both, ReadOptions(format="ham10000", images=tmp_path / "elsewhere")))[0][0]
    assert forced.diagnosis == "mel" and forced.melanoma == 1 and forced.path.endswith("elsewhere/ISIC_1.png")
    with pytest.raises(SourceError, match="cannot be read as ham10000"):
        read_source(Source(tmp_path, ReadOptions(format="ham10000")))
    with pytest.raises(SourceError, match="no ISIC Archive metadata.csv .* in this folder"):
        read_source(Source(tmp_path / "elsewhere", ReadOptions(format="isic-archive")))
    plain = read_source(Source(tmp_path / "elsewhere", ReadOptions(license="CC-0", attribution="us")))[0][0]
    assert plain.meta["license"] == "CC-0" and plain.meta["attribution"] == "us"


def test_dermsearch_csv_without_image_path_finds_images_by_id(tmp_path):
    (tmp_path / "images").mkdir()
    lesion_image(0).save(tmp_path / "images" / "a.png")
    lesion_image(1).save(tmp_path / "b.jpg")
    labels = write_csv(tmp_path / "labels.csv", ["image_id", "diagnosis", "patient_id"],
                       [{"image_id": "a", "diagnosis": "malignant melanoma", "patient_id": "p1"},
                        {"image_id": "b", "diagnosis": "nevus", "patient_id": "p1"},
                        {"image_id": "c", "diagnosis": "nevus", "patient_id": "p2"}])
    assert detect_layout(["image_id", "diagnosis"]) == "dermsearch"
    records, problems = read_source(labels)
    assert [(r.id, r.melanoma, r.meta["patient_id"]) for r in records] == [("a", 1, "p1"), ("b", 0, "p1")]
    assert records[0].path.endswith("images/a.png")
    assert [(p.where, p.reason.split(" in ")[0]) for p in problems] == [("labels.csv line 4", "no image file for c")]
    with pytest.raises(SourceError, match="missing column image_id: "):
        read_source(write_csv(tmp_path / "other.csv", ["name", "diagnosis"], [{"name": "a", "diagnosis": "nv"}]))
