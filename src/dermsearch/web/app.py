"""The web app and REST API, on the same :class:`Searcher` as the CLI.

Security (docs/web.md, docs/deploy.md): every request passes :class:`RequestGuard` (client address
from a trusted proxy only, Host allow-list, same-origin state changes, body limits before reading,
security headers on every response) and then :class:`Gate` (authentication, on unless the server
runs with ``auth="off"``, and admission: rate and queue limits from the headers, before the body).
Images are served only by indexed id (the path comes from the index, never from the request, and
no response carries a server path); uploads must be JPEG, PNG, TIFF, BMP or WebP within a pixel
limit; searches run in a bounded thread pool, never on the event loop; errors are JSON 4xx with a
one-line reason, and no stack trace ever reaches a client.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from ..errors import ConfigError, DermsearchError, NotFoundError
from ..extract import ImageError
from ..search import Searcher
from ..search.fast import FastModeMissing
from .auth import TokenStore
from .gate import Gate
from .live import LiveIndex, RateLimiter
from .ratings import RatingStore
from .routes import account, images, pages, ratings, search
from .security import RequestGuard, parse_networks
from .state import Server, WebConfig

__all__ = ["create_app", "WebConfig", "RateLimiter"]

log = logging.getLogger("dermsearch.web")
# the errors a client's request causes and can fix; every other DermsearchError is the server's
CLIENT_ERRORS = (ConfigError, NotFoundError, ImageError, FastModeMissing)


def create_app(index_dir: str | Path, config: WebConfig = WebConfig(), searcher: Searcher | None = None) -> FastAPI:
    """The app serving ``index_dir``. With authentication on (the default) a corrupt token file is a
    :class:`ConfigError` here, at start; no tokens at all is a locked server, never an open one."""
    index_dir = Path(index_dir)
    if config.auth not in ("on", "off"):
        raise ConfigError(f"auth must be on or off, not {config.auth!r}")
    try:
        proxies = parse_networks(config.trusted_proxies)
    except ValueError as e:
        raise ConfigError(f"trusted proxy: {e}") from None
    tokens = TokenStore.for_index(index_dir)
    if config.auth == "on":
        tokens.check()
    srv = Server(config, LiveIndex(searcher or Searcher(index_dir), config.max_upload_bytes),
                 RatingStore(index_dir / "ratings.sqlite"), tokens)
    app = FastAPI(title="dermsearch", version="1", description="Reverse image search for dermoscopic images. "
                  "Ten similarity measures over an index of diagnosed lesions.", docs_url=None, redoc_url=None)
    app.state.server = srv
    # added first, so it runs inside the guard: its refusals carry the security headers
    app.add_middleware(Gate, server=srv)
    # multipart overhead on top of the file itself; the guard refuses anything larger unread
    app.add_middleware(RequestGuard, allowed_hosts=config.allowed_hosts,
                       max_body_bytes=config.max_upload_bytes + 64 * 1024, trusted_proxies=proxies)
    for module in (account, search, images, ratings, pages):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=pages.STATIC), name="static")

    index_paths = re.compile("|".join(re.escape(str(p)) for p in {index_dir.resolve(), index_dir.absolute()})
                             + r"(?=$|[/\s'\"),;:])")

    @app.exception_handler(DermsearchError)
    async def dermsearch_error(request: Request, exc: DermsearchError):
        """A problem the client can fix (a value, an id, an upload, a mode the index lacks): 4xx with
        its one-line reason, the index's place replaced by ``<index>``. Any other (the server's
        files, cluster, extras): the reason goes to the server's log and the client gets a 503 that
        says nothing of the server (fail closed)."""
        if not isinstance(exc, CLIENT_ERRORS):
            log.error("%s %s: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
            return JSONResponse({"detail": "the server could not answer this request; its log says why"},
                                status_code=503)
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        detail = index_paths.sub("<index>", detail)
        if isinstance(exc, ImageError):
            return JSONResponse({"detail": f"not a usable image: {detail}"}, status_code=415)
        return JSONResponse({"detail": detail}, status_code=422)

    return app
