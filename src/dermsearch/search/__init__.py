"""Search: the ten measures (pure functions) and the :class:`Searcher` API."""

from .measures import MEASURES
from .searcher import Filters, Hit, Query, Searcher, SearchResult

__all__ = ["MEASURES", "Filters", "Hit", "Query", "SearchResult", "Searcher"]
