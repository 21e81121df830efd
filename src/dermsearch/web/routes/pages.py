"""The HTML pages (files in ``web/static``, which also holds their scripts and styles, served as
they are) and the offline API docs (assets from ``fastapi_offline``, never a CDN)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from fastapi import APIRouter, HTTPException, Response
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse

STATIC = Path(__file__).resolve().parent.parent / "static"
_DOC_ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css",
               "redoc.standalone.js": "text/javascript", "favicon.png": "image/png"}
router = APIRouter(include_in_schema=False)


@cache
def _page(name: str) -> str:
    return (STATIC / name).read_text(encoding="utf-8")


def _html(name: str) -> HTMLResponse:
    return HTMLResponse(_page(name), headers={"Cache-Control": "no-cache"})


@router.get("/", response_class=HTMLResponse)
def page() -> HTMLResponse:
    return _html("index.html")


@router.get("/rate", response_class=HTMLResponse)
def rate_page() -> HTMLResponse:
    return _html("rate.html")


@router.get("/login", response_class=HTMLResponse)
def login_page() -> HTMLResponse:
    return _html("login.html")


@router.get("/docs")
def swagger() -> HTMLResponse:               # Swagger UI from the installed package, never a CDN
    return get_swagger_ui_html(openapi_url="/openapi.json", title="dermsearch API",
                               swagger_js_url="/static/docs/swagger-ui-bundle.js",
                               swagger_css_url="/static/docs/swagger-ui.css",
                               swagger_favicon_url="/static/docs/favicon.png",
                               swagger_ui_parameters={"validatorUrl": None})


@router.get("/redoc")
def redoc() -> HTMLResponse:
    return get_redoc_html(openapi_url="/openapi.json", title="dermsearch API",
                          redoc_js_url="/static/docs/redoc.standalone.js",
                          redoc_favicon_url="/static/docs/favicon.png", with_google_fonts=False)


@router.get("/static/docs/{name}")
def docs_asset(name: str) -> Response:
    if name not in _DOC_ASSETS:
        raise HTTPException(404, "not found")
    return Response((_doc_assets_dir() / name).read_bytes(), media_type=_DOC_ASSETS[name],
                    headers={"Cache-Control": "max-age=86400"})


def _doc_assets_dir() -> Path:
    import fastapi_offline

    return Path(fastapi_offline.__file__).parent / "static"
