"""The web app's settings; defined in the config root (:mod:`dermsearch.config.web`)."""

from ..config.web import WebConfig

__all__ = ["WebConfig"]
