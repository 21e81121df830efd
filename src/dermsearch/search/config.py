"""Settings of the search engines; defined in the config root (:mod:`dermsearch.config.search`).
Fields are added there."""

from ..config.search import FastConfig, SearchConfig

__all__ = ["FastConfig", "SearchConfig"]
