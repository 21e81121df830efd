from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dermsearch.extract import ExtractorConfig
from dermsearch.extract.extractor import PAPER_STYLE
from dermsearch.runtime import Runtime

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
ISIC = SHARED / "isic-uda1"

# A tiny, fast model configuration for unit tests (real architecture, small input).
# The paper's style definition (the packaged default's fitted layer weights belong to the packaged model).
TINY = ExtractorConfig(weights="random", feature="pooled", members=1, image_size=64, mask_size=32, colour="none",
                      **PAPER_STYLE, fov=False)   # as ExtractorConfig.for_weights("random") makes it
TORCH = Runtime(backend="torch")   # tests that compare with torch, or would otherwise wait for an ONNX export


def lesion_image(seed: int, size: int = 96) -> Image.Image:
    """A synthetic 'lesion': a dark textured ellipse on skin-coloured, noisy background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.uniform(0.35, 0.65, 2) * size
    ry, rx = rng.uniform(0.12, 0.3, 2) * size
    inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    skin = np.array([225, 180, 160]) + rng.normal(0, 6, (size, size, 3))
    lesion = np.array(rng.uniform([60, 30, 20], [140, 90, 70])) + rng.normal(0, 15, (size, size, 3))
    img = np.where(inside[..., None], lesion, skin)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def labelled_archive(root: Path, rows: list[dict], folder: str = "images") -> Path:
    """Write a labelled archive under ``root``: one synthetic lesion image per row (``seed``,
    default its position) at ``folder/<file>`` (``file``, default ``<image_id>.png``) and a
    ``labels.csv`` with ``image_id``, ``image_path`` and the rows' other columns. Returns the CSV."""
    import csv

    (root / folder).mkdir(parents=True, exist_ok=True)
    columns = ["image_id", "image_path"] + [c for c in rows[0] if c not in ("image_id", "seed", "file")]
    out = []
    for i, row in enumerate(rows):
        path = f"{folder}/{row.get('file', row['image_id'] + '.png')}"
        lesion_image(row.get("seed", i)).save(root / path)
        out.append({**{k: v for k, v in row.items() if k not in ("seed", "file")}, "image_path": path})
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, columns)
        w.writeheader()
        w.writerows(out)
    return root / "labels.csv"


def indexed_archive(root: Path, rows: list[dict], extractor, folder: str = "images") -> Path:
    """:func:`labelled_archive`, indexed with ``extractor`` into ``root/ix``; returns the index directory."""
    from dermsearch.index.build import build_index

    build_index(labelled_archive(root, rows, folder), root / "ix", extractor=extractor)
    return root / "ix"


@pytest.fixture(scope="session")
def tiny_extractor():
    """One torch extractor of the tiny model for the whole session (building one costs seconds)."""
    from dermsearch.extract import Extractor

    return Extractor(TINY, TORCH)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(8):
        lesion_image(i).save(folder / f"img{i:02d}.png")
    return folder


def cli_index_settings(tmp_path: Path, image_folder: Path, monkeypatch, *flags: str) -> dict:
    """The extractor settings `dermsearch index` records for a small ImageNet-weights index built with
    ``flags`` (torch, Otsu masks, 64 px)."""
    import json

    from dermsearch.cli.main import main

    monkeypatch.setenv("DERMSEARCH_CACHE", str(tmp_path / "cache"))
    rc = main(["index", str(image_folder), "--index", str(tmp_path / "ix"), "--weights", "imagenet",
               "--image-size", "64", "--mask-size", "32", "--segmenter", "otsu", "--quiet", "--backend", "torch",
               *flags])
    assert rc == 0
    return json.loads((tmp_path / "ix" / "dermsearch.json").read_text())["extractor"]


def require_data(path: Path) -> Path:
    """``path`` under ../shared/data: the test is skipped where the data is absent, except in CI
    (``CI`` set), where a missing data set must fail the run, not thin it silently."""
    if not path.exists():
        message = f"real data not found at {path} (see ../shared/data/README.md)"
        if os.environ.get("CI"):
            pytest.fail(message + "; CI must have it")
        pytest.skip(message + "; skipping")
    return path


def require_isic() -> Path:
    require_data(ISIC / "labels.csv")
    return ISIC


@pytest.fixture(scope="session", autouse=True)
def _onnx_cache(tmp_path_factory):
    """ONNX exports made by the tests go to a temporary cache, never the user's ~/.cache."""
    import os

    old = os.environ.get("DERMSEARCH_CACHE")
    os.environ["DERMSEARCH_CACHE"] = str(tmp_path_factory.mktemp("dermsearch-cache"))
    yield
    if old is None:
        os.environ.pop("DERMSEARCH_CACHE", None)
    else:
        os.environ["DERMSEARCH_CACHE"] = old


CHROMIUM = "/usr/bin/chromium"


@contextmanager
def running_server(app, config=None):
    """Serve an ASGI app with uvicorn on a free loopback port in a thread; yields its base URL.
    ``config(app, host, port)``: the uvicorn.Config to use (default: uvicorn's, quiet)."""
    import socket
    import threading
    import time

    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = config(app, "127.0.0.1", port) if config else uvicorn.Config(app, host="127.0.0.1", port=port,
                                                                        log_level="warning")
    server = uvicorn.Server(cfg)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(5)


@pytest.fixture(scope="session")
def chromium():
    """Headless Debian chromium driven by Playwright (skipped where chromium is not installed)."""
    import os
    import shutil

    path = shutil.which("chromium") or CHROMIUM
    if not os.path.exists(path):
        pytest.skip("Debian chromium not installed (apt-get install chromium); skipping browser tests")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-quic"])
        yield b
        b.close()
