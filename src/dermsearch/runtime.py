"""Where and how work runs, apart from what it computes; :class:`Runtime` is defined in the config
root (:mod:`dermsearch.config.runtime`)."""

from .config.runtime import Runtime

__all__ = ["Runtime"]
