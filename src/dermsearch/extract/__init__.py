"""Extraction: decode images, run the networks, produce feature/style vectors and masks."""

from .extractor import Extracted, Extractor, ExtractorConfig
from .images import ImageError, load_image

__all__ = ["Extracted", "Extractor", "ExtractorConfig", "ImageError", "load_image"]
