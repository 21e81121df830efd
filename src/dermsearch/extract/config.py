"""The extraction model's config; defined in the config root (:mod:`dermsearch.config.extract`)."""

from ..config.extract import LEARNED_GRAM_WEIGHTS, PAPER_STYLE, PREPROCESS_VERSION, ExtractorConfig

__all__ = ["ExtractorConfig", "PAPER_STYLE", "PREPROCESS_VERSION", "LEARNED_GRAM_WEIGHTS"]
