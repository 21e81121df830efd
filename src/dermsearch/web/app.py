"""The web app and REST API, on the same :class:`Searcher` as the CLI.

Security: images are served only by indexed id (the path comes from the index, never from the
request, and no response carries a server path); every request passes :class:`RequestGuard`
(Host allow-list, same-origin state changes, body limit before reading, security headers and a
CSP without inline script); uploads must decode as images within a pixel limit; searches run
in a bounded thread pool, never on the event loop, and a full queue answers 429; errors are JSON
4xx with a reason, and no stack trace ever reaches a client.
"""

from __future__ import annotations

import base64
import io
import logging
import random
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import anyio
import anyio.to_thread
from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response

from ..errors import ConfigError
from ..extract import ImageError, load_image
from ..search import MEASURES, Filters, Searcher
from ..search.explain import mask_png
from ..search.sheet import contact_sheet_html
from .auth import COOKIE, TokenStore
from .live import LiveIndex, RateLimiter
from .pages import INDEX_HTML, LOGIN_HTML, LOGIN_JS, RATE_HTML, RATE_JS, SEARCH_JS
from .ratings import RatingStore, strict_bool
from .security import RequestGuard

__all__ = ["create_app", "WebConfig"]

log = logging.getLogger("dermsearch.web")


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
    auth: str = "auto"                    # "on", "off", or "auto": on when the index has active API tokens
    rating_query_ids: frozenset[str] | None = None   # /rate draws its queries from these ids only (e.g. a split)
    rate_limit: int = 0                   # searches per minute per client (user with tokens, else address); 0: off


_HIDDEN_META = {"image_id", "image_path", "mask_path", "diagnosis", "lesion_id", "melanoma"}


def _hit_json(hit, meta: dict) -> dict:
    d = hit.to_json()
    d.pop("path", None)            # ids only: server paths never reach a client
    d["melanoma"] = hit.melanoma
    d["lesion_id"] = hit.lesion_id
    d["meta"] = {k: v for k, v in meta.items() if k not in _HIDDEN_META and v not in ("", None)}
    return d


def create_app(index_dir: str | Path, config: WebConfig = WebConfig(), searcher: Searcher | None = None) -> FastAPI:
    index_dir = Path(index_dir)
    if config.auth not in ("on", "off", "auto"):
        raise ConfigError(f"auth must be on, off or auto, not {config.auth!r}")
    srv = _Server(config, LiveIndex(searcher or Searcher(index_dir), config.max_upload_bytes),
                  RatingStore(index_dir / "ratings.sqlite"), TokenStore.for_index(index_dir))
    app = FastAPI(title="dermsearch", version="1", description="Reverse image search for dermoscopic images. "
                  "Ten similarity measures over an index of diagnosed lesions.", docs_url=None, redoc_url=None)
    # multipart overhead on top of the file itself; the guard refuses anything larger unread
    app.add_middleware(RequestGuard, allowed_hosts=config.allowed_hosts,
                       max_body_bytes=config.max_upload_bytes + 64 * 1024)
    _auth_routes(app, srv)
    _page_routes(app)
    _search_routes(app, srv)
    _image_routes(app, srv)
    _rating_routes(app, srv)
    return app


class _Server:
    """What the routes share: the settings, the index served, the ratings, the tokens, and the
    search admission state (a bounded pool, the queue count, per-client rate buckets, thumbnails)."""

    def __init__(self, config: WebConfig, live: LiveIndex, ratings: RatingStore, tokens: TokenStore):
        self.config, self.live, self.ratings, self.tokens = config, live, ratings, tokens
        self.limiter = anyio.CapacityLimiter(max(1, config.concurrency))
        self.pending = {"n": 0}
        self.buckets = RateLimiter(config.rate_limit)
        self.thumbs: OrderedDict[tuple[str, str, int], bytes] = OrderedDict()
        self.thumbs_lock = threading.Lock()

    def auth_on(self) -> bool:
        c = self.config
        return c.auth == "on" or (c.auth == "auto" and bool(self.tokens.active()))


def _auth_routes(app: FastAPI, srv: _Server) -> None:
    """Authentication (a middleware in front of every route) and sign-in."""
    tokens, auth_on = srv.tokens, srv.auth_on

    @app.middleware("http")
    async def authenticate(request: Request, call_next):
        t0 = time.perf_counter()
        path = request.url.path
        user = None
        if auth_on():
            header = request.headers.get("authorization", "")
            token = header[7:].strip() if header.lower().startswith("bearer ") else request.cookies.get(COOKIE)
            user = tokens.verify(token)
            public = path in _PUBLIC or path.startswith("/static/")
            if user is None and not public:
                response = JSONResponse({"detail": "authentication required: send 'Authorization: Bearer TOKEN' "
                                                   "or sign in at /login"}, status_code=401,
                                        headers={"WWW-Authenticate": "Bearer"})
                _access(request, None, response.status_code, t0)
                return response
            if path in _ADMIN and not (user and user.is_admin):
                response = JSONResponse({"detail": "only an admin token may export ratings and keys"}, 403)
                _access(request, user, response.status_code, t0)
                return response
        request.state.user = user
        response = await call_next(request)
        _access(request, user, response.status_code, t0)
        return response

    @app.post("/api/login", summary="Exchange an API token for a session cookie (browser pages)")
    async def login(request: Request) -> Response:
        try:
            token = str((await request.json())["token"])
        except Exception:  # noqa: BLE001
            raise HTTPException(422, "expected {token}") from None
        user = tokens.verify(token)
        if user is None:
            raise HTTPException(401, "unknown or revoked token")
        response = JSONResponse({"user": user.name, "role": user.role})
        https = request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=https, path="/")
        return response

    @app.post("/api/logout", summary="Forget the session cookie")
    def logout() -> Response:
        response = JSONResponse({"signed_out": True})
        response.delete_cookie(COOKIE, path="/")
        return response

    @app.get("/api/whoami", summary="Who this request is signed in as")
    def whoami(request: Request) -> dict:
        user = getattr(request.state, "user", None)
        return {"auth": auth_on(), "user": user.name if user else None, "role": user.role if user else None}

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_page() -> str:
        return LOGIN_HTML



def _page_routes(app: FastAPI) -> None:
    """The HTML pages, their scripts, the offline API docs, and the catch-all error handler."""
    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):  # no stack trace to clients
        log.exception("unhandled error on %s", request.url.path)
        return JSONResponse({"detail": "internal error"}, status_code=500)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return INDEX_HTML

    @app.get("/rate", response_class=HTMLResponse, include_in_schema=False)
    def rate_page() -> str:
        return RATE_HTML

    @app.get("/docs", include_in_schema=False)
    def swagger() -> HTMLResponse:               # Swagger UI from the installed package, never a CDN
        return get_swagger_ui_html(openapi_url="/openapi.json", title="dermsearch API",
                                   swagger_js_url="/static/docs/swagger-ui-bundle.js",
                                   swagger_css_url="/static/docs/swagger-ui.css",
                                   swagger_favicon_url="/static/docs/favicon.png")

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url="/openapi.json", title="dermsearch API",
                              redoc_js_url="/static/docs/redoc.standalone.js",
                              redoc_favicon_url="/static/docs/favicon.png", with_google_fonts=False)

    @app.get("/static/docs/{name}", include_in_schema=False)
    def docs_asset(name: str) -> Response:
        if name not in _DOC_ASSETS:
            raise HTTPException(404, "not found")
        return Response((_doc_assets_dir() / name).read_bytes(), media_type=_DOC_ASSETS[name],
                        headers={"Cache-Control": "max-age=86400"})

    @app.get("/static/{name}", include_in_schema=False)
    def script(name: str) -> Response:
        scripts = {"search.js": SEARCH_JS, "rate.js": RATE_JS, "login.js": LOGIN_JS}
        if name not in scripts:
            raise HTTPException(404, "not found")
        return Response(scripts[name], media_type="text/javascript", headers={"Cache-Control": "no-cache"})



def _search_routes(app: FastAPI, srv: _Server) -> None:
    """Index facts and search by upload (admitted by rate and queue limits, run off the event loop)."""
    config, live, limiter, pending, buckets = srv.config, srv.live, srv.limiter, srv.pending, srv.buckets

    @app.get("/api/index", summary="Facts about the index (the version served: every request uses the newest)")
    def index_facts() -> dict:
        with live.current() as st:
            return st.facts

    @app.post("/api/search", summary="Search with an uploaded image",
              responses={413: {"description": "upload too large"}, 429: {"description": "busy: retry later"}})
    async def search(request: Request, file: UploadFile = File(..., description="the query image"),
                     k: int = Form(5, description=f"results per measure, 1..{config.max_k}; 0: all, capped at "
                                                  f"{config.max_k}"),
                     measures: str = Form("", description="comma-separated; default all"),
                     diagnosis: str = Form(""), site: str = Form(""), sex: str = Form(""),
                     age_min: float | None = Form(None), age_max: float | None = Form(None),
                     query_mask: str = Form("none", description="none, or png: the query's mask as a PNG data URI"),
                     format: str = Form("json", description="json, or html: the contact sheet as a download"),
                     ):
        if not 0 <= k <= config.max_k:
            raise HTTPException(422, f"k must be between 0 and {config.max_k}")
        if query_mask not in ("none", "png"):
            raise HTTPException(422, "query_mask must be none or png")
        if format not in ("json", "html"):
            raise HTTPException(422, "format must be json or html")
        wanted = [m.strip() for m in measures.split(",") if m.strip()] or None
        if wanted:
            unknown = [m for m in wanted if m not in MEASURES]
            if unknown:
                raise HTTPException(422, f"unknown measure(s) {unknown}; valid: {', '.join(MEASURES)}")
        data = await file.read(config.max_upload_bytes + 1)
        if len(data) > config.max_upload_bytes:
            raise HTTPException(413, f"upload larger than {config.max_upload_bytes} bytes")
        equals = {}
        for col, value in (("diagnosis", diagnosis), (live.site_col, site), ("sex", sex)):
            vals = tuple(v.strip() for v in value.split(",") if v.strip())
            if vals:
                equals[col] = vals
        ranges = {live.age_col: (age_min, age_max)} if age_min is not None or age_max is not None else {}
        user = getattr(request.state, "user", None)
        wait = buckets.take(user.name if user else (request.client.host if request.client else "-"))
        if wait:
            raise HTTPException(429, f"more than {config.rate_limit} searches a minute from this client; retry "
                                     f"in {wait} s", headers={"Retry-After": str(wait)})
        if pending["n"] >= config.concurrency + config.queue:
            raise HTTPException(429, "too many searches in progress; retry shortly", headers={"Retry-After": "1"})
        pending["n"] += 1
        try:
            # decoding, extraction and ranking are CPU work: a bounded pool, never the event loop
            out = await anyio.to_thread.run_sync(
                _search_work, data, k, wanted, Filters(equals, ranges), query_mask == "png", format == "html",
                limiter=limiter)
            if format == "html":
                return HTMLResponse(out, headers={"Content-Disposition":
                                                  'attachment; filename="dermsearch-search.html"'})
            return out
        finally:
            pending["n"] -= 1

    def _search_work(data: bytes, k: int, wanted, filters: Filters, with_mask: bool, sheet: bool):
        try:
            image = load_image(data, max_pixels=config.max_pixels)
        except ImageError as e:
            raise HTTPException(415, f"not a usable image: {e}") from None
        with live.current() as st:
            return _search_in(st, image, k, wanted, filters, with_mask, sheet)

    def _search_in(st, image, k: int, wanted, filters: Filters, with_mask: bool, sheet: bool = False):
        searcher, meta = st.searcher, st.meta
        query = searcher.encode(image, label="upload")
        try:
            result = searcher.search(query, k=k if k else config.max_k, measures=wanted, filters=filters,
                                     explain=True)
        except ValueError as e:
            raise HTTPException(422, str(e)) from None
        if sheet:                # the contact sheet of this search, as the CLI's --html writes it
            overlays = {h.id: searcher.mask_overlay(query, h.id) for hits in result.results.values() for h in hits}
            return contact_sheet_html(result, image, overlays)
        out = result.to_json()
        out["k"] = k
        out["k_shown"] = k if k else config.max_k
        out["results"] = {m: [_hit_json(h, meta[searcher.row(h.id)]) for h in hits]
                          for m, hits in result.results.items()}
        overlays: dict[str, str | None] = {}
        for hits in out["results"].values():
            for h in hits:
                if "explain" in h and "mask" in h["explain"]:
                    if h["id"] not in overlays:
                        png = searcher.mask_overlay(query, h["id"])
                        overlays[h["id"]] = None if png is None else \
                            "data:image/png;base64," + base64.b64encode(png).decode()
                    h["explain"] = {**h["explain"], "overlap_png": overlays[h["id"]]}
        out["melanoma_in_top_k"] = {m: sum(1 for h in hits if h.melanoma == 1) for m, hits in result.results.items()}
        if with_mask and query.mask is not None:
            png = mask_png(query.mask, searcher.index.manifest["mask_size"], QUERY_MASK)
            out["query_mask_png"] = "data:image/png;base64," + base64.b64encode(png).decode()
        return out



def _image_routes(app: FastAPI, srv: _Server) -> None:
    """Indexed images and masks, by id only."""
    config, live, thumbs, thumbs_lock = srv.config, srv.live, srv.thumbs, srv.thumbs_lock

    @app.get("/api/images/{image_id:path}", summary="An indexed image (thumbnail or full), by id only",
             responses={200: {"content": {"image/jpeg": {}}}})
    def image(image_id: str, size: str = "thumb") -> Response:
        with live.current() as st:          # a removed image is gone at once
            return _image(st, image_id, size)

    def _image(st, image_id: str, size: str) -> Response:
        pos = _row(st, image_id)
        if size not in ("thumb", "full"):
            raise HTTPException(422, "size must be thumb or full")
        key = (image_id, size, st.version)
        with thumbs_lock:
            body = thumbs.get(key) if size == "thumb" else None
            if body is not None:
                thumbs.move_to_end(key)
        if body is None:
            try:
                img = load_image(st.snap.paths[pos])
            except ImageError as e:
                raise HTTPException(410, f"the indexed file can no longer be read: {e}") from None
            if size == "thumb":
                img.thumbnail((config.thumb_size, config.thumb_size))
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=88)
            body = buf.getvalue()
            if size == "thumb" and config.thumb_cache > 0:
                with thumbs_lock:
                    thumbs[key] = body
                    while len(thumbs) > config.thumb_cache:
                        thumbs.popitem(last=False)
        return Response(body, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.get("/api/masks/{image_id:path}", summary="The stored lesion mask of an indexed image (PNG overlay)",
             responses={200: {"content": {"image/png": {}}}})
    def mask(image_id: str) -> Response:
        with live.current() as st:
            pos = _row(st, image_id)
            if st.snap.masks is None:
                raise HTTPException(404, "this index stores no masks")
            png = mask_png(st.snap.masks[pos], st.searcher.index.manifest["mask_size"], MATCH_MASK)
        return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=3600"})



def _rating_routes(app: FastAPI, srv: _Server) -> None:
    """Blinded rating sessions, judgements, and their export (admin only)."""
    config, live, ratings = srv.config, srv.live, srv.ratings

    @app.post("/api/ratings/session", summary="A blinded rating task: a random indexed query and its pooled top-k")
    def rating_session(request: Request, seed: int | None = None) -> dict:
        with live.current() as st:
            return _rating_session(st, request, seed)

    def _rating_session(st, request: Request, seed: int | None) -> dict:
        snap, searcher = st.snap, st.searcher
        rng = random.Random(seed)
        pool = [str(i) for i in snap.ids if config.rating_query_ids is None or str(i) in config.rating_query_ids]
        if not pool:
            raise HTTPException(409, "no indexed image is in the rating query set")
        qid = pool[rng.randrange(len(pool))]
        same = [str(i) for i, les in zip(snap.ids, snap.lesion_id) if les and les == snap.lesion_id[_row(st, qid)]]
        result = searcher.search(searcher.query_for_id(qid), k=config.rating_k, exclude_ids=[qid, *same])
        pooled: dict[str, list[tuple[str, int]]] = {}
        for m, hits in result.results.items():
            for h in hits:
                pooled.setdefault(h.id, []).append((m, h.rank))
        cands = list(pooled)
        rng.shuffle(cands)
        session = f"s{int(time.time() * 1000)}{rng.randrange(1000):03d}"
        rows, items = [], []
        for j, cid in enumerate(cands, start=1):
            item = f"{j:02d}"
            rows += [(qid, item, cid, m, r) for m, r in pooled[cid]]
            items.append({"item": item, "image": f"/api/images/{quote(cid, safe='')}"})
        user = getattr(request.state, "user", None)
        ratings.add_session(session, rows, user.name if user else None)
        return {"session": session, "query_id": qid, "query_image": f"/api/images/{quote(qid, safe='')}",
                "items": items}

    @app.post("/api/ratings", summary="Store a person's judgements for a rating session")
    async def rate(request: Request) -> dict:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":   # a form or text/plain post from another site cannot be JSON
            raise HTTPException(415, "ratings must be posted as application/json")
        try:
            body = await request.json()
            session, qid = str(body["session"]), str(body["query_id"])
            marks = [(qid, str(r["item"]), int(strict_bool(r["similar"]))) for r in body["ratings"]]
            rater = str(body.get("rater", ""))[:100]
        except Exception:  # noqa: BLE001
            raise HTTPException(422, "expected {session, query_id, ratings: [{item, similar}], rater?}") from None
        user = getattr(request.state, "user", None)
        if user is not None:
            rater = user.name                       # with authentication the rater is the token's user
        try:
            n = ratings.rate(session, marks, rater, user.name if user else None)
        except KeyError as e:
            raise HTTPException(422, str(e.args[0])) from None
        except PermissionError as e:
            raise HTTPException(403, str(e)) from None
        return {"stored": n}

    @app.get("/api/ratings.csv", summary="All ratings (for dermsearch evaluate --ratings)")
    def ratings_csv() -> Response:
        return Response(ratings.export("ratings"), media_type="text/csv")

    @app.get("/api/ratings-key.csv", summary="Which measure retrieved each rated item (--rating-key)")
    def ratings_key() -> Response:
        return Response(ratings.export("key"), media_type="text/csv")



def _row(st, image_id: str) -> int:
    pos = st.searcher.row(image_id)
    if pos is None:
        raise HTTPException(404, "no such image in the index")
    return pos



QUERY_MASK = (217, 45, 32, 120)     # the query's mask overlay: red
MATCH_MASK = (0, 255, 255, 140)     # an indexed image's: cyan
_DOC_ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css",
               "redoc.standalone.js": "text/javascript", "favicon.png": "image/png"}


def _doc_assets_dir() -> Path:
    import fastapi_offline

    return Path(fastapi_offline.__file__).parent / "static"


_PUBLIC = {"/", "/rate", "/login", "/api/login", "/api/logout", "/api/whoami", "/favicon.ico"}
_ADMIN = {"/api/ratings.csv", "/api/ratings-key.csv"}
access_log = logging.getLogger("dermsearch.web.access")


def _access(request: Request, user, status: int, t0: float) -> None:
    client = request.client.host if request.client else "-"
    access_log.info("%s %s %s %s %d %.1fms", client, user.name if user else "-", request.method, request.url.path,
                    status, 1e3 * (time.perf_counter() - t0))


