"""Image decoding and preprocessing: Pillow with the decompression-bomb guard on,
EXIF orientation applied, every mode converted to RGB.

Only the decoders of :data:`ALLOWED_FORMATS` are ever used (queries, uploads and indexing alike):
the file's leading bytes are checked against them before Pillow opens it, and Pillow is then told to
try no other plugin, so no format that shells out (EPS/PostScript via Ghostscript) or that nobody
photographs skin with can reach a decoder. Decoded images carry no metadata (JPEG comments, EXIF,
ICC, XMP are dropped), so nothing but pixels is passed on or served."""

from __future__ import annotations

import base64
import io
import os
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DermsearchError

__all__ = ["ImageError", "load_image", "resize_rgb", "thumbnail_data_uri", "sniff_format", "MAX_PIXELS",
           "ALLOWED_FORMATS"]

# Images above this many pixels are refused (Pillow's own guard raises at twice its limit;
# dermsearch refuses at the limit itself).
MAX_PIXELS = 89_478_485


# Pillow's format ids of the only decoders used, with the leading bytes that identify each.
ALLOWED_FORMATS = ("JPEG", "PNG", "TIFF", "BMP", "WEBP")
_MAGIC = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"),
          (b"BM", "BMP"))
# formats that are recognised only to name them in the refusal
_REFUSED = ((b"GIF8", "GIF"), (b"%!PS", "PostScript/EPS"), (b"\xc5\xd0\xd3\xc6", "PostScript/EPS"),
            (b"%PDF", "PDF"), (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"), (b"\xffO\xffQ", "JPEG 2000"),
            (b"8BPS", "Photoshop"), (b"\x00\x00\x01\x00", "ICO"))


class ImageError(DermsearchError, ValueError):
    """An input that cannot be used as an image; the message says why."""


def sniff_format(head: bytes) -> str:
    """The allowed format that ``head`` (a file's first 16 bytes or more) starts as; raises
    :class:`ImageError` for anything else, naming a known but refused format."""
    for magic, fmt in _MAGIC:
        if head.startswith(magic):
            return fmt
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    for magic, fmt in _REFUSED:
        if head.startswith(magic):
            raise ImageError(f"not an allowed image format ({fmt}); use JPEG, PNG, TIFF, BMP or WebP")
    raise ImageError("not a recognised image format (JPEG, PNG, TIFF, BMP or WebP)")


def load_image(source: str | os.PathLike | bytes | BinaryIO, max_pixels: int = MAX_PIXELS,
               dicom: bool = True) -> Image.Image:
    """Decode ``source`` (a path, bytes or a binary file object) to an RGB ``PIL.Image``.

    ``dicom``: whether a DICOM file is read (extract/dicom.py). The web app passes False: an upload
    is one of the allowed image formats and nothing else.

    Raises :class:`ImageError` with a one-line reason for anything that is not a usable image.
    """
    if isinstance(source, bytes):
        if not source:
            raise ImageError("empty data (0 bytes)")
        if source[128:132] == b"DICM" and dicom:     # DICOM (extract/dicom.py: the same limits)
            from .dicom import load_dicom

            return load_dicom(source, max_pixels)
        fp: BinaryIO | str = io.BytesIO(source)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise ImageError("file not found")
        if not path.is_file():
            raise ImageError("not a regular file")
        if path.stat().st_size == 0:
            raise ImageError("empty file (0 bytes)")
        from .dicom import is_dicom, load_dicom

        if dicom and is_dicom(path):            # DICOM (extract/dicom.py: the same limits)
            return load_dicom(path, max_pixels)
        fp = str(path)
    else:
        fp = source
    return _decode(fp, max_pixels)


def _decode(fp: BinaryIO | str, max_pixels: int) -> Image.Image:
    """An image file that is not DICOM (a path or a binary file object) decoded to RGB, or :class:`ImageError`."""
    try:
        fmt = sniff_format(_head(fp))       # before Pillow sees a byte
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fp, formats=[fmt]) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise ImageError(f"image too large ({w}x{h} pixels > {max_pixels})")
                if w < 1 or h < 1:
                    raise ImageError("image has no pixels")
                img.load()
                img = _to_rgb(ImageOps.exif_transpose(img))
                img.info.clear()            # comments, EXIF, ICC, XMP: pixels only from here on
                return img
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"refused as a decompression bomb ({e})") from None
    except UnidentifiedImageError:
        raise ImageError("not a recognised image format") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(f"corrupt or truncated image ({e})") from None


def _head(fp) -> bytes:
    if isinstance(fp, str):
        with open(fp, "rb") as f:
            return f.read(16)
    pos = fp.tell()
    head = fp.read(16)
    fp.seek(pos)
    return head


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img.copy()
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if a.max() > 255 else 255.0
        return Image.fromarray((np.clip(a / top, 0, 1) * 255).astype(np.uint8)).convert("RGB")
    if img.mode == "F":
        a = np.asarray(img, dtype=np.float64)
        lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
        a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
        return Image.fromarray((a * 255).astype(np.uint8)).convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def cap_side(img: Image.Image, max_side: int) -> Image.Image:
    """``img`` reduced so that its long side is ``max_side`` pixels (aspect kept, bilinear, which
    Pillow antialiases when it reduces), or ``img`` itself when it is no larger or ``max_side`` is 0."""
    w, h = img.size
    long = max(w, h)
    if not max_side or long <= max_side:
        return img
    size = (max(1, round(w * max_side / long)), max(1, round(h * max_side / long)))
    return img.resize(size, Image.Resampling.BILINEAR)


def resize_rgb(img: Image.Image, size: int) -> np.ndarray:
    """Resize to ``size`` x ``size`` (bilinear with antialiasing) and return HxWx3 uint8."""
    return np.asarray(img.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


def thumbnail_data_uri(source, size: int = 160) -> str:
    """A JPEG thumbnail as a data: URI (for self-contained HTML); "" when it cannot be read."""
    try:
        img = source.copy() if isinstance(source, Image.Image) else load_image(source)
    except ImageError:
        return ""
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
