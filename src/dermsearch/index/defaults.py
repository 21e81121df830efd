"""How an index build commits and distributes its work, by default; declared in the config root
(:class:`dermsearch.config.BuildConfig`)."""

from ..config.index import COMMIT_EVERY, DASK_CHUNK

__all__ = ["COMMIT_EVERY", "DASK_CHUNK"]
