"""Search: the ten measures (pure functions) and the :class:`Searcher` API."""

from .._lazy import lazy_exports
from ..names import MEASURES

_EXPORTS = {"Filters": ".searcher", "Hit": ".searcher", "Query": ".searcher", "Searcher": ".searcher",
            "SearchResult": ".searcher"}
__all__ = ["MEASURES", *_EXPORTS]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
