"""What the routes share, reached through FastAPI's ``Depends``: the settings, the index served, the
ratings, the tokens and sessions, and the admission state (a bounded pool, the queue count,
per-client rate buckets, failed sign-ins, thumbnails)."""

from __future__ import annotations

import io
import logging
import threading
from collections import OrderedDict

import anyio
from fastapi import HTTPException, Request, Response

from ..extract import ImageError, load_image
from .auth import FailureThrottle, SessionStore, TokenStore, User
from .config import WebConfig
from .live import LiveIndex, RateLimiter
from .ratings import RatingStore

__all__ = ["WebConfig", "Server", "server", "current_user", "row_of", "cached_image", "image_response",
           "unreadable"]

log = logging.getLogger("dermsearch.web")


class Server:
    def __init__(self, config: WebConfig, live: LiveIndex, ratings: RatingStore, tokens: TokenStore):
        self.config, self.live, self.ratings, self.tokens = config, live, ratings, tokens
        self.sessions = SessionStore(tokens, hours=config.session_hours)
        self.failures = FailureThrottle(limit=config.sign_in_failures)
        self.limiter = anyio.CapacityLimiter(max(1, config.concurrency))
        # images are decoded beside the searches, in a pool of their own: at most this many at once
        self.image_limiter = anyio.CapacityLimiter(max(2, 2 * config.concurrency))
        self.pending = {"n": 0}
        # one signed-in user holds at most half the pool and queue, so one token cannot starve the rest
        self.per_user = max(1, (config.concurrency + config.queue + 1) // 2)
        self.in_flight: dict[str, int] = {}
        self.buckets = RateLimiter(config.rate_limit)
        self.thumbs: OrderedDict[tuple[str, str, int], bytes] = OrderedDict()
        self.thumbs_lock = threading.Lock()


def server(request: Request) -> Server:
    return request.app.state.server


def current_user(request: Request) -> User | None:
    return getattr(request.state, "user", None)


def unreadable(image_id: str, e: Exception) -> HTTPException:
    """An indexed file that cannot be decoded any more: the reason (which may hold the file's path)
    goes to the server's log, the client gets a 410 without it."""
    log.warning("indexed image %s cannot be read: %s", ascii(image_id), ascii(str(e)))
    return HTTPException(410, "the indexed file can no longer be read (the server's log says why)")


def row_of(st, image_id: str) -> int:
    pos = st.searcher.row(image_id)
    if pos is None:
        raise HTTPException(404, "no such image in the index")
    return pos


def cached_image(srv: Server, st, image_id: str, size: str) -> Response | None:
    """What :func:`image_response` answers without decoding: the request's checks (unknown id 404,
    bad size 422) and a cached thumbnail; None when the image must be decoded."""
    row_of(st, image_id)
    if size not in ("thumb", "full"):
        raise HTTPException(422, "size must be thumb or full")
    if size != "thumb":
        return None
    key = (image_id, size, st.version)
    with srv.thumbs_lock:
        body = srv.thumbs.get(key)
        if body is None:
            return None
        srv.thumbs.move_to_end(key)
    return _jpeg(body)


def _jpeg(body: bytes) -> Response:
    return Response(body, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


def image_response(srv: Server, st, image_id: str, size: str) -> Response:
    """An indexed image as a fresh JPEG (pixels only: no comment, EXIF or ICC from the archive's file),
    thumbnails cached per index version; never cached by a shared proxy."""
    config = srv.config
    cached = cached_image(srv, st, image_id, size)
    if cached is not None:
        return cached
    pos = row_of(st, image_id)
    try:
        img = load_image(st.snap.paths[pos])
    except ImageError as e:
        raise unreadable(image_id, e) from None
    if size == "thumb":
        img.thumbnail((config.thumb_size, config.thumb_size))
    img.info.clear()
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=88)
    body = buf.getvalue()
    if size == "thumb" and config.thumb_cache > 0:
        with srv.thumbs_lock:
            srv.thumbs[(image_id, size, st.version)] = body
            while len(srv.thumbs) > config.thumb_cache:
                srv.thumbs.popitem(last=False)
    return _jpeg(body)
