"""The web app's settings (``dermsearch serve`` takes its flags' defaults from these fields)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..names import AUTH_MODES
from .fields import check_fields, choice, setting

__all__ = ["WebConfig"]


@dataclass(frozen=True)
class WebConfig:
    max_upload_bytes: int = setting(20 * 1024 * 1024, "largest upload in bytes", min=1)
    max_pixels: int = setting(25_000_000, "uploads above this many pixels are refused before decoding (Pillow's "
                              "guard: 179 M)", min=1)
    max_k: int = setting(50, "most results per measure; also caps k = 0 ('all') in the web API", min=1)
    thumb_size: int = setting(192, "thumbnail side in pixels", min=1)
    rating_k: int = setting(5, "results per measure on a rating page", min=1)
    allowed_hosts: tuple[str, ...] | None = setting(("localhost", "127.0.0.1", "::1"), "the names this server "
                                                    "answers to (Host header); None: any (only behind a proxy that "
                                                    "checks it)")
    concurrency: int = setting(2, "searches computed at once, off the event loop", min=1)
    queue: int = setting(8, "searches waiting beyond those; more get 429 + Retry-After", min=0)
    thumb_cache: int = setting(512, "encoded thumbnails kept in memory", min=0)
    auth: Literal[*AUTH_MODES] = choice(AUTH_MODES, "on", "on: every data path needs an API token or a sign-in "
                                        "session; off: anyone who reaches the port reads everything")
    rating_query_ids: frozenset[str] | None = setting(None, "/rate draws its queries from these ids only (e.g. a "
                                                      "split)")
    rate_limit: int = setting(120, "searches, rating sessions and rating posts per minute per client (the token's "
                              "user, else the address); 0: no limit", min=0, metavar="N")
    trusted_proxies: tuple[str, ...] = setting((), "addresses/networks whose X-Forwarded-For is believed")
    session_hours: float = setting(12.0, "a sign-in session's lifetime in hours", above=0.0)
    open_rating_sessions: int = setting(20, "unrated rating sessions kept per user; older ones are dropped", min=1)
    max_ratings_per_post: int = setting(200, "most ratings in one post", min=1)
    sign_in_failures: int = setting(5, "failed sign-ins per address (and per name) in 5 minutes before 429", min=1)

    def __post_init__(self) -> None:
        check_fields(self)
