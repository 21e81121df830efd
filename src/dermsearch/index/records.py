"""What the reader yields and the writer stores about each image besides its vectors: a neutral
module that both sides import (sources -> Record -> store)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Record", "IndexSchema"]


@dataclass(frozen=True)
class Record:
    """Everything about one image except its vectors."""

    id: str
    path: str
    diagnosis: str | None = None
    melanoma: int | None = None
    lesion_id: str | None = None
    meta: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class IndexSchema:
    """What an index's table and manifest need to know about the model: its fingerprint, the
    vectors' sizes and the descriptive facts recorded in the manifest. The store takes this, not
    a model, so creating an index loads no network (:meth:`of` reads it from an extractor)."""

    fingerprint: str
    extractor: dict                 # the ExtractorConfig, as a dict
    feature_dim: int
    style_dim: int
    mask_bytes: int
    mask_size: int
    facts: dict = field(default_factory=dict)   # tap channels, Gram weights and layout, network fingerprints

    @classmethod
    def of(cls, extractor) -> IndexSchema:
        """The schema of an :class:`~dermsearch.extract.Extractor`'s vectors."""
        cfg = extractor.config
        norm = ("G = F F^T / (H*W), averaged over members" if cfg.gram_pool == "image"
                else "G = sum_p w_p f_p f_p^T / sum_p w_p, w_p = the fraction of tap cell p inside the lesion mask "
                     "(dilated by gram_margin; for skin, outside the mask), averaged over members")
        if cfg.fov:
            norm += ("; every weight (for image, w_p = 1) multiplied by the share of cell p inside the "
                     "dermatoscope's field of view")
        norm += {"none": "", "l2": "; then G / ||G||_F", "sqrt": "; then sign(G) |G|^0.5",
                 "sqrt+l2": "; then sign(G) |G|^0.5, then / ||.||_F"}[cfg.gram_norm]
        return cls(
            fingerprint=extractor.fingerprint, extractor=cfg.to_dict(), feature_dim=int(extractor.feature_dim),
            style_dim=int(extractor.style_dim), mask_bytes=int(extractor.mask_bytes),
            mask_size=int(cfg.mask_size) if extractor.mask_bytes else 0,
            facts={"tap_channels": list(extractor.tap_channels), "gram_betas": list(extractor.betas),
                   "gram_normalisation": norm, "style_layers": list(extractor.style_layout),
                   "network_fingerprint": getattr(extractor, "network_fingerprint", None),
                   "style_network_fingerprint": getattr(extractor, "style_fingerprint", None)})
