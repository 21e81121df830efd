"""dermsearch: reverse image search for dermoscopic images."""

__version__ = "0.1.0"
