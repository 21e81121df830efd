"""The typed description of an extraction model (what determines the stored vectors). It imports
no network library: the CLI, the index and the cached encoder read it without loading torch."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from ..errors import ConfigError
from ..models.normalization import backbone_normalization
from ..names import BACKBONE_INITS, COLOUR_METHODS, GRAM_NORMS, GRAM_POOLS, TTA_COUNTS

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

    backbone: str = "efficientnet-lite0"
    weights: str = "default"      # "default" (packaged ensemble), "imagenet" (Lite), "random", or a .safetensors
    members: int = 5
    feature: str = "ensemble"     # "ensemble" (Dense+SELU over members) or "pooled" (one backbone's GAP vector)
    feature_dim: int = 1024       # ensemble only
    image_size: int = 224
    normalization: str = "auto"   # "auto": tf for Lite, imagenet for B0-B7
    # Style (docs/style.md). The defaults were chosen on HAM10000 val for the packaged model; the
    # paper's definition is gram_pool="image", gram_margin=0, gram_norm="none", "inverse-channels"
    # (PAPER_STYLE; what models other than the packaged one get from for_weights()).
    gram_weights: str = "learned"   # "inverse-channels", "ones", "learned" (packaged fit) or a .json file
    gram_pool: str = "lesion"     # "image" (paper), "lesion" (Grams over the dilated mask) or "lesion+skin"
    gram_margin: float = 0.05     # lesion-mask dilation, as a fraction of the image side
    gram_norm: str = "l2"         # each Gram entry-wise before β: "none" (paper), "l2", "sqrt", "sqrt+l2"
    style: bool = True
    masks: bool = True
    mask_size: int = 128
    segmenter: str = "default"    # "default" (packaged U-Net), "otsu" (classical), or a .safetensors path
    seed: int = 0                 # random initialisation only
    colour: str = "auto"          # colour constancy on the network's input: "none", "shades-of-gray", or
                                  # "auto": what the weights were trained with (the packaged ensemble:
                                  # shades-of-gray; ImageNet/random backbones: none); see resolved()
    tta: int = 0                  # feature: members' pooled vectors averaged over 1, 2 or 4 flips/turns;
                                  # 0 = the views the ensemble's head was fitted on (1 for other models)

    def __post_init__(self) -> None:
        self._check_network()
        self._check_style()
        self._check_inputs()

    def _check_network(self) -> None:
        if self.feature not in ("pooled", "ensemble"):
            raise ConfigError(f"feature must be 'pooled' or 'ensemble', not {self.feature!r}")
        if self.feature == "pooled" and self.members != 1:
            raise ConfigError("the pooled feature uses exactly one backbone (members=1)")
        if self.members < 1:
            raise ConfigError("members must be at least 1")
        if self.mask_size % 8:
            raise ConfigError("mask_size must be a multiple of 8")
        if self.weights == "default" and self.feature != "ensemble":
            raise ConfigError("weights='default' is the packaged ensemble: it needs feature='ensemble'")

    def _check_style(self) -> None:
        if self.gram_pool not in GRAM_POOLS:
            raise ConfigError(f"unknown gram pooling {self.gram_pool!r}; valid: {', '.join(GRAM_POOLS)}")
        if self.style and self.gram_pool != "image" and not self.masks:
            raise ConfigError(f"gram pooling {self.gram_pool!r} pools over the lesion mask: it needs masks")
        if self.gram_norm not in GRAM_NORMS:
            raise ConfigError(f"unknown gram normalisation {self.gram_norm!r}; valid: {', '.join(GRAM_NORMS)}")
        if not 0.0 <= self.gram_margin <= 0.5:
            raise ConfigError(f"gram_margin must be in [0, 0.5] (a fraction of the image side), not {self.gram_margin}")

    def _check_inputs(self) -> None:
        if self.tta not in (0, *TTA_COUNTS):
            raise ConfigError(f"tta must be 1, 2 or 4 test-time views (0: the model's own), not {self.tta}")
        if self.tta > 1 and self.feature != "ensemble":
            raise ConfigError("test-time views (tta > 1) need feature='ensemble'")
        if self.colour not in (*COLOUR_METHODS, "auto"):
            raise ConfigError(f"unknown colour method {self.colour!r}; valid: auto, {', '.join(COLOUR_METHODS)}")
        if self.segmenter not in ("default", "otsu") and not self.segmenter.endswith(".safetensors"):
            raise ConfigError(f"unknown segmenter {self.segmenter!r}; valid: default, otsu, or a .safetensors file")

    @classmethod
    def for_weights(cls, weights: str = "default", **overrides) -> ExtractorConfig:
        """The config for ``weights``: a trained ensemble's architecture comes from its file;
        ``imagenet``/``random`` give the single pooled backbone unless ``overrides`` say otherwise."""
        if weights in BACKBONE_INITS:
            # the ImageNet/random backbone was never trained on colour-corrected images: the paper's input
            base = {"weights": weights, "feature": "pooled", "members": 1, "colour": "none", **PAPER_STYLE}
            if overrides.get("feature") == "ensemble":
                base.pop("members")
                base.pop("feature")
            return cls(**{**base, **overrides})
        from ..models.ensemble import default_ensemble_path, read_ensemble_spec

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
        return cls(**d)


def _packaged_members(fingerprint: str) -> bool:
    """Whether a file's members (their recorded fingerprint) are those the packaged style layer
    weights were fitted for: then the packaged style is its default too (e.g. a head retrained with
    ``--init-members default``). The extractor still checks the real members when it loads them."""
    if not fingerprint:
        return False
    doc = json.loads(LEARNED_GRAM_WEIGHTS.read_text())
    return doc.get("style_network") == fingerprint
