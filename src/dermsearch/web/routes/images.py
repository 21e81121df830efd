"""Indexed images and masks, by id only. Any id: the path segment takes every character, and the
query form (``?id=``) serves the ids no browser can put in a path segment (``.`` and ``..``: the
URL parser drops them as dot segments, even percent-encoded); the pages use the query form."""

from __future__ import annotations

import anyio.to_thread
from fastapi import APIRouter, Depends, HTTPException, Query, Response
from starlette.convertors import Convertor, register_url_convertor

from ...search.explain import mask_png
from ..state import Server, cached_image, image_response, row_of, server

MATCH_MASK = (0, 255, 255, 140)     # an indexed image's mask overlay: cyan


class AnyId(Convertor):
    """Every character, newlines included (an id is percent-encoded in the URL)."""
    regex = "[\\s\\S]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("anyid", AnyId())
router = APIRouter()


@router.get("/api/images", summary="An indexed image (thumbnail or full), by id as a query parameter (every id)",
            responses={200: {"content": {"image/jpeg": {}}}})
async def image_by_query(image_id: str = Query(..., alias="id", min_length=1), size: str = "thumb",
                         srv: Server = Depends(server)) -> Response:
    return await served_image(srv, image_id, size)


@router.get("/api/masks", summary="The stored lesion mask of an indexed image, by id as a query parameter",
            responses={200: {"content": {"image/png": {}}}})
def mask_by_query(image_id: str = Query(..., alias="id", min_length=1), srv: Server = Depends(server)) -> Response:
    return mask(image_id, srv)


@router.get("/api/images/{image_id:anyid}", summary="An indexed image (thumbnail or full), by id only",
            responses={200: {"content": {"image/jpeg": {}}}})
async def image(image_id: str, size: str = "thumb", srv: Server = Depends(server)) -> Response:
    return await served_image(srv, image_id, size)


async def served_image(srv: Server, image_id: str, size: str) -> Response:
    """Decoding and encoding in the images' own bounded pool: a flood of full-size requests waits
    there (no CPU) instead of taking every worker thread from the searches. What needs no decoding
    (a cached thumbnail, an unknown id) is answered before, outside that pool, so the thumbnails of a
    results page never wait behind full-size decodes."""
    hit = await anyio.to_thread.run_sync(_cached_image, srv, image_id, size)
    if hit is not None:
        return hit
    return await anyio.to_thread.run_sync(_served_image, srv, image_id, size, limiter=srv.image_limiter)


def _cached_image(srv: Server, image_id: str, size: str) -> Response | None:
    with srv.live.current() as st:
        return cached_image(srv, st, image_id, size)


def _served_image(srv: Server, image_id: str, size: str) -> Response:
    with srv.live.current() as st:          # a removed image is gone at once
        return image_response(srv, st, image_id, size)


@router.get("/api/masks/{image_id:anyid}", summary="The stored lesion mask of an indexed image (PNG overlay)",
            responses={200: {"content": {"image/png": {}}}})
def mask(image_id: str, srv: Server = Depends(server)) -> Response:
    with srv.live.current() as st:
        pos = row_of(st, image_id)
        if st.snap.masks is None:
            raise HTTPException(404, "this index stores no masks")
        png = mask_png(st.snap.masks[pos], st.searcher.index.manifest["mask_size"], MATCH_MASK)
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})
