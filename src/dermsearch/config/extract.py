"""The typed description of an extraction model (what determines the stored vectors). It imports
no network library: the CLI, the index and the cached encoder read it without loading torch."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Literal

from ..errors import ConfigError
from ..names import BACKBONE_INITS, COLOUR_METHODS, FEATURES, GRAM_NORMS, GRAM_POOLS, TTA_COUNTS
from .fields import check_fields, choice, setting

__all__ = ["ExtractorConfig", "PAPER_STYLE", "PREPROCESS_VERSION", "LEARNED_GRAM_WEIGHTS"]

# Bump when decoding/resizing/normalisation changes in a way that alters extracted values (it is
# part of the model fingerprint, and recorded in ONNX exports).
PREPROCESS_VERSION = 1


# The layer weights fitted on HAM10000 val for the packaged model (``dermsearch fit-gram-weights``).
LEARNED_GRAM_WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "gram-weights.json"

# The paper's style measure: whole-image Grams, no normalisation, β_l = 1/C_l.
PAPER_STYLE = {"gram_pool": "image", "gram_margin": 0.0, "gram_norm": "none", "gram_weights": "inverse-channels"}


@dataclass(frozen=True)
class ExtractorConfig:
    """Everything that determines the stored vectors. Saved in every index's manifest.

    The default is the packaged trained ensemble (``weights="default"``: 5 EfficientNet-Lite0
    members, 1024-d Dense feature; see ``dermsearch/weights/MODEL_CARD.md``). ``feature="pooled"``
    with ``weights="imagenet"`` is the untrained single-backbone baseline. Use :meth:`for_weights`
    to describe a trained ensemble file: its architecture is read from the file.
    """

    backbone: str = setting("efficientnet-lite0", "a registered backbone ('dermsearch backbones' lists them)",
                            metavar="NAME")
    weights: str = setting("default", "default (the packaged trained ensemble), imagenet (untrained Lite, pooled "
                           "feature), random, or a trained ensemble .safetensors (its architecture is read from the "
                           "file)")
    members: int = setting(5, "backbones of the ensemble (the pooled feature: 1)", min=1)
    feature: Literal[*FEATURES] = choice(FEATURES, "ensemble", "ensemble (Dense+SELU over the members) or pooled "
                                         "(one backbone's pooled vector)")
    feature_dim: int = setting(1024, "length of the ensemble's feature vector", min=1)
    image_size: int = setting(224, "side of the network's input in pixels", min=1)
    normalization: str = setting("auto", "input normalisation: auto (tf for Lite, imagenet for B0-B7), tf or imagenet")
    # Style (docs/style.md). The defaults were chosen on HAM10000 val for the packaged model; the
    # paper's definition is gram_pool="image", gram_margin=0, gram_norm="none", "inverse-channels"
    # (PAPER_STYLE; what models other than the packaged one get from for_weights()).
    gram_weights: str = setting("learned", "style layer weights: inverse-channels (the paper's), ones, learned "
                                "(fitted on HAM10000 val for the packaged model), or a .json from fit-gram-weights",
                                metavar="W")
    gram_pool: Literal[*GRAM_POOLS] = choice(GRAM_POOLS, "lesion", "Gram statistics over the whole image (paper), "
                                             "over the dilated lesion mask, or lesion then surrounding skin")
    gram_margin: float = setting(0.05, "dilate the lesion mask by this fraction of the image side before pooling "
                                 "(gram pooling lesion*)", min=0.0, max=0.5, metavar="F")
    gram_norm: Literal[*GRAM_NORMS] = choice(GRAM_NORMS, "l2", "normalise each Gram before weighting: none (paper), "
                                             "l2 (Frobenius), sqrt (signed square root), sqrt+l2")
    fov: bool = setting(True, "pool the features and the Grams over the dermatoscope's field of view, not the dark "
                        "vignette around it (extract/fov.py); an image without a vignette is pooled as without it")
    max_side: int = setting(0, "reduce an image whose long side exceeds this many pixels to it (aspect kept, "
                            "antialiased) before anything else, e.g. to the size of the images the model was "
                            "trained on; 0: never, the default: issue #40 measured no gain on isic-uda1",
                            min=0, metavar="PX")
    style: bool = setting(True, "store style vectors (the Grams)")
    masks: bool = setting(True, "store lesion masks")
    mask_size: int = setting(128, "stored mask side in pixels (a multiple of 8)", min=1, multiple_of=8)
    segmenter: str = setting("default", "masks from: default (packaged U-Net), otsu, or a .safetensors",
                             metavar="S")
    seed: int = setting(0, "seed of a random initialisation (weights random only)")
    colour: Literal["auto", *COLOUR_METHODS] = choice(
        COLOUR_METHODS, "auto", "colour constancy on the network's input; auto: what the weights were trained with "
        "(the packaged ensemble: shades-of-gray; ImageNet/random backbones: none), see resolved()", also=("auto",))
    tta: Literal[0, *TTA_COUNTS] = choice(
        TTA_COUNTS, 0, "the feature: members' pooled vectors averaged over 1, 2 or 4 flips/turns; 0: the views the "
        "ensemble's head was fitted on (1 for other models)", also=(0,))

    def __post_init__(self) -> None:
        check_fields(self)
        if self.feature == "pooled" and self.members != 1:
            raise ConfigError("the pooled feature uses exactly one backbone (members=1)")
        if self.weights == "default" and self.feature != "ensemble":
            raise ConfigError("weights='default' is the packaged ensemble: it needs feature='ensemble'")
        if self.style and self.gram_pool != "image" and not self.masks:
            raise ConfigError(f"gram pooling {self.gram_pool!r} pools over the lesion mask: it needs masks")
        if self.tta > 1 and self.feature != "ensemble":
            raise ConfigError("test-time views (tta > 1) need feature='ensemble'")
        if self.segmenter not in ("default", "otsu") and not self.segmenter.endswith(".safetensors"):
            raise ConfigError(f"unknown segmenter {self.segmenter!r}; valid: default, otsu, or a .safetensors file")

    @classmethod
    def for_weights(cls, weights: str = "default", **overrides) -> ExtractorConfig:
        """The config for ``weights``: a trained ensemble's architecture comes from its file;
        ``imagenet``/``random`` give the single pooled backbone unless ``overrides`` say otherwise."""
        if weights in BACKBONE_INITS:
            # the ImageNet/random backbone was never trained on colour-corrected images: the paper's input
            base = {"weights": weights, "feature": "pooled", "members": 1, "colour": "none", **PAPER_STYLE,
                    "fov": False}   # the paper's whole-frame pooling (--fov turns field-of-view pooling on)
            if overrides.get("feature") == "ensemble":
                base.pop("members")
                base.pop("feature")
            return cls(**{**base, **overrides})
        from ..models.ensemble import default_ensemble_path, read_ensemble_spec
        from ..models.normalization import backbone_normalization

        spec = read_ensemble_spec(default_ensemble_path() if weights == "default" else weights)
        d = spec.description()
        base = {"weights": weights, "feature": "ensemble", "backbone": d.backbone, "members": d.members,
                "feature_dim": d.feature_dim, "image_size": d.image_size,
                "colour": d.colour,                 # the network sees what it was trained on
                "normalization": "auto" if d.normalization == backbone_normalization(d.backbone) else d.normalization}
        if weights != "default" and not _packaged_members(spec.members_fingerprint):
            base.update(PAPER_STYLE)      # the fitted layer weights belong to the packaged members
        return cls(**{**base, **overrides})

    def resolved(self) -> ExtractorConfig:
        """This config with ``colour="auto"`` made concrete (what an :class:`Extractor` and an
        index manifest hold): a trained ensemble's colour from its file, ``none`` for ImageNet or
        random backbones, which never saw corrected images."""
        if self.colour != "auto":
            return self
        if self.weights in BACKBONE_INITS:
            return replace(self, colour="none")
        from ..models.ensemble import default_ensemble_path, read_ensemble_spec

        path = default_ensemble_path() if self.weights == "default" else self.weights
        return replace(self, colour=read_ensemble_spec(path).description().colour)

    def description(self):
        """The ensemble this config describes (:class:`~dermsearch.models.description.EnsembleDescription`)."""
        from ..models.description import EnsembleDescription

        return EnsembleDescription.of(self.backbone, self.members, self.feature_dim, self.image_size,
                                      self.normalization, self.resolved().colour)

    @property
    def resolved_normalization(self) -> str:
        if self.normalization != "auto":
            return self.normalization
        from ..models.normalization import backbone_normalization

        return backbone_normalization(self.backbone)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ExtractorConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown extractor settings: {sorted(unknown)}")
        if "gram_pool" not in d:      # written before lesion-aware Grams existed: the paper's whole-image Grams
            d = {**d, "gram_pool": "image", "gram_margin": 0.0}
        if "gram_norm" not in d:
            d = {**d, "gram_norm": "none"}
        if "colour" not in d:     # written before colour constancy existed: uncorrected input
            d = {**d, "colour": "none"}
        if "fov" not in d:        # written before field-of-view pooling existed: the whole frame
            d = {**d, "fov": False}
        if "max_side" not in d:   # written before the resolution cap existed: images as they come
            d = {**d, "max_side": 0}
        return cls(**d)


def _packaged_members(fingerprint: str) -> bool:
    """Whether a file's members (their recorded fingerprint) are those the packaged style layer
    weights were fitted for: then the packaged style is its default too (e.g. a head retrained with
    ``--init-members default``). The extractor still checks the real members when it loads them."""
    if not fingerprint:
        return False
    doc = json.loads(LEARNED_GRAM_WEIGHTS.read_text())
    return doc.get("style_network") == fingerprint
