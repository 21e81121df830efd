"""Image decoding and preprocessing: Pillow with the decompression-bomb guard on,
EXIF orientation applied, every mode converted to RGB."""

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

__all__ = ["ImageError", "load_image", "resize_rgb", "thumbnail_data_uri", "MAX_PIXELS"]

# Images above this many pixels are refused (Pillow's own guard raises at twice its limit;
# dermsearch refuses at the limit itself).
MAX_PIXELS = 89_478_485


class ImageError(DermsearchError, ValueError):
    """An input that cannot be used as an image; the message says why."""


def load_image(source: str | os.PathLike | bytes | BinaryIO, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode ``source`` (a path, bytes or a binary file object) to an RGB ``PIL.Image``.

    Raises :class:`ImageError` with a one-line reason for anything that is not a usable image.
    """
    if isinstance(source, bytes):
        if not source:
            raise ImageError("empty data (0 bytes)")
        if source[128:132] == b"DICM":          # DICOM (extract/dicom.py: the same limits)
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

        if is_dicom(path):                      # DICOM (extract/dicom.py: the same limits)
            return load_dicom(path, max_pixels)
        fp = str(path)
    else:
        fp = source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fp) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise ImageError(f"image too large ({w}x{h} pixels > {max_pixels})")
                if w < 1 or h < 1:
                    raise ImageError("image has no pixels")
                img.load()
                img = ImageOps.exif_transpose(img)
                return _to_rgb(img)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"refused as a decompression bomb ({e})") from None
    except UnidentifiedImageError:
        raise ImageError("not a recognised image format") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(f"corrupt or truncated image ({e})") from None


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
