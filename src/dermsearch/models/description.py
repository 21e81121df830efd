"""One description of a feature ensemble: what the extractor, the trainer and an ensemble file
must agree on. Plain data (no torch), so configs derive and compare it without loading a network.

:class:`~dermsearch.extract.config.ExtractorConfig` (what an index stores),
:class:`~dermsearch.train.config.ClassifierTrainConfig` (what a run trains) and
:class:`~dermsearch.models.ensemble.EnsembleSpec` (what a ``.safetensors`` file holds) each say
``.description()``; the file's description is the truth (``ExtractorConfig.for_weights`` reads it,
``Extractor`` refuses a config whose description differs, the trainer writes its own into the file).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .normalization import backbone_normalization

__all__ = ["EnsembleDescription"]


@dataclass(frozen=True)
class EnsembleDescription:
    backbone: str = "efficientnet-lite0"
    members: int = 5
    feature_dim: int = 1024
    image_size: int = 224
    normalization: str = "tf"        # resolved: "tf" or "imagenet", never "auto"
    colour: str = "none"             # colour constancy the members were trained with (and indexing applies)

    @classmethod
    def of(cls, backbone: str, members: int, feature_dim: int, image_size: int, normalization: str = "auto",
           colour: str = "none") -> EnsembleDescription:
        """The description with ``normalization="auto"`` resolved from the backbone."""
        return cls(backbone, members, feature_dim, image_size,
                   backbone_normalization(backbone) if normalization == "auto" else normalization, colour)

    def differences(self, other: EnsembleDescription) -> dict[str, tuple]:
        """{field: (self's value, other's value)} where the two disagree."""
        a, b = asdict(self), asdict(other)
        return {k: (a[k], b[k]) for k in a if a[k] != b[k]}
