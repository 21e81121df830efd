"""Image decoding: every kind of bad file gets a clear ImageError; odd modes become RGB."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from dermsearch.extract import ImageError, load_image

from .conftest import lesion_image


def _jpeg_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", **kw)
    return buf.getvalue()


@pytest.mark.parametrize("content, reason", [
    (b"", "0 bytes"),
    (b"\x00\x01garbage" * 100, "not a recognised image"),
    (b"<html><body>not an image</body></html>", "not a recognised image"),
])
def test_bad_bytes(tmp_path, content, reason):
    p = tmp_path / "bad.jpg"
    p.write_bytes(content)
    with pytest.raises(ImageError, match=reason):
        load_image(p)


def test_truncated_jpeg_and_png(tmp_path):
    img = lesion_image(0, 128)
    data = _jpeg_bytes(img)
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    (tmp_path / "t.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    for name in ("t.jpg", "t.png"):
        with pytest.raises(ImageError, match="corrupt or truncated"):
            load_image(tmp_path / name)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageError, match="not a regular file"):
        load_image(tmp_path)


def test_decompression_bomb_is_refused(tmp_path):
    p = tmp_path / "big.png"
    Image.new("L", (3000, 3000)).save(p)
    with pytest.raises(ImageError, match="too large"):
        load_image(p, max_pixels=1_000_000)


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "I;16", "1", "F"])
def test_modes_convert_to_rgb(tmp_path, mode):
    base = lesion_image(1, 32)
    grey = np.asarray(base.convert("L"))
    if mode == "I;16":
        img = Image.fromarray(grey.astype(np.uint16) * 257)
    elif mode == "F":
        img = Image.fromarray(grey.astype(np.float32))
    else:
        img = base.convert(mode)
    fmt, ext = ("TIFF", "tif") if mode in ("CMYK", "F", "I;16") else ("PNG", "png")
    p = tmp_path / f"m.{ext}"
    img.save(p, format=fmt)
    out = load_image(p)
    assert out.mode == "RGB" and out.size == (32, 32)
    if mode in ("L", "I;16"):  # grey levels survive the conversion
        g = np.asarray(out)[..., 0].astype(int)
        assert abs(g.mean() - np.asarray(base.convert("L")).mean()) < 2


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    p = tmp_path / "r.jpg"
    img.save(p, exif=exif.tobytes())
    assert load_image(p).size == (20, 40)


def test_bytes_and_file_objects():
    data = _jpeg_bytes(lesion_image(2, 50))
    assert load_image(data).size == (50, 50)
    assert load_image(io.BytesIO(data)).size == (50, 50)
