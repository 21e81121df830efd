"""Input normalisation of the backbones: which one a backbone's weights expect, and its numbers.
Plain data (no numerical library), so configs, presets and the command line resolve it without
loading one."""

from __future__ import annotations

__all__ = ["NORMALISATIONS", "backbone_normalization"]

NORMALISATIONS = {
    # TensorFlow-converted Lite weights expect (x - 127) / 128 on 0..255 pixels.
    "tf": ((127.0, 127.0, 127.0), (128.0, 128.0, 128.0)),
    "imagenet": (tuple(v * 255 for v in (0.485, 0.456, 0.406)), tuple(v * 255 for v in (0.229, 0.224, 0.225))),
}


def backbone_normalization(backbone: str) -> str:
    """The normalisation a backbone's weights expect: ``tf`` for the EfficientNet-Lite family
    (weights converted from TensorFlow), ``imagenet`` for the others (the single place this is decided)."""
    return "tf" if backbone.startswith("efficientnet-lite") else "imagenet"
