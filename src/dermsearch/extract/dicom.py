"""DICOM images (pydicom, the ``dicom`` extra): the first frame as RGB, under the same limits as
every other image, and the header facts an archive keeps per image (patient, sex, age, body site).

Limits before any pixel is decoded: the header's rows x columns must be within ``max_pixels``
(a "DICOM bomb" claiming a huge frame over a few bytes is refused from its header); uncompressed
pixel data must be as long as the header says. JPEG and JPEG 2000 frames (the SIIM-ISIC 2020
challenge's DICOM files hold baseline JPEG) are decoded by :func:`~dermsearch.extract.images.load_image`
itself, so Pillow's decompression-bomb guard applies as to any JPEG, and the decoded size must
match the header. A DICOM file without pixel data (a structured report, a presentation state) is
refused with its SOP class named. A Deflated Explicit VR Little Endian file (the whole data set
zlib-compressed: pydicom inflates it at once, even for the header alone) is first inflated in
bounded steps, counting bytes and keeping none: one that grows past :data:`INFLATE_LIMIT` (a
"deflate bomb", a few MB that inflate to many GB) is refused before pydicom reads it.
"""

from __future__ import annotations

import io
import os
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from ..errors import require
from .images import MAX_PIXELS, ImageError

__all__ = ["DICOM_SUFFIXES", "dicom_header", "is_dicom", "load_dicom"]

DICOM_SUFFIXES = {".dcm", ".dicom"}
# transfer syntaxes whose frames Pillow decodes (baseline / extended JPEG, JPEG 2000)
_PILLOW_SYNTAXES = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.90",
                    "1.2.840.10008.1.2.4.91"}
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_DEFLATED = "1.2.840.10008.1.2.1.99"
# a deflated data set may inflate to one frame of 16-bit RGB at the pixel limit, plus 64 MiB of the rest
INFLATE_LIMIT = MAX_PIXELS * 3 * 2 + (64 << 20)


def is_dicom(source: str | os.PathLike | bytes) -> bool:
    """True for DICOM Part 10 data (the ``DICM`` marker after the 128-byte preamble), or a file
    named ``*.dcm`` / ``*.dicom``."""
    if isinstance(source, bytes):
        return source[128:132] == b"DICM"
    path = Path(source)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"


def _pydicom():
    return require("pydicom", "dicom", "reading DICOM files")


def _check_inflate(fp: BinaryIO, limit: int) -> None:
    """Refuse a deflated data set that inflates past ``limit`` bytes (``fp`` at the file's start,
    left there); any other file passes untouched (pydicom then judges it)."""
    from pydicom.filereader import _read_file_meta_info, read_preamble

    start = fp.tell()
    try:
        try:
            read_preamble(fp, False)
            syntax = str(_read_file_meta_info(fp).get("TransferSyntaxUID", ""))
        except Exception:  # noqa: BLE001 - not DICOM or a broken header: the full read says which
            return
        if syntax != _DEFLATED:
            return
        inflate, total = zlib.decompressobj(-zlib.MAX_WBITS), 0
        while (chunk := fp.read(1 << 20)) and not inflate.eof:
            while chunk:
                try:
                    total += len(inflate.decompress(chunk, 1 << 24))
                except zlib.error:
                    return                  # corrupt: pydicom's own read names it
                if total > limit:
                    raise ImageError(f"deflated DICOM data set inflates to more than {limit} bytes "
                                     "(a decompression bomb?)")
                chunk = inflate.unconsumed_tail
    finally:
        fp.seek(start)


def _read(source, header_only: bool):
    pydicom = _pydicom()
    fp = io.BytesIO(source) if isinstance(source, bytes) else source
    if isinstance(fp, (str, os.PathLike)):
        try:
            with open(fp, "rb") as f:
                _check_inflate(f, INFLATE_LIMIT)
        except OSError as e:
            raise ImageError(f"cannot read DICOM file ({e.strerror or e})") from None
    elif hasattr(fp, "seek"):
        _check_inflate(fp, INFLATE_LIMIT)
    try:
        return pydicom.dcmread(fp, stop_before_pixels=header_only, force=False)
    except pydicom.errors.InvalidDicomError:
        raise ImageError("not a DICOM file (no DICM marker)") from None
    except Exception as e:  # noqa: BLE001 - a broken header is one bad file, never a crash
        raise ImageError(f"corrupt DICOM file ({type(e).__name__}: {e})") from None


def _age(value: str) -> str:
    """A DICOM age string (``045Y``, ``018M``) in years, as text; "" when it is not one."""
    v = (value or "").strip().upper()
    if len(v) == 4 and v[:3].isdigit() and v[3] in "DWMY":
        n = int(v[:3])
        years = {"D": n / 365.25, "W": n * 7 / 365.25, "M": n / 12, "Y": n}[v[3]]
        return f"{years:g}" if v[3] == "Y" else f"{years:.1f}"
    return v


def dicom_header(source: str | os.PathLike | bytes) -> dict[str, str]:
    """The header facts stored as an image's metadata: ``patient_id``, ``sex``, ``age`` (years),
    ``body_site`` (BodyPartExamined, else the anatomic region), and the study/instance UIDs.
    Raises :class:`ImageError` for a file that is not DICOM."""
    ds = _read(source, header_only=True)
    region = ds.get("AnatomicRegionSequence")
    site = str(ds.get("BodyPartExamined", "") or "")
    if not site and region:
        site = str(region[0].get("CodeMeaning", "") or "")
    facts = {"patient_id": str(ds.get("PatientID", "") or ""), "sex": str(ds.get("PatientSex", "") or ""),
             "age": _age(str(ds.get("PatientAge", "") or "")), "body_site": site,
             "modality": str(ds.get("Modality", "") or ""),
             "study_instance_uid": str(ds.get("StudyInstanceUID", "") or ""),
             "sop_instance_uid": str(ds.get("SOPInstanceUID", "") or "")}
    return {k: v for k, v in facts.items() if v}


def _sop_name(ds) -> str:
    uid = ds.get("SOPClassUID")
    return getattr(uid, "name", None) or str(uid or "unknown")


def load_dicom(source: str | os.PathLike | bytes | BinaryIO, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """The first frame of a DICOM image as RGB. Raises :class:`ImageError` with a one-line reason."""
    ds = _read(source, header_only=False)
    if not any(k in ds for k in _PIXEL_KEYWORDS):
        raise ImageError(f"DICOM file holds no image (SOP class {_sop_name(ds)}, no pixel data)")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows < 1 or cols < 1:
        raise ImageError("DICOM image has no pixels (Rows or Columns is 0)")
    if rows * cols > max_pixels:
        raise ImageError(f"image too large ({cols}x{rows} pixels > {max_pixels})")
    samples, bits = int(ds.get("SamplesPerPixel", 1) or 1), int(ds.get("BitsAllocated", 8) or 8)
    if samples not in (1, 3):
        raise ImageError(f"DICOM image has {samples} samples per pixel (1, greyscale, or 3, colour, are read)")
    if bits not in (1, 8, 16, 32):
        raise ImageError(f"DICOM image has {bits} bits allocated per sample (1, 8, 16 or 32 are read)")
    if rows * cols * samples * max(1, bits // 8) > 4 * max_pixels:       # Pillow's largest (RGBA) image
        raise ImageError(f"image too large ({cols}x{rows} pixels of {samples}x{bits} bits: more than "
                         f"{4 * max_pixels} bytes decoded)")
    syntax = str(ds.file_meta.get("TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else ""
    try:
        if "PixelData" in ds and syntax in _PILLOW_SYNTAXES:
            return _pillow_frame(ds, rows, cols, max_pixels)
        return _native_frame(ds, rows, cols)
    except ImageError:
        raise
    except Exception as e:  # noqa: BLE001 - pydicom raises many kinds for bad pixel data
        raise ImageError(f"DICOM pixel data cannot be decoded ({type(e).__name__}: {e})") from None


def _pillow_frame(ds, rows: int, cols: int, max_pixels: int) -> Image.Image:
    from pydicom.encaps import generate_frames

    from .images import load_image

    frames = int(ds.get("NumberOfFrames", 1) or 1)
    frame = next(generate_frames(ds.PixelData, number_of_frames=frames), None)
    if not frame:
        raise ImageError("DICOM pixel data holds no frame")
    img = load_image(bytes(frame), max_pixels)
    if img.size != (cols, rows):
        raise ImageError(f"DICOM frame is {img.size[0]}x{img.size[1]} pixels, its header says {cols}x{rows}")
    return img


def _native_frame(ds, rows: int, cols: int) -> Image.Image:
    if "PixelData" in ds and not ds.file_meta.TransferSyntaxUID.is_encapsulated:
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        bits = int(ds.get("BitsAllocated", 8) or 8)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        need = rows * cols * samples * max(1, bits // 8) * frames
        if bits >= 8 and len(ds.PixelData) < need:
            raise ImageError(f"DICOM pixel data is {len(ds.PixelData)} bytes, its header needs {need}")
    ds.pixel_array_options(index=0)
    return _to_rgb(np.asarray(ds.pixel_array), ds)


def _to_rgb(a: np.ndarray, ds) -> Image.Image:
    """One frame's array (as pydicom gives it: RGB for colour, values for monochrome) as 8-bit RGB."""
    photometric = str(ds.get("PhotometricInterpretation", "") or "").upper()
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        a = apply_color_lut(a, ds)
    if a.ndim == 3 and a.shape[-1] == 3:
        if a.dtype != np.uint8:
            top = float(2 ** int(ds.get("BitsStored", 16) or 16) - 1)
            a = np.clip(a.astype(np.float32) / top * 255, 0, 255).astype(np.uint8)
        return Image.fromarray(a, "RGB")
    if a.ndim != 2:
        raise ImageError(f"DICOM frame of shape {a.shape} is neither greyscale nor RGB")
    a = a.astype(np.float32)                 # half float64's memory; exact for 16-bit values
    lo, hi = float(a.min()), float(a.max())
    a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    if photometric == "MONOCHROME1":
        a = 1.0 - a
    return Image.fromarray((a * 255).astype(np.uint8)).convert("RGB")
