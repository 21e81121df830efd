"""Field-of-view pooling in the extractor (ExtractorConfig.fov): torch, ONNX Runtime, fingerprints, CLI."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from dermsearch.extract import Extractor, ExtractorConfig
from dermsearch.extract.fov import field_of_view
from dermsearch.extract.images import resize_rgb
from dermsearch.models.pooling import field_weights, masked_mean
from dermsearch.runtime import Runtime

from .conftest import TINY, cli_index_settings, lesion_image

# ImageNet weights: a random tiny backbone's pooled vectors are ~1e-9, too small to tell poolings apart
TINY_FOV = dataclasses.replace(TINY, weights="imagenet", image_size=128, fov=True, gram_pool="lesion", gram_margin=0.05)
TINY_FRAME = dataclasses.replace(TINY_FOV, fov=False)


def with_vignette(img: Image.Image) -> Image.Image:
    """Black outside a centred disc of radius 0.45 x the side (a contact dermatoscope's field)."""
    a = np.asarray(img).copy()
    h, w = a.shape[:2]
    yy, xx = np.mgrid[:h, :w]
    a[(yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2 > (0.45 * h) ** 2] = 0
    return Image.fromarray(a)


@pytest.fixture(scope="module")
def torch_pair():
    return Extractor(TINY_FOV, Runtime(backend="torch")), Extractor(TINY_FRAME, Runtime(backend="torch"))


def test_no_vignette_gives_the_whole_frame_vectors(torch_pair):
    fov, frame = torch_pair
    images = [lesion_image(i) for i in range(3)]
    a, b = fov.extract(images), frame.extract(images)
    assert np.array_equal(a.features, b.features)
    assert np.array_equal(a.styles, b.styles)
    assert np.array_equal(a.masks, b.masks)


def test_vignette_is_pooled_over_the_field(torch_pair):
    fov, frame = torch_pair
    img = with_vignette(lesion_image(7))
    a, b = fov.extract([img]), frame.extract([img])
    scale = float(np.abs(b.features).max())
    assert scale > 0.1
    assert np.abs(a.features - b.features).max() > 0.01 * scale   # the black corners no longer count
    # the pooled feature is the head map's average over the field's cell weights, computed by hand
    raw = resize_rgb(img, TINY_FOV.image_size)
    field = torch.from_numpy(field_of_view(raw)[None, None].astype(np.float32))
    assert 0.4 < float(field.mean()) < 0.9
    backbone = fov.net.members[0]
    x = fov._normalised(raw[None].copy())
    with torch.inference_mode():
        h, taps = backbone.forward_prefix(x, len(backbone.stages))
        head = backbone.head(h)
        by_hand = masked_mean(head, field_weights(field, tuple(head.shape[-2:])))
    assert np.allclose(a.features, by_hand.numpy(), atol=1e-5 * scale)
    assert not np.allclose(b.features, by_hand.numpy(), atol=1e-3 * scale)


def test_fingerprints_and_old_manifests():
    fov = Extractor(TINY_FOV, Runtime(backend="torch"))
    frame = Extractor(TINY_FRAME, Runtime(backend="torch"))
    assert fov.fingerprint != frame.fingerprint
    old = TINY_FRAME.to_dict()
    del old["fov"]                                    # a manifest written before the option existed
    cfg = ExtractorConfig.from_dict(old)
    assert cfg.fov is False
    assert Extractor(cfg, Runtime(backend="torch")).fingerprint == frame.fingerprint
    assert ExtractorConfig().fov is True              # the default: field-of-view pooling (issue #40's rule)
    assert ExtractorConfig.for_weights("imagenet").fov is False   # the paper's definition pools the frame


def test_onnx_parity_with_fields(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("DERMSEARCH_CACHE", str(tmp_path))
    torch_ex = Extractor(TINY_FOV, Runtime(backend="torch"))
    onnx_ex = Extractor(TINY_FOV, Runtime(backend="onnx"))
    images = [with_vignette(lesion_image(i)) for i in range(3)] + [lesion_image(9)]
    a, b = torch_ex.extract(images), onnx_ex.extract(images)
    assert onnx_ex.ort.info["fields_input"] is True
    assert np.abs(a.features - b.features).max() <= 1e-4 * max(1.0, float(np.abs(a.features).max()))
    assert np.abs(a.styles - b.styles).max() <= 1e-4 * max(1.0, float(np.abs(a.styles).max()))
    with pytest.raises(Exception, match="field of view"):
        onnx_ex.ort.features(np.zeros((1, 64, 64, 3), np.uint8), np.ones((1, 1, 64, 64), np.float32))


@pytest.mark.parametrize(("flags", "fov"), [([], False), (["--fov"], True), (["--fov", "--no-fov"], False)])
def test_cli_fov_flags(tmp_path, image_folder, monkeypatch, flags, fov):
    """--weights imagenet pools the whole frame (the paper's baseline) unless --fov asks otherwise."""
    assert cli_index_settings(tmp_path, image_folder, monkeypatch, *flags)["fov"] is fov


def test_fov_does_not_depend_on_masks(tmp_path):
    from dermsearch.index.build import model_settings

    assert model_settings(tmp_path / "new", {"masks": False})[0].fov is True    # no masks: paper Grams, fov kept
    assert model_settings(tmp_path / "new2", {})[0].fov is True
    assert model_settings(tmp_path / "new3", {"fov": False})[0].fov is False


def test_a_mixed_batch_is_one_clear_error(torch_pair):
    from dermsearch.errors import ConfigError

    fov, _ = torch_pair
    prepared = [fov.prepare(lesion_image(i)) for i in range(2)]
    prepared[1] = prepared[1]._replace(field=None)
    with pytest.raises(ConfigError, match="some images of the batch"):
        fov.extract_prepared(prepared)
