"""Small archives in the formats dermsearch reads, written from each format's documented columns
(test helpers for tests/test_readers*.py; the images are the bundled CC0 sample or synthetic)."""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from .conftest import REPO, lesion_image

SAMPLE = REPO / "examples" / "isic-sample"
HAM_META = REPO.parent / "shared" / "data" / "ham10000" / "HAM10000_metadata.csv"

# diagnosis_1 .. diagnosis_3 of the ISIC Archive's hierarchy
MEL = ("Malignant", "Malignant melanocytic proliferations (Melanoma)", "Melanoma Invasive")
NEV = ("Benign", "Benign melanocytic proliferations", "Nevus")
BCC = ("Malignant", "Malignant adnexal epithelial proliferations - Follicular", "Basal cell carcinoma")


def write_csv(path: Path, columns: list[str], rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, columns)
        w.writeheader()
        w.writerows(rows)
    return path


def isic_archive(root: Path) -> Path:
    """An ``isic image download`` folder: images, ``metadata.csv``, ``attribution.txt``. Eight images
    of three patients; patient P1 has two lesions (L1: 2 images, L2: 1), P2 two (L3, L4), P3 two (L5, L6)."""
    root.mkdir(parents=True, exist_ok=True)
    plan = [("P1", "L1", MEL, "CC-BY", "Hospital A"), ("P1", "L1", MEL, "CC-BY", "Hospital A"),
            ("P1", "L2", NEV, "CC-BY", "Hospital A"), ("P2", "L3", NEV, "CC-0", "Anonymous"),
            ("P2", "L4", MEL, "CC-0", "Anonymous"), ("P3", "L5", BCC, "CC-BY-NC", "Clinic <B> & co"),
            ("P3", "L6", NEV, "CC-BY-NC", "Clinic <B> & co"), ("P3", "L6", NEV, "CC-BY-NC", "Clinic <B> & co")]
    rows = []
    for i, (patient, lesion, diag, lic, attribution) in enumerate(plan):
        isic_id = f"ISIC_99{i:05d}"
        lesion_image(100 + i).save(root / f"{isic_id}.jpg", quality=92)
        rows.append({"isic_id": isic_id, "attribution": attribution, "copyright_license": lic,
                     "age_approx": str(30 + 5 * i), "anatom_site_general": "posterior torso",
                     "benign_malignant": diag[0].lower(), "diagnosis_1": diag[0], "diagnosis_2": diag[1],
                     "diagnosis_3": diag[2], "lesion_id": f"IL_{lesion}", "patient_id": f"IP_{patient}",
                     "sex": "female" if i % 2 else "male"})
    write_csv(root / "metadata.csv", list(rows[0]), rows)
    (root / "attribution.txt").write_text("Hospital A (CC-BY); Anonymous (CC-0); Clinic <B> & co (CC-BY-NC)\n")
    return root


def ham_subset(root: Path, n: int = 6) -> Path:
    """The first rows of the real ``HAM10000_metadata.csv`` (its own header and values) with their
    images copied beside it into ``images/``: the layout HAM10000 users have."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(exist_ok=True)
    with open(HAM_META, newline="") as f:
        reader = csv.DictReader(f)
        columns = list(reader.fieldnames)
        rows = [r for _, r in zip(range(n), reader)]
    for r in rows:
        shutil.copy(HAM_META.parent / "images" / f"{r['image_id']}.jpg", root / "images" / f"{r['image_id']}.jpg")
    return write_csv(root / "HAM10000_metadata.csv", columns, rows)


def challenge_one_hot(root: Path) -> Path:
    """ISIC 2019 ground truth: ``image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK``, images beside it."""
    root.mkdir(parents=True, exist_ok=True)
    classes = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"]
    truth = ["MEL", "NV", "NV", "MEL", "BCC", "NV"]
    rows = []
    for i, c in enumerate(truth):
        name = f"ISIC_77{i:05d}"
        lesion_image(200 + i).save(root / f"{name}.jpg", quality=92)
        rows.append({"image": name, **{k: "1.0" if k == c else "0.0" for k in classes}})
    return write_csv(root / "ISIC_2019_Training_GroundTruth.csv", ["image"] + classes, rows)


def sample_rgb(n: int) -> list[tuple[str, np.ndarray, bytes]]:
    """(id, RGB array, JPEG bytes) of the first ``n`` bundled sample images."""
    out = []
    for path in sorted((SAMPLE / "images").glob("*.jpg"))[:n]:
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB").resize((96, 72)))
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
        out.append((path.stem, rgb, buf.getvalue()))
    return out


def write_dicom(path: Path, rgb: np.ndarray | None = None, jpeg: bytes | None = None, patient: str = "P1",
                sex: str = "F", age: str = "045Y", site: str = "TORSO", rows: int | None = None,
                cols: int | None = None, sop: str = "1.2.840.10008.5.1.4.1.1.77.1.4", pixel: bool = True) -> Path:
    """A DICOM Part 10 file made with pydicom: VL photographic (dermoscopy) by default, native RGB
    (``rgb``) or baseline-JPEG encapsulated (``jpeg``, as the SIIM-ISIC 2020 files); ``rows`` and
    ``cols`` override the header's size (to make a lying header); ``pixel=False`` writes none."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = JPEGBaseline8Bit if jpeg is not None else ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop, meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.PatientSex, ds.PatientAge, ds.BodyPartExamined = patient, sex, age, site
    ds.Modality, ds.StudyInstanceUID = "XC", generate_uid()
    if pixel:
        if rows and cols:
            h, w = rows, cols
        else:
            h, w = rgb.shape[:2] if rgb is not None else Image.open(io.BytesIO(jpeg)).size[::-1]
        ds.Rows, ds.Columns = h, w
        ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 3, 8, 8, 7
        ds.PixelRepresentation, ds.PlanarConfiguration = 0, 0
        if jpeg is not None:
            ds.PhotometricInterpretation = "YBR_FULL_422"
            ds.PixelData = encapsulate([jpeg])
            ds["PixelData"].VR = "OB"
        else:
            ds.PhotometricInterpretation = "RGB"
            ds.PixelData = rgb.astype(np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def dicom_folder(root: Path) -> Path:
    """Six DICOM files from the bundled sample (three native RGB, three JPEG), two per patient."""
    root.mkdir(parents=True, exist_ok=True)
    for i, (name, rgb, jpeg) in enumerate(sample_rgb(6)):
        write_dicom(root / f"{name}.dcm", rgb=None if i % 2 else rgb, jpeg=jpeg if i % 2 else None,
                    patient=f"DP{i // 2}", sex="F" if i % 2 else "M", age=f"0{40 + i}Y",
                    site=("TORSO", "ARM", "HEAD")[i // 2])
    return root
