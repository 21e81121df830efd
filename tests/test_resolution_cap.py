"""The resolution cap (ExtractorConfig.max_side): a large image reaches the networks as a reduced copy
would, a small one is untouched; torch, ONNX Runtime, fingerprints, old manifests, the CLI flag."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from dermsearch.extract import Extractor, ExtractorConfig
from dermsearch.extract.images import cap_side
from dermsearch.runtime import Runtime

from .conftest import TINY, cli_index_settings, lesion_image

TINY_FULL = dataclasses.replace(TINY, weights="imagenet", image_size=64, fov=True, gram_pool="lesion", gram_margin=0.05)
TINY_CAP = dataclasses.replace(TINY_FULL, max_side=100)


@pytest.mark.parametrize(("size", "cap", "want"), [((600, 450), 200, (200, 150)), ((450, 600), 200, (150, 200)),
                                                   ((601, 451), 200, (200, 150)), ((300, 100), 200, (200, 67)),
                                                   ((200, 150), 200, (200, 150)), ((150, 90), 200, (150, 90)),
                                                   ((600, 450), 0, (600, 450)), ((5000, 3), 100, (100, 1))])
def test_cap_side_sizes(size, cap, want):
    img = Image.new("RGB", size, (120, 80, 60))
    out = cap_side(img, cap)
    assert out.size == want
    if want == size:
        assert out is img                 # untouched, not a copy


def test_cap_side_antialiases():
    """A one-pixel checkerboard reduced 4x averages to grey (a nearest-neighbour pick would keep 0/255)."""
    a = (np.indices((400, 400)).sum(0) % 2 * 255).astype(np.uint8)
    out = np.asarray(cap_side(Image.fromarray(a).convert("RGB"), 100), dtype=np.float64)
    assert out.shape == (100, 100, 3)
    assert abs(out.mean() - 127.5) < 3 and out.std() < 10


@pytest.fixture(scope="module")
def pair():
    return Extractor(TINY_CAP, Runtime(backend="torch")), Extractor(TINY_FULL, Runtime(backend="torch"))


def test_large_image_is_extracted_as_its_reduced_copy(pair):
    capped, full = pair
    big = [lesion_image(i, size=300) for i in range(3)]
    reduced = [img.resize((100, 100), Image.Resampling.BILINEAR) for img in big]
    a, b, c = capped.extract(big), full.extract(reduced), full.extract(big)
    assert np.array_equal(a.features, b.features)
    assert np.array_equal(a.styles, b.styles)
    assert np.array_equal(a.masks, b.masks)
    scale = float(np.abs(c.features).max())
    assert np.abs(a.features - c.features).max() > 1e-3 * scale     # the cap changed what the network saw


def test_small_image_is_untouched(pair):
    capped, full = pair
    small = [lesion_image(i, size=96) for i in range(3)]
    a, b = capped.extract(small), full.extract(small)
    assert np.array_equal(a.features, b.features) and np.array_equal(a.styles, b.styles)


def test_fingerprints_and_old_manifests(pair):
    capped, full = pair
    assert capped.fingerprint != full.fingerprint
    assert full.fingerprint == "a1aeee82a77d1edf"      # this config's fingerprint before the option existed (6820722)
    old = TINY_FULL.to_dict()
    del old["max_side"]                        # a manifest written before the option existed
    cfg = ExtractorConfig.from_dict(old)
    assert cfg.max_side == 0
    assert Extractor(cfg, Runtime(backend="torch")).fingerprint == full.fingerprint


def test_onnx_parity_with_the_cap(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("DERMSEARCH_CACHE", str(tmp_path))
    torch_ex = Extractor(TINY_CAP, Runtime(backend="torch"))
    onnx_ex = Extractor(TINY_CAP, Runtime(backend="onnx"))
    images = [lesion_image(i, size=300) for i in range(2)] + [lesion_image(5, size=80)]
    a, b = torch_ex.extract(images), onnx_ex.extract(images)
    assert np.abs(a.features - b.features).max() <= 1e-4 * max(1.0, float(np.abs(a.features).max()))
    assert np.abs(a.styles - b.styles).max() <= 1e-4 * max(1.0, float(np.abs(a.styles).max()))


def test_cached_encoder_applies_the_cap(tmp_path, monkeypatch, image_folder):
    """The encoder `dermsearch search` and the web app use (the index's cached ONNX export, no torch)
    reads the cap from the manifest: a large query gives the capped extractor's vectors."""
    pytest.importorskip("onnxruntime")
    from dermsearch.extract.encoder import cached_encoder
    from dermsearch.index import Index
    from dermsearch.index.build import build_index

    monkeypatch.setenv("DERMSEARCH_CACHE", str(tmp_path / "cache"))
    onnx_ex = Extractor(TINY_CAP, Runtime(backend="onnx"))
    build_index(image_folder, tmp_path / "ix", extractor=onnx_ex, runtime=Runtime(batch_size=4))
    manifest = Index.open(tmp_path / "ix").manifest
    assert manifest["extractor"]["max_side"] == 100
    encoder = cached_encoder(manifest, "cpu")
    assert encoder is not None
    big = [lesion_image(i, size=300).resize((300, 223)) for i in range(2)]
    a, b = onnx_ex.extract(big), encoder.extract(big)
    np.testing.assert_allclose(a.features, b.features, rtol=0, atol=1e-6)
    np.testing.assert_allclose(a.styles, b.styles, rtol=0, atol=1e-6)
    uncapped = Extractor(TINY_FULL, Runtime(backend="onnx")).extract(big)
    assert np.abs(uncapped.features - b.features).max() > 1e-3 * float(np.abs(b.features).max())


@pytest.mark.parametrize(("flags", "cap"), [([], 0), (["--max-side", "48"], 48)])
def test_cli_flag(tmp_path, image_folder, monkeypatch, flags, cap):
    assert cli_index_settings(tmp_path, image_folder, monkeypatch, *flags)["max_side"] == cap
