"""DICOM files (made with pydicom from the bundled sample): decoded as RGB under the same limits as
other images, header facts read into metadata, bombs and non-image DICOM refused cleanly."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pydicom")

from dermsearch.extract.dicom import dicom_header  # noqa: E402
from dermsearch.extract.images import ImageError, load_image  # noqa: E402
from dermsearch.index.readers import ReadOptions  # noqa: E402
from dermsearch.index.sources import Source, read_source  # noqa: E402

from .readers_fixtures import dicom_folder, sample_rgb, write_dicom  # noqa: E402


@pytest.fixture(scope="module")
def sample():
    return sample_rgb(2)


def test_native_and_jpeg_dicom_decode_like_their_pixels(tmp_path, sample):
    (_, rgb, jpeg), _ = sample
    native = load_image(write_dicom(tmp_path / "n.dcm", rgb=rgb))
    assert native.mode == "RGB" and np.array_equal(np.asarray(native), rgb)
    encapsulated = load_image(write_dicom(tmp_path / "j.dcm", jpeg=jpeg))
    import io

    from PIL import Image

    assert np.array_equal(np.asarray(encapsulated), np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")))
    as_bytes = load_image((tmp_path / "j.dcm").read_bytes())          # an upload: detected by its DICM marker
    assert as_bytes.size == encapsulated.size
    no_suffix = tmp_path / "IM0001"
    no_suffix.write_bytes((tmp_path / "n.dcm").read_bytes())
    assert load_image(no_suffix).size == (rgb.shape[1], rgb.shape[0])


def test_header_facts(tmp_path, sample):
    path = write_dicom(tmp_path / "a.dcm", rgb=sample[0][1], patient="PAT-7", sex="F", age="045Y", site="TORSO")
    facts = dicom_header(path)
    assert {k: facts[k] for k in ("patient_id", "sex", "age", "body_site", "modality")} == {
        "patient_id": "PAT-7", "sex": "F", "age": "45", "body_site": "TORSO", "modality": "XC"}


def test_dicom_is_read_from_archives_but_refused_where_only_images_are_allowed(tmp_path, sample):
    """The web app decodes uploads with dicom=False: a DICOM upload meets the image allow-list."""
    data = write_dicom(tmp_path / "n.dcm", rgb=sample[0][1]).read_bytes()
    assert load_image(data).size == (sample[0][1].shape[1], sample[0][1].shape[0])
    with pytest.raises(ImageError, match="not a recognised image format"):
        load_image(data, dicom=False)
    with pytest.raises(ImageError, match="not a recognised image format"):
        load_image(tmp_path / "n.dcm", dicom=False)


def test_dicom_bombs_and_non_images_are_refused(tmp_path, sample):
    (_, rgb, jpeg), _ = sample
    # a header claiming 60000 x 60000 pixels over a few bytes: refused before any decoding
    bomb = write_dicom(tmp_path / "bomb.dcm", rgb=rgb[:2, :2], rows=60000, cols=60000)
    with pytest.raises(ImageError, match="image too large"):
        load_image(bomb)
    # a header within the limit whose JPEG frame claims 30000 x 30000: Pillow's guard, as for any JPEG
    sof = jpeg.index(b"\xff\xc0")
    big = jpeg[:sof + 5] + (30000).to_bytes(2, "big") + (30000).to_bytes(2, "big") + jpeg[sof + 9:]
    with pytest.raises(ImageError, match="too large|bomb"):
        load_image(write_dicom(tmp_path / "jbomb.dcm", jpeg=big, rows=72, cols=96))
    # a header that disagrees with its JPEG frame
    with pytest.raises(ImageError, match="header says"):
        load_image(write_dicom(tmp_path / "lie.dcm", jpeg=jpeg, rows=10, cols=10))
    # uncompressed pixel data shorter than the header needs
    with pytest.raises(ImageError, match="bytes, its header needs"):
        load_image(write_dicom(tmp_path / "short.dcm", rgb=rgb[:10], rows=72, cols=96))
    # a structured report: DICOM without pixel data
    with pytest.raises(ImageError, match="holds no image .*SOP class"):
        load_image(write_dicom(tmp_path / "sr.dcm", sop="1.2.840.10008.5.1.4.1.1.88.11", pixel=False))
    # not DICOM at all, though named .dcm
    (tmp_path / "text.dcm").write_bytes(b"patient notes\n" * 40)
    with pytest.raises(ImageError, match="not a DICOM file|corrupt DICOM"):
        load_image(tmp_path / "text.dcm")


def test_dicom_folder_reader(tmp_path):
    root = dicom_folder(tmp_path / "dcm")
    (root / "notes.dcm").write_bytes(b"patient notes\n" * 40)          # a bad file: a problem, the rest goes on
    from PIL import Image

    Image.new("RGB", (8, 8)).save(root / "photo.png")
    records, problems = read_source(root)
    assert sorted(r.id for r in records) == sorted(p.stem for p in root.glob("ISIC_*.dcm")) + ["photo"]
    assert [p.where.endswith("notes.dcm") for p in problems] == [True]
    dicom_only, _ = read_source(Source(root, ReadOptions(format="dicom")))
    assert "photo" not in {r.id for r in dicom_only} and len(dicom_only) == 6
    first = sorted(dicom_only, key=lambda r: r.id)[0]
    assert first.meta["patient_id"] == "DP0" and first.meta["sex"] == "M" and first.meta["age"] == "40"
    assert first.meta["body_site"] == "TORSO"


def test_without_the_dicom_extra(tmp_path, monkeypatch):
    """A stray DICOM file in a folder of images is a problem line; a DICOM folder names the extra."""
    from PIL import Image

    from dermsearch.errors import MissingExtraError
    from dermsearch.extract import dicom

    root = dicom_folder(tmp_path / "dcm")
    Image.new("RGB", (8, 8)).save(root / "photo.png")

    def missing():
        raise MissingExtraError("reading DICOM files needs the 'dicom' extra (pydicom is not installed)")

    monkeypatch.setattr(dicom, "_pydicom", missing)
    records, problems = read_source(root)
    assert [r.id for r in records] == ["photo"] and len(problems) == 6
    assert all("'dicom' extra" in p.reason for p in problems)
    with pytest.raises(MissingExtraError, match="'dicom' extra"):
        read_source(Source(root, ReadOptions(format="dicom")))


def _deflated(path, rgb, extra_zeros: int = 0):
    """A Deflated Explicit VR Little Endian file (the data set zlib-compressed), with ``extra_zeros``
    bytes of zeros in a private element: a few KB on disk whatever their number."""
    from pydicom import dcmread
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = dcmread(write_dicom(path, rgb=rgb))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    if extra_zeros:
        ds.add_new(0x00091010, "LO", "dermsearch test")          # private creator
        ds.add_new(0x00091001, "OB", bytes(extra_zeros))         # inflates to extra_zeros bytes
    ds.save_as(path, enforce_file_format=True)
    return path


def test_deflated_dicom_reads_and_a_deflate_bomb_is_refused_before_pydicom(tmp_path, sample, monkeypatch):
    import dermsearch.extract.dicom as dicom

    (_, rgb, _), _ = sample
    plain = _deflated(tmp_path / "deflated.dcm", rgb)
    assert np.array_equal(np.asarray(load_image(plain)), rgb) and dicom_header(plain)["patient_id"] == "P1"
    bomb = _deflated(tmp_path / "bomb.dcm", rgb, extra_zeros=8 << 20)
    assert bomb.stat().st_size < 64 << 10                        # 8 MB of data set in a few KB
    monkeypatch.setattr(dicom, "INFLATE_LIMIT", 4 << 20)         # the real limit is ~600 MB: the same code path
    for read in (load_image, dicom_header, lambda p: load_image(p.read_bytes())):
        with pytest.raises(ImageError, match="inflates to more than 4194304 bytes"):
            read(bomb)
    assert np.array_equal(np.asarray(load_image(plain)), rgb)     # under the limit: read as before
    records, problems = read_source(Source(tmp_path, ReadOptions(format="dicom")))
    assert [r.id for r in records] == ["deflated"] and [p.where.endswith("bomb.dcm") for p in problems] == [True]


def test_dicom_headers_beyond_what_is_read_are_refused(tmp_path, sample):
    from pydicom import dcmread

    (_, rgb, _), _ = sample

    def variant(name, **changes):
        ds = dcmread(write_dicom(tmp_path / name, rgb=rgb))
        for k, v in changes.items():
            setattr(ds, k, v)
        ds.save_as(tmp_path / name, enforce_file_format=True)
        return tmp_path / name

    with pytest.raises(ImageError, match="200 samples per pixel"):
        load_image(variant("s.dcm", SamplesPerPixel=200))
    with pytest.raises(ImageError, match="64 bits allocated"):
        load_image(variant("b.dcm", BitsAllocated=64))
    # within the pixel limit, but 3 x 32-bit samples: more bytes than Pillow's largest image
    with pytest.raises(ImageError, match="image too large .* bytes decoded"):
        load_image(variant("w.dcm", Rows=7000, Columns=7000, BitsAllocated=32), max_pixels=60_000_000)
    grey = dcmread(write_dicom(tmp_path / "g.dcm", rgb=rgb))          # 16-bit greyscale still reads
    grey.SamplesPerPixel, grey.PhotometricInterpretation = 1, "MONOCHROME2"
    grey.BitsAllocated, grey.BitsStored, grey.HighBit = 16, 12, 11
    del grey.PlanarConfiguration
    ramp = (np.arange(rgb.shape[0] * rgb.shape[1], dtype=np.uint16) % 4096).reshape(rgb.shape[:2])
    grey.PixelData = ramp.tobytes()
    grey.save_as(tmp_path / "g.dcm", enforce_file_format=True)
    img = np.asarray(load_image(tmp_path / "g.dcm"))
    assert img.shape == (*rgb.shape[:2], 3) and img.min() == 0 and img.max() == 255
