"""A generated corpus of awkward and broken inputs (image files and labels CSVs).

Each case: (kind, filename, bytes, expected), where expected is "ok" (a usable image: it must be
indexed) or the substring the rejection reason must contain.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def _png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _lesion(size=(96, 72), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    h, w = size[1], size[0]
    yy, xx = np.mgrid[:h, :w]
    inside = ((yy - h / 2) / (h / 4)) ** 2 + ((xx - w / 2) / (w / 4)) ** 2 <= 1
    img = np.where(inside[..., None], [110, 60, 45], [225, 180, 160]) + rng.normal(0, 6, (h, w, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _huge_png(side: int) -> bytes:
    """A valid PNG header declaring side x side pixels (a decompression bomb: tiny file)."""
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    row = b"\x00" + b"\x00" * side
    idat = zlib.compress(row * 64)  # far too little data; the header alone must be refused
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def image_cases() -> list[tuple[str, str, bytes, str]]:
    base = _lesion()
    jpeg = _save(base, "JPEG", quality=90)
    png = _png(base)
    exif = Image.Exif()
    exif[0x0112] = 6
    frames = [_lesion(seed=i) for i in range(3)]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    tiff = io.BytesIO()
    frames[0].save(tiff, format="TIFF", save_all=True, append_images=frames[1:])
    grey16 = Image.fromarray(np.asarray(base.convert("L"), np.uint16) * 257)
    bad_crc = bytearray(png)
    bad_crc[29] ^= 0xFF  # inside the IHDR CRC
    return [
        ("truncated JPEG", "trunc_jpeg.jpg", jpeg[: len(jpeg) // 3], "truncated"),
        ("truncated PNG", "trunc_png.png", png[: len(png) // 3], "truncated"),
        ("zero bytes", "zero.jpg", b"", "0 bytes"),
        ("random bytes named .jpg", "random.jpg", np.random.default_rng(1).bytes(4096), "not a recognised image"),
        ("HTML named .png", "page.png", b"<!doctype html><html><body>not an image</body></html>",
         "not a recognised image"),
        ("plain text named .jpg", "notes.jpg", b"patient notes\n" * 20, "not a recognised image"),
        ("SVG named .png", "vector.png", b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
         "not a recognised image"),
        ("JPEG header only", "header.jpg", jpeg[:20], "not a recognised image"),
        ("PNG with a corrupt CRC", "crc.png", bytes(bad_crc), "not a recognised image"),
        ("decompression bomb (PNG header 30000x30000)", "bomb.png", _huge_png(30000), "decompression bomb"),
        ("20000x20000 image", "huge.png", _huge_png(20000), "decompression bomb"),
        ("1x1 image", "tiny.png", _png(Image.new("RGB", (1, 1), (120, 80, 60))), "ok"),
        ("1x4000 sliver", "sliver.png", _png(Image.new("RGB", (1, 4000), (120, 80, 60))), "ok"),
        ("CMYK JPEG", "cmyk.jpg", _save(base.convert("CMYK"), "JPEG"), "ok"),
        ("16-bit greyscale PNG", "grey16.png", _png(grey16), "ok"),
        ("palette PNG", "palette.png", _png(base.convert("P")), "ok"),
        ("palette PNG with transparency", "palette_t.png", _png(base.convert("P"), transparency=0), "ok"),
        ("RGBA PNG", "rgba.png", _png(base.convert("RGBA")), "ok"),
        ("greyscale JPEG", "grey.jpg", _save(base.convert("L"), "JPEG"), "ok"),
        ("greyscale + alpha PNG", "la.png", _png(base.convert("LA")), "ok"),
        ("1-bit PNG", "bw.png", _png(base.convert("1")), "ok"),
        ("EXIF-rotated JPEG", "rotated.jpg", _save(base, "JPEG", exif=exif.tobytes()), "ok"),
        ("animated GIF", "anim.gif", gif.getvalue(), "not an allowed image format"),
        ("multi-page TIFF", "pages.tiff", tiff.getvalue(), "ok"),
        ("float TIFF", "float.tif", _save(Image.fromarray(np.asarray(base.convert("L"), np.float32)), "TIFF"), "ok"),
        ("BMP", "bitmap.bmp", _save(base, "BMP"), "ok"),
        ("WebP", "webp.webp", _save(base, "WEBP"), "ok"),
        ("progressive JPEG", "progressive.jpg", _save(base, "JPEG", progressive=True), "ok"),
        ("JPEG named .png", "wrongext.png", jpeg, "ok"),
        ("unicode file name", "läsion_ü_日本.jpg", jpeg, "ok"),
        ("GIF with transparency", "transparent.gif", _save(base.convert("P"), "GIF", transparency=0),
         "not an allowed image format"),
    ]


def csv_cases() -> list[tuple[str, str, str]]:
    """(kind, CSV text, expected): 'ok:N' (N rows indexed) or the error substring."""
    return [
        ("CSV with wrong columns", "id,file\na,b.jpg\n", "missing column"),
        ("empty CSV", "", "missing column"),
        ("CSV header only", "image_id,image_path\n", "ok:0"),
        ("CSV with a missing file", "image_id,image_path\nx,images/does_not_exist.jpg\n", "file not found"),
        ("CSV with duplicate ids", "image_id,image_path\nd,images/ok.jpg\nd,images/ok.jpg\n", "duplicate image_id"),
        ("CSV with a BOM and CRLF", "\ufeffimage_id,image_path\r\nbom,images/ok.jpg\r\n", "ok:1"),
        ("CSV with an empty id", "image_id,image_path\n,images/ok.jpg\n", "empty image_id"),
        ("CSV pointing at a system file", "image_id,image_path\nesc," + "../" * 40 + "etc/passwd\n",
         "not a recognised image"),
    ]
