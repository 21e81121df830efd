"""Blinded rating sessions, judgements, and their export (admin only). Sessions and posts were
admitted by the gate (rate, queue) like searches; their searches, parsing and writes run in the
bounded pool, never on the event loop."""

from __future__ import annotations

import json
import random
import secrets

import anyio.to_thread
from fastapi import APIRouter, Depends, HTTPException, Request, Response

from ..ratings import RatingConflict, strict_bool
from ..state import Server, current_user, image_response, row_of, server

router = APIRouter()


@router.post("/api/ratings/session", summary="A blinded rating task: a random indexed query and its pooled top-k "
             "(the server draws it: items are opaque tokens, their images served through the session)")
async def rating_session(request: Request, srv: Server = Depends(server)) -> dict:
    user = current_user(request)
    return await anyio.to_thread.run_sync(_new_session, srv, user.name if user else None, limiter=srv.limiter)


def _new_session(srv: Server, owner: str | None) -> dict:
    config = srv.config
    rng = random.SystemRandom()
    with srv.live.current() as st:
        snap, searcher = st.snap, st.searcher
        pool = [str(i) for i in snap.ids if config.rating_query_ids is None or str(i) in config.rating_query_ids]
        if not pool:
            raise HTTPException(409, "no indexed image is in the rating query set")
        qid = rng.choice(pool)
        pos = row_of(st, qid)
        lesion, patient = snap.lesion_id[pos], str(st.meta[pos].get("patient_id") or "")
        same = [str(i) for i, les in zip(snap.ids, snap.lesion_id) if les and les == lesion]
        same += st.patients.get(patient, []) if patient else []     # as evaluate does: other people's images
        result = searcher.search(searcher.query_for_id(qid), k=config.rating_k, exclude_ids=[qid, *same])
        credits = _credits(st, [qid, *(h.id for hits in result.results.values() for h in hits)])
    pooled: dict[str, list[tuple[str, int]]] = {}
    for m, hits in result.results.items():
        for h in hits:
            pooled.setdefault(h.id, []).append((m, h.rank))
    cands = list(pooled)
    rng.shuffle(cands)
    session = secrets.token_hex(16)          # hex: never starts like a spreadsheet formula
    rows, items = [], []
    for cid in cands:
        item = secrets.token_hex(8)
        rows += [(qid, item, cid, m, r) for m, r in pooled[cid]]
        items.append({"item": item, "image": f"/api/ratings/{session}/images/{item}"})
    srv.ratings.add_session(session, rows, owner, keep_open=config.open_rating_sessions)
    return {"session": session, "query_id": qid, "query_image": f"/api/ratings/{session}/images/query",
            "items": items, "credits": credits}


def _credits(st, ids) -> list[dict]:
    """The licences and attributions of a task's images, for the whole page: sorted and without
    repeats, tied to no item, so they credit the images without unblinding any of them."""
    seen = set()
    for image_id in ids:
        m = st.meta[st.searcher.row(image_id)]
        lic, attr = str(m.get("license") or ""), str(m.get("attribution") or "")
        if lic or attr:
            seen.add((lic, attr))
    return [{"license": lic or None, "attribution": attr or None} for lic, attr in sorted(seen)]


@router.get("/api/ratings/{session}/images/{item}", summary="The image of a rating item (or of the query), by "
            "the session's opaque token", responses={200: {"content": {"image/jpeg": {}}}})
async def rating_image(session: str, item: str, request: Request, srv: Server = Depends(server)) -> Response:
    user = current_user(request)
    return await anyio.to_thread.run_sync(_rating_image, srv, session, item, user.name if user else None,
                                          limiter=srv.image_limiter)


def _rating_image(srv: Server, session: str, item: str, user: str | None) -> Response:
    cid = srv.ratings.candidate(session, item, user)
    if cid is None:
        raise HTTPException(404, "no such item in your rating sessions")
    with srv.live.current() as st:
        return image_response(srv, st, cid, "thumb")


@router.post("/api/ratings", summary="Store a person's judgements for a rating session (one per item; "
             "'edit': true changes earlier ones)", responses={409: {"description": "already rated"}})
async def rate(request: Request, srv: Server = Depends(server)) -> dict:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":   # a form or text/plain post from another site cannot be JSON
        raise HTTPException(415, "ratings must be posted as application/json")
    raw = await request.body()        # at most the guard's small-body limit
    user = current_user(request)
    return await anyio.to_thread.run_sync(_store, srv, raw, user.name if user else None, limiter=srv.limiter)


def _store(srv: Server, raw: bytes, user: str | None) -> dict:
    try:
        body = json.loads(raw)
        session, qid = str(body["session"]), str(body["query_id"])
        entries = body["ratings"]
        if not isinstance(entries, list) or len(entries) > srv.config.max_ratings_per_post:
            raise ValueError
        marks = [(qid, str(r["item"]), int(strict_bool(r["similar"]))) for r in entries]
        rater = str(body.get("rater", ""))[:100]
        edit = strict_bool(body.get("edit", False))
    except Exception:  # noqa: BLE001
        raise HTTPException(422, f"expected {{session, query_id, ratings: [{{item, similar}}] (at most "
                                 f"{srv.config.max_ratings_per_post}), rater?, edit?}}") from None
    if user is not None:
        rater = user                       # with authentication the rater is the token's user
    try:
        n = srv.ratings.rate(session, marks, rater, user, edit=edit)
    except KeyError as e:
        raise HTTPException(422, str(e.args[0])) from None
    except PermissionError as e:
        raise HTTPException(403, str(e)) from None
    except RatingConflict as e:
        raise HTTPException(409, str(e)) from None
    return {"stored": n}


@router.get("/api/ratings.csv", summary="All ratings (for dermsearch evaluate --ratings); admins only")
def ratings_csv(srv: Server = Depends(server)) -> Response:
    return Response(srv.ratings.export("ratings"), media_type="text/csv", headers={"Cache-Control": "no-store"})


@router.get("/api/ratings-key.csv", summary="Which measure retrieved each rated item (--rating-key); admins only")
def ratings_key(srv: Server = Depends(server)) -> Response:
    return Response(srv.ratings.export("key"), media_type="text/csv", headers={"Cache-Control": "no-store"})
