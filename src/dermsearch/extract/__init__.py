"""Extraction: decode images, run the networks, produce feature/style vectors and masks."""

from .._lazy import lazy_exports

_EXPORTS = {"Vectors": ".vectors", "Extractor": ".extractor", "ExtractorConfig": ".config",
            "ImageError": ".images", "load_image": ".images"}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
