"""The web app's settings, in a module that imports nothing heavy: ``dermsearch serve`` takes its
flags' defaults from here while building its parser, so each default is written once."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["WebConfig"]


@dataclass(frozen=True)
class WebConfig:
    max_upload_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 25_000_000          # uploads above this are refused before decoding (Pillow's guard: 179 M)
    max_k: int = 50                       # also caps k = 0 ("all") in the web API
    thumb_size: int = 192
    rating_k: int = 5
    # the names this server answers to (Host header); None: any (only behind a proxy that checks it)
    allowed_hosts: tuple[str, ...] | None = ("localhost", "127.0.0.1", "::1")
    concurrency: int = 2                  # searches computed at once, off the event loop
    queue: int = 8                        # searches waiting beyond those; more get 429 + Retry-After
    thumb_cache: int = 512                # encoded thumbnails kept in memory
    auth: str = "on"                      # "on": an API token or a sign-in session for every data path; "off"
    rating_query_ids: frozenset[str] | None = None   # /rate draws its queries from these ids only (e.g. a split)
    rate_limit: int = 120                 # searches, rating sessions and posts a minute per client; 0: off
    trusted_proxies: tuple[str, ...] = ()  # addresses/networks whose X-Forwarded-For is believed
    session_hours: float = 12.0           # a sign-in session's lifetime
    open_rating_sessions: int = 20        # unrated rating sessions kept per user; older ones are dropped
    max_ratings_per_post: int = 200
    sign_in_failures: int = 5             # failed sign-ins per address (and per name) in 5 minutes before 429
