"""Index build stages, resume, removal, bad files, model fingerprints, locking."""

from __future__ import annotations

import csv
import dataclasses

import numpy as np
import pytest

from dermsearch.extract import Extractor
from dermsearch.index import Index, IndexLockedError, ModelMismatchError
from dermsearch.index.build import build_index, decode_batches
from dermsearch.index.sources import SourceError, read_folder, read_labels_csv

from .conftest import TINY, TORCH, lesion_image


def _add_bad_files(folder):
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "random.jpg").write_bytes(np.random.default_rng(0).bytes(500))
    (folder / "page.png").write_text("<html>hello</html>")
    good = folder / "img00.png"
    (folder / "trunc.png").write_bytes(good.read_bytes()[:200])
    (folder / "notes.txt").write_text("not an image suffix: ignored")


def test_folder_reader_ids_and_symlink_outside(tmp_path, image_folder):
    outside = tmp_path / "secret.png"
    lesion_image(99).save(outside)
    (image_folder / "link.png").symlink_to(outside)
    records, problems = read_folder(image_folder)
    assert [r.id for r in records] == [f"img{i:02d}" for i in range(8)]
    assert len(problems) == 1 and "outside" in problems[0].reason


def test_csv_reader(tmp_path, image_folder):
    csv_path = tmp_path / "labels.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_id", "image_path", "diagnosis", "lesion_id", "site"])
        w.writerow(["a", "images/img00.png", "mel", "L1", "back"])
        w.writerow(["b", "images/img01.png", "nv", "L1", "arm"])
        w.writerow(["a", "images/img02.png", "nv", "L2", "leg"])   # duplicate id
        w.writerow(["", "images/img03.png", "nv", "L3", "leg"])    # empty id
    records, problems = read_labels_csv(csv_path)
    assert [r.id for r in records] == ["a", "b"]
    assert records[0].melanoma == 1 and records[1].melanoma == 0  # derived from diagnosis
    assert records[0].meta["site"] == "back" and records[0].lesion_id == "L1"
    assert {p.reason.split(" ")[0] for p in problems} == {"duplicate", "empty"}
    bad = tmp_path / "bad.csv"
    bad.write_text("id,file\nx,y\n")
    with pytest.raises(SourceError, match="missing column"):
        read_labels_csv(bad)


def test_decode_stage_alone(image_folder):
    records, _ = read_folder(image_folder)
    batches = list(decode_batches(records, 3, 2))
    assert [len(b) for b in batches] == [3, 3, 2]
    assert all(img is not None and err is None for b in batches for _, img, err in b)


def test_build_skips_bad_files_resumes_and_removes(tmp_path, image_folder, tiny_extractor):
    _add_bad_files(image_folder)
    seen = []
    report = build_index(image_folder, tmp_path / "ix", extractor=tiny_extractor, on_problem=seen.append)
    assert report.added == 8
    bad = {p.where.rsplit("/", 1)[-1]: p.reason for p in report.problems}
    assert set(bad) == {"zero.jpg", "random.jpg", "page.png", "trunc.png"}
    assert "0 bytes" in bad["zero.jpg"] and "truncated" in bad["trunc.png"]
    assert len(seen) == 4

    index = Index.open(tmp_path / "ix")
    assert len(index) == 8 and index.check() == []
    snap = index.snapshot()
    assert snap.features.shape == (8, tiny_extractor.feature_dim)
    assert snap.styles.shape == (8, tiny_extractor.style_dim)
    assert snap.masks.shape == (8, 32 * 32 // 8)
    # the stored vectors are what the extractor gives for that image
    from dermsearch.extract import load_image
    again = tiny_extractor.extract([load_image(image_folder / "img03.png")])
    i = list(snap.ids).index("img03")
    np.testing.assert_allclose(snap.features[i], again.features[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(snap.masks[i], again.masks[0])

    # rerun: nothing new; a new image: only it is added
    assert build_index(image_folder, tmp_path / "ix", extractor=tiny_extractor).added == 0
    lesion_image(50).save(image_folder / "new.png")
    r = build_index(image_folder, tmp_path / "ix", extractor=tiny_extractor)
    assert (r.added, r.already_indexed) == (1, 8)
    assert len(Index.open(tmp_path / "ix")) == 9

    removed, unknown = index.remove(["img00", "img01", "nope"])
    assert removed == ["img00", "img01"] and unknown == ["nope"]
    assert len(index) == 7 and "img00" not in index.ids()
    # removed images come back on the next run
    assert build_index(image_folder, tmp_path / "ix", extractor=tiny_extractor).added == 2
    # the version read from the table's files (no LanceDB) is LanceDB's newest, after adds and deletes
    fresh = Index.open(tmp_path / "ix")
    assert fresh.head_version() == index.latest_version() == fresh.version
    assert fresh.head_version() > snap.version


def test_fingerprint_mismatch_is_a_clear_error(tmp_path, image_folder, tiny_extractor):
    build_index(image_folder, tmp_path / "ix", extractor=tiny_extractor)
    other = Extractor(dataclasses.replace(TINY, seed=1), TORCH)
    assert other.fingerprint != tiny_extractor.fingerprint
    with pytest.raises(ModelMismatchError, match="never mixes models"):
        build_index(image_folder, tmp_path / "ix", extractor=other)
    assert len(Index.open(tmp_path / "ix")) == 8


def test_second_writer_gets_locked_error(tmp_path, image_folder, tiny_extractor):
    build_index(image_folder, tmp_path / "ix", extractor=tiny_extractor)
    a, b = Index.open(tmp_path / "ix"), Index.open(tmp_path / "ix")
    with a.writing():
        with pytest.raises(IndexLockedError, match="locked"):
            with b.writing():
                pass
    with b.writing():  # released
        pass


def test_not_an_index(tmp_path):
    from dermsearch.index import IndexDirectoryError
    with pytest.raises(IndexDirectoryError, match="not a dermsearch index"):
        Index.open(tmp_path)


def test_a_folder_without_images_is_refused_before_an_index_is_made(tmp_path, tiny_extractor):
    """Nothing to index in a folder: a SourceError naming it, and no index directory left behind."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.txt").write_text("no image here\n")
    with pytest.raises(SourceError, match="no image files found in this folder"):
        build_index(tmp_path / "docs", tmp_path / "ix", extractor=tiny_extractor)
    assert not (tmp_path / "ix").exists()
